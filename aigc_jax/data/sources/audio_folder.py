"""`audio_folder`: a directory of WAV files (data.path), read with the stdlib `wave` module.

Layout: either every WAV directly in data.path (unlabelled: labels -1, no class names), or one level of
sub-folders, each a class (labels 0.. in sorted folder-name order), e.g. data.path/zero/*.wav .. nine/*.wav.
Files may have any sample rate (each is resampled to data.sample_rate) and any length (zero-padded at the end
or cut to its loudest window of data.clip_seconds, see data/audio.py). 8-bit, 16-bit, 24-bit and 32-bit
integer PCM are read; STEREO (or more channels) IS AVERAGED TO MONO. Float and compressed WAVs, and audio in
other formats (.mp3, .flac, ...), are one-line errors that name the file; other files (notes, hidden files)
are skipped. The folder has no splits of its own: every data.split reads the whole folder, as image_folder
does.
"""
import os
import wave

import numpy as np

from aigc_jax.data import audio
from aigc_jax.data.registry import register_source
from aigc_jax.errors import UserError

WAV_EXTENSIONS = (".wav", ".wave")
# Audio that `wave` cannot read: an error naming the file, not a silently smaller dataset.
OTHER_AUDIO_EXTENSIONS = (".mp3", ".flac", ".ogg", ".opus", ".m4a", ".aac", ".aif", ".aiff", ".wma", ".webm")
_CONVERT = "convert it to PCM WAV (e.g. `ffmpeg -i in -c:a pcm_s16le out.wav`) or move it out of data.path"


def _wav_files(path: str) -> list:
  """(relative class folder or "", file path) of every WAV under `path`, sorted, with the layout checks."""
  if not path:
    raise UserError("data.name=audio_folder needs --config.data.path=<a directory of WAV files, one sub-folder "
                    "per class>")
  if not os.path.isdir(path):
    raise UserError(f"audio folder {path!r} does not exist; set --config.data.path to a directory of WAV files "
                    "(one sub-folder per class)")
  found = []
  for root, dirs, names in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    relative = os.path.relpath(root, path)
    for name in sorted(names):
      lower = name.lower()
      if name.startswith(".") or not lower.endswith(WAV_EXTENSIONS + OTHER_AUDIO_EXTENSIONS):
        continue
      file = os.path.join(root, name)
      if lower.endswith(OTHER_AUDIO_EXTENSIONS):
        raise UserError(f"{file} is not a WAV file; audio_folder reads only WAV: {_CONVERT}")
      if relative.count(os.sep) > 0:
        raise UserError(f"{file} sits {relative.count(os.sep) + 1} folders deep; audio_folder reads WAVs in "
                        f"data.path or one level of class sub-folders: move it up, or set --config.data.path")
      found.append(("" if relative == "." else relative, file))
  if not found:
    raise UserError(f"no WAV files found in {path} or its sub-folders; set --config.data.path to a directory of "
                    "WAV files (one sub-folder per class)")
  classes = sorted({c for c, _ in found})
  if "" in classes and len(classes) > 1:
    loose = next(f for c, f in found if c == "")
    raise UserError(f"{loose} lies directly in data.path next to class sub-folders ({', '.join(classes[1:4])}, "
                    "...); put every WAV in a class sub-folder, or all of them directly in data.path")
  return found


def load_audio_folder(path: str, sample_rate: int) -> audio.AudioSet:
  """Every WAV of the folder resampled (once) from its own rate to `sample_rate`, zero-padded at the end to
  the longest clip; `audio_source` then fits it to data.clip_seconds."""
  found = _wav_files(path)
  classes = sorted({c for c, _ in found})
  waves, rates = [], []
  for _, file in found:
    try:
      samples, rate, _ = audio.read_wav(file)
    except (wave.Error, EOFError, ValueError, OSError) as e:
      raise UserError(f"cannot read WAV file {file} ({str(e) or type(e).__name__}); audio_folder reads 8/16/24/32-bit "
                      f"integer PCM WAV: {_CONVERT}") from None
    if not len(samples):
      raise UserError(f"WAV file {file} holds no samples; remove it from data.path")
    waves.append(samples)
    rates.append(rate)
  labels_N = (np.array([classes.index(c) for c, _ in found], np.int32) if classes != [""]
              else np.full(len(found), -1, np.int32))
  class_names = tuple(classes) if classes != [""] else ()
  length = max(int(np.ceil(len(w) * sample_rate / r)) for w, r in zip(waves, rates))
  return audio.AudioSet(audio.to_clips(waves, rates, sample_rate, length), labels_N, sample_rate, class_names)


register_source(audio.audio_source(
    "audio_folder", lambda d, split: load_audio_folder(d.path, d.sample_rate), keys=("path",),
    doc="data.path: a directory of WAV files; one level of sub-folders becomes class labels"))
