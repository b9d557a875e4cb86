"""`codes`: the code grids a VQ run wrote with --mode=encode, the training data of a prior over codes.

  data.vq_workdir   the VQ run's workdir; split s is read from <vq_workdir>/codes/<s>_<step>.npz
  data.num_codes    codebook size the prior models; must equal the file's (its vocabulary depends on it)
  data.grid_size    side of the square code grid; must equal the file's (its sequence length depends on it)
  data.image_size, data.channels   of the images the codes decode to; must equal the VQ run's (they label
                    the samples and the metric card)

The step is the newest one with a file of `data.split` (the training split); every other split (e.g. the
evaluation's `test`) must have been encoded by that same checkpoint, so train and test codes share one
codebook. Batches: {'codes': int32 [B, h, w], 'label': int32 [B]} (label 0 when the file has none),
shuffled per epoch by (seed, epoch), index-addressable like pipeline.BatchIterator.

Samples of a code prior are images, so this source's medium is "images", and its `image_set` is the VQ run's
own dataset, read through the data config recorded in the code file (`vq_config`): FID/IS references and the
classifier backbone see the very images the VQ model was trained and encoded on.
"""
import dataclasses
import functools
import glob
import json
import os
import re
from typing import Optional

import numpy as np
from ml_collections import ConfigDict

from aigc_jax.data.pipeline import ShuffledRows
from aigc_jax.data.registry import DataSource, get_source, register_source
from aigc_jax.errors import UserError

KEYS = ("vq_workdir", "num_codes", "grid_size", "image_size", "channels")


@dataclasses.dataclass(frozen=True)
class CodeSet:
  codes: np.ndarray              # int32 [N, h, w]
  labels: Optional[np.ndarray]   # int32 [N] or None
  num_codes: int
  step: int                      # the VQ checkpoint that wrote them
  vq_workdir: str
  vq_config: dict
  path: str

  def __len__(self):
    return len(self.codes)

  @property
  def num_classes(self) -> Optional[int]:
    return int(self.labels.max()) + 1 if self.labels is not None and len(self.labels) else None


def encode_command(vq_workdir: str, split: str) -> str:
  return (f"python -m aigc_jax.main --config=<the VQ run's experiment> --workdir={vq_workdir} --mode=encode "
          f"--config.data.split={split}")


def code_step(data: ConfigDict) -> int:
  """The newest VQ step with codes of the training split `data.split`."""
  if not data.vq_workdir:
    raise UserError("data.vq_workdir is empty; set --config.data.vq_workdir to the VQ run's workdir")
  pattern = os.path.join(data.vq_workdir, "codes", f"{glob.escape(data.split)}_*.npz")
  steps = [int(m.group(1)) for p in glob.glob(pattern)
           if (m := re.fullmatch(rf"{re.escape(data.split)}_(\d+)\.npz", os.path.basename(p)))]
  if not steps:
    raise UserError(f"no codes of split {data.split!r} in {os.path.join(data.vq_workdir, 'codes')} "
                    f"(data.vq_workdir); write them with `{encode_command(data.vq_workdir, data.split)}`")
  return max(steps)


@functools.lru_cache(maxsize=8)
def _read(path: str, mtime: float) -> CodeSet:
  del mtime  # part of the cache key: a re-encoded file is read again
  try:
    with np.load(path) as npz:
      missing = [k for k in ("codes", "step", "num_codes", "vq_workdir", "vq_config") if k not in npz]
      if missing:
        raise UserError(f"{path} lacks {missing}: it was written before --mode=encode recorded its provenance; "
                        "encode again with --mode=encode")
      labels = npz["labels"].astype(np.int32) if "labels" in npz else None
      return CodeSet(npz["codes"].astype(np.int32), labels, int(npz["num_codes"]), int(npz["step"]),
                     str(npz["vq_workdir"]), json.loads(str(npz["vq_config"])), path)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read code file {path}: {e}; encode again with --mode=encode") from None


def load_codes(data: ConfigDict, split: str) -> CodeSet:
  """Split `split` at the training split's step, checked against data.num_codes / grid_size / image size."""
  step = code_step(data)
  path = os.path.join(data.vq_workdir, "codes", f"{split}_{step}.npz")
  if not os.path.isfile(path):
    raise UserError(f"no {path}: split {split!r} was not encoded by the VQ checkpoint of step {step} that wrote "
                    f"the {data.split!r} codes (data.vq_workdir); write it with "
                    f"`{encode_command(data.vq_workdir, split)}`")
  code_set = _read(path, os.path.getmtime(path))
  check_codes(data, code_set)
  return code_set


