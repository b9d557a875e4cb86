"""Writing what a family's `sample` returns, one registered `Medium` per outputs key.

  write_samples(outputs, directory, step, echo=False) -> [paths]   each medium's files + one `<step>.npz`
  write_summaries(writer, step, outputs)                           TensorBoard through a clu MetricWriter

Built in: "images" (images.py), "text" (text.py), "audio" (audio.py), "video" (video.py), "points" (points.py).
A new medium is a `Medium` passed to `register_medium`. Outputs keys are checked first: a key that is no
registered medium, no aux key of a medium present, and not "labels" is a UserError, so nothing is silently
dropped.
TensorBoard writers (TF or not): aigc_jax.media.tensorboard.create_writer. Nothing here imports TensorFlow.
"""
import os

import numpy as np

from aigc_jax.errors import UserError
from aigc_jax.media import audio, images, points, text, video
from aigc_jax.media.base import (GENERIC_KEYS, Medium, get_medium, known_media, register_medium,
                                 tmp_path, unregister_medium)

__all__ = ["Medium", "register_medium", "unregister_medium", "get_medium", "known_media", "media_in",
           "write_samples", "write_summaries"]

for _module in (images, text, audio, video, points):
  register_medium(_module.MEDIUM)


def media_in(outputs: dict) -> list:
  """The registered media present in `outputs`, in registration order; a UserError (one line) if a key
  belongs to none of them."""
  present = [get_medium(name) for name in known_media() if name in outputs]
  allowed = {m.name for m in present} | {k for m in present for k in m.aux_keys} | set(GENERIC_KEYS)
  unknown = sorted(str(k) for k in outputs if k not in allowed)
  if unknown:
    aux = {name: list(get_medium(name).aux_keys) for name in known_media() if get_medium(name).aux_keys}
    raise UserError(f"sample outputs have unknown key(s) {unknown}: known media are {known_media()} (with aux "
                    f"keys {aux}, allowed only alongside their medium) plus {list(GENERIC_KEYS)}; a new medium "
                    f"needs aigc_jax.media.register_medium")
  return present


def write_samples(outputs: dict, directory: str, step: int, echo: bool = False) -> list:
  """Writes each medium's files and one `<step>.npz` with every medium's arrays (and GENERIC_KEYS when present);
  prints text samples when `echo`. Every file is written to a temporary name and renamed. Returns the paths."""
  present = media_in(outputs)
  os.makedirs(directory, exist_ok=True)
  paths, arrays = [], {}
  for medium in present:
    paths += medium.write_files(outputs, directory, step)
    arrays.update(medium.npz_arrays(outputs))
    if echo and medium.echo_text is not None:
      print(medium.echo_text(outputs), flush=True)
  for key in GENERIC_KEYS:
    if key in outputs:
      arrays[key] = np.asarray(outputs[key])
  if arrays:
    path = os.path.join(directory, f"{step}.npz")
    np.savez_compressed(tmp_path(path), **arrays)
    os.replace(tmp_path(path), path)
    paths.append(path)
  return paths


def write_summaries(writer, step: int, outputs: dict):
  """Each medium's TensorBoard summaries (images: a grid, text: the first sample, audio/video: a few)."""
  for medium in media_in(outputs):
    medium.write_summaries(writer, step, outputs)