def check_codes(data: ConfigDict, code_set: CodeSet):
  """One-line errors naming the data.* key that disagrees with the code file."""
  codes, where = code_set.codes, code_set.path
  if codes.ndim != 3 or codes.shape[1] != codes.shape[2]:
    raise UserError(f"{where}: codes must be square grids int32 [N, h, h], got {codes.shape}; encode again")
  if code_set.num_codes != data.num_codes:
    raise UserError(f"data.num_codes={data.num_codes} but {where} holds codes of a {code_set.num_codes}-code "
                    f"codebook (a different VQ model); set --config.data.num_codes={code_set.num_codes}")
  if codes.shape[1] != data.grid_size:
    raise UserError(f"data.grid_size={data.grid_size} but {where} holds {codes.shape[1]}x{codes.shape[2]} grids "
                    f"(a different VQ model); set --config.data.grid_size={codes.shape[1]}")
  if len(codes) and (codes.min() < 0 or codes.max() >= code_set.num_codes):
    raise UserError(f"{where}: codes outside [0, {code_set.num_codes}); the file is damaged; encode again")
  vq_data = code_set.vq_config.get("data", {})
  for key in ("image_size", "channels"):
    if key in vq_data and vq_data[key] != data[key]:
      raise UserError(f"data.{key}={data[key]} but the VQ run in {code_set.vq_workdir} decodes codes to "
                      f"{key} {vq_data[key]}; set --config.data.{key}={vq_data[key]}")


class CodeBatchIterator(ShuffledRows):
  """Host-local {'codes': int32 [L, h, w], 'label': int32 [L]}, in exactly the order pipeline.BatchIterator
  gives images (epoch permutations seeded by (seed, epoch)), so batch_at(i) is pure in i and any host count
  sees the same global batches."""

  def __init__(self, code_set: CodeSet, global_batch_size: int, seed: int, **kwargs):
    super().__init__(len(code_set), global_batch_size, seed, **kwargs)
    self._set = code_set

  def batch_at(self, batch_index: int) -> dict:
    _, idx = self.rows_at(batch_index)
    labels = self._set.labels[idx] if self._set.labels is not None else np.zeros(self._local, np.int32)
    return {"codes": self._set.codes[idx], "label": labels.astype(np.int32)}


def make_iterator(config: ConfigDict, code_set: CodeSet, start_batch: int = 0) -> CodeBatchIterator:
  import jax  # host topology
  return CodeBatchIterator(code_set, config.batch_size, config.seed, process_index=jax.process_index(),
                           process_count=jax.process_count(), start_batch=start_batch)


def example_batch(config: ConfigDict, batch_size: int = 2) -> dict:
  g = config.data.grid_size
  return {"codes": np.zeros((batch_size, g, g), np.int32), "label": np.zeros((batch_size,), np.int32)}


def vq_data_config(data: ConfigDict) -> ConfigDict:
  """The data config the VQ run trained on, as recorded in the training split's code file."""
  return ConfigDict(load_codes(data, data.split).vq_config["data"])


def image_set(data: ConfigDict, split: str):
  """Split `split` of the VQ run's own dataset (uint8 images), for FID/IS references and the classifier."""
  vq_data = vq_data_config(data)
  source = get_source(vq_data.name)
  if source.medium != "images" or source.image_set is not None:
    raise UserError(f"the VQ run in {data.vq_workdir} trained on {vq_data.name!r}, not an image dataset; "
                    "set data.vq_workdir to a VQ run over images")
  return source.load(vq_data, split)


def describe(code_set: CodeSet) -> str:
  _, h, w = code_set.codes.shape
  classes = f", {code_set.num_classes} classes" if code_set.num_classes else ""
  return (f"{len(code_set):,} code grids {h}x{w} of {code_set.num_codes} codes{classes} "
          f"(VQ step {code_set.step}, {code_set.vq_workdir})")


register_source(DataSource(
    name="codes", medium="images", keys=KEYS, load=load_codes, make_iterator=make_iterator,
    example_batch=example_batch, describe=describe, image_set=image_set,
    doc="data.vq_workdir: the code grids a VQ run wrote with --mode=encode (for priors over codes)"))
