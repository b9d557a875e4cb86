"""Audio: sources -> one in-memory `AudioSet` per split (fixed-length float clips) -> resumable batches.

Every audio source (a module `data/sources/audio_*.py` that registers `audio_source(name, load)`) returns an
`AudioSet` of mono clips. `audio_source` brings whatever the loader returns to the configured form in one
place, so the loaders stay simple and every source agrees:

  * sample rate: resampled to `data.sample_rate` with a polyphase filter (scipy.signal.resample_poly, a
    Kaiser-windowed FIR low-pass, so downsampling does not alias);
  * length: T = round(data.sample_rate * data.clip_seconds) samples. A shorter clip is zero-padded AT THE END
    (as SC09 loaders pad the few Speech Commands clips shorter than 1 s: the word keeps its onset); a longer
    clip keeps its most energetic window of T samples (so a 0.5 s crop of a 1 s spoken digit keeps the word,
    not the silence before it; ties go to the earliest window);
  * range: float32 in [-1, 1] (clipped).

Training batches are {"audio": float32 [B, T] in [-1, 1], "label": int32 [B]} from `AudioBatchIterator`,
whose order is `pipeline.ShuffledRows` (a pure function of the batch index: exact resume on any host count).
"""
import dataclasses
import functools
import math
import wave
from typing import Sequence

import numpy as np
from ml_collections import ConfigDict

from aigc_jax.data.pipeline import ShuffledRows
from aigc_jax.data.registry import COMMON_KEYS, DataSource, get_source
from aigc_jax.errors import UserError

# data.* keys every audio source reads (besides name and split); a source adds its own (path, data_dir).
AUDIO_KEYS = ("sample_rate", "clip_seconds")
# Clip lengths beyond this (in samples) are almost certainly a typo (e.g. clip_seconds=1000).
MAX_CLIP_SAMPLES = 10_000_000


@dataclasses.dataclass(frozen=True)
class AudioSet:
  """A whole split of mono clips, all the same length."""
  audio_NxT: np.ndarray         # float32 [N, T] in [-1, 1]
  labels_N: np.ndarray          # int32 [N]: an index into class_names, or -1 (an unlabelled clip)
  sample_rate: int              # Hz
  class_names: tuple = ()       # label i is class_names[i]; () = unlabelled

  def __len__(self):
    return len(self.audio_NxT)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def clip_seconds(self) -> float:
    return self.audio_NxT.shape[1] / self.sample_rate


def clip_samples(data: ConfigDict) -> int:
  """T = round(data.sample_rate * data.clip_seconds), after one-line checks of both keys."""
  rate, seconds = data.sample_rate, data.clip_seconds
  if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
    raise UserError(f"data.sample_rate must be a positive integer (Hz), got {rate!r}; set "
                    "--config.data.sample_rate=16000 (SC09) or 8000")
  if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
    raise UserError(f"data.clip_seconds must be a positive number of seconds, got {seconds!r}; set "
                    "--config.data.clip_seconds=1.0 (SC09)")
  t = int(round(rate * seconds))
  if t < 1 or t > MAX_CLIP_SAMPLES:
    raise UserError(f"data.sample_rate * data.clip_seconds = {rate} * {seconds} gives {t:,} samples per clip; "
                    f"it must be 1..{MAX_CLIP_SAMPLES:,}: set --config.data.clip_seconds (1.0 = SC09)")
  return t


@functools.lru_cache(maxsize=16)
def _lowpass(up: int, down: int) -> np.ndarray:
  """The FIR filter resample_poly designs by default (Kaiser window, beta 5, 20 * max(up, down) + 1 taps),
  designed once per rate pair instead of once per clip (its design cost as much as the filtering)."""
  from scipy import signal
  max_rate = max(up, down)
  return signal.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def resample(audio_NxT: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
  """Resamples along the last axis by to_rate/from_rate (reduced by their gcd) with scipy's polyphase filter;
  the output has ceil(T * to_rate / from_rate) samples. float32 out."""
  from scipy import signal  # lazy: scipy.signal costs ~0.3 s to import and image runs never need it
  if from_rate == to_rate:
    return np.asarray(audio_NxT, np.float32)
  g = math.gcd(int(from_rate), int(to_rate))
  up, down = int(to_rate) // g, int(from_rate) // g
  out = signal.resample_poly(np.asarray(audio_NxT, np.float64), up, down, axis=-1, window=_lowpass(up, down))
  return out.astype(np.float32)


def fit_length(audio_NxT: np.ndarray, length: int) -> np.ndarray:
  """[N, T] -> [N, length]: zero-padded at the end, or the most energetic `length`-sample window of each clip
  (earliest on ties), as the module docstring says."""
  n, t = audio_NxT.shape
  if t == length:
    return audio_NxT
  if t < length:
    return np.pad(audio_NxT, ((0, 0), (0, length - t)))
  energy_Nx1T = np.concatenate(
      [np.zeros((n, 1)), np.cumsum(np.square(audio_NxT, dtype=np.float64), axis=1)], axis=1)
  window_NxW = energy_Nx1T[:, length:] - energy_Nx1T[:, :-length]  # energy of windows starting at 0..t-length
  starts_N = np.argmax(window_NxW, axis=1)
  windows_NxWxL = np.lib.stride_tricks.sliding_window_view(audio_NxT, length, axis=1)  # a view, no copy
  return windows_NxWxL[np.arange(n), starts_N]


def to_clips(waves: Sequence[np.ndarray], rates: Sequence[int], sample_rate: int, length: int) -> np.ndarray:
  """float32 [N, length] of variable-length, variable-rate mono waves (each float in [-1, 1]): every wave
  resampled to `sample_rate`, then fitted to `length` (fit_length)."""
  out_NxT = np.zeros((len(waves), length), np.float32)
  for i, (samples_T, rate) in enumerate(zip(waves, rates)):
    if len(samples_T):
      out_NxT[i] = fit_length(resample(np.asarray(samples_T, np.float32)[None], rate, sample_rate), length)[0]
  return out_NxT


# Rows per chunk when conforming a whole split: bounds the float64 temporaries of resampling and cropping
# (SC09's 18,620 train clips at once would need ~2.4 GB each).
CONFORM_CHUNK = 1024


def conform(audio_set: AudioSet, data: ConfigDict) -> AudioSet:
  """The set at data.sample_rate and T = clip_samples(data), float32 in [-1, 1], int32 labels."""
  length = clip_samples(data)
  audio_NxT = audio_set.audio_NxT
  if audio_NxT.ndim != 2:
    raise ValueError(f"an AudioSet holds mono clips [N, T], got shape {audio_NxT.shape}")
  if audio_set.sample_rate != data.sample_rate or audio_NxT.shape[1] != length:
    out_NxT = np.empty((len(audio_NxT), length), np.float32)
    for i in range(0, len(audio_NxT), CONFORM_CHUNK):
      chunk = resample(audio_NxT[i:i + CONFORM_CHUNK], audio_set.sample_rate, data.sample_rate)
      out_NxT[i:i + CONFORM_CHUNK] = fit_length(chunk, length)
    audio_NxT = out_NxT
  else:
    audio_NxT = np.asarray(audio_NxT, np.float32)
  if len(audio_NxT) and (audio_NxT.min() < -1.0 or audio_NxT.max() > 1.0):  # resampling can overshoot
    audio_NxT = np.clip(audio_NxT, -1.0, 1.0)
  labels_N = np.asarray(audio_set.labels_N, np.int32)
  if labels_N.shape != (len(audio_NxT),):
    raise ValueError(f"labels_N has shape {labels_N.shape}, not ({len(audio_NxT)},)")
  if not np.all((labels_N == -1) | ((labels_N >= 0) & (labels_N < len(audio_set.class_names)))):
    raise ValueError(f"labels must be -1 or index class_names ({len(audio_set.class_names)} classes), got "
                     f"{labels_N.min()}..{labels_N.max()}")
  return AudioSet(audio_NxT, labels_N, int(data.sample_rate), tuple(audio_set.class_names))


def read_wav(file) -> tuple:
  """(float32 mono samples in [-1, 1), sample rate, channel count) of a PCM WAV file (a path or a binary file
  object) through the stdlib `wave` module: 8-bit (unsigned), 16-, 24- and 32-bit (signed) integer PCM.
  Several channels are averaged to mono. Float or compressed WAVs raise wave.Error (the caller names the
  file and the fix)."""
  with wave.open(file, "rb") as w:
    width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
    raw = w.readframes(w.getnframes())
  if width not in (1, 2, 3, 4) or channels < 1 or rate < 1:
    raise wave.Error(f"{8 * width}-bit samples, {channels} channels at {rate} Hz")
  frame = width * channels
  raw = raw[:len(raw) // frame * frame]  # a truncated last frame
  if width == 1:
    x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
  elif width == 3:  # little-endian 24-bit: put each sample in the top bytes of an int32 (keeps the sign)
    b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
    x = (np.pad(b, ((0, 0), (1, 0))).view("<i4")[:, 0] >> 8).astype(np.float32) / 2.0 ** 23
  else:
    x = np.frombuffer(raw, {2: "<i2", 4: "<i4"}[width]).astype(np.float32) / 2.0 ** (8 * width - 1)
  return x.reshape(-1, channels).mean(axis=1, dtype=np.float32), rate, channels


class AudioBatchIterator(ShuffledRows):
  """Yields host-local {'audio': f32 [L, T] in [-1, 1], 'label': i32 [L]} (L = this host's share of the
  global batch) in pipeline.ShuffledRows order: `batch_at(i)` is a pure function of i."""

  def __init__(self, audio_set: AudioSet, global_batch_size: int, seed: int, **kwargs):
    super().__init__(len(audio_set), global_batch_size, seed, **kwargs)
    self._set = audio_set

  def batch_at(self, batch_index: int) -> dict:
    _, idx = self.rows_at(batch_index)
    return {"audio": self._set.audio_NxT[idx], "label": self._set.labels_N[idx]}


def audio_iterator(config: ConfigDict, audio_set: AudioSet, start_batch: int = 0) -> AudioBatchIterator:
  import jax  # host topology; the loaders above stay importable without jax
  return AudioBatchIterator(audio_set, config.batch_size, config.seed, process_index=jax.process_index(),
                            process_count=jax.process_count(), start_batch=start_batch)


def audio_example_batch(config: ConfigDict, batch_size: int = 2) -> dict:
  return {"audio": np.zeros((batch_size, clip_samples(config.data)), np.float32),
          "label": np.zeros((batch_size,), np.int32)}


def describe(audio_set: AudioSet) -> str:
  """"3,000 clips of 1.00 s at 16,000 Hz, 10 classes"."""
  classes = f", {audio_set.num_classes} classes" if audio_set.num_classes else ", unlabelled"
  return (f"{len(audio_set):,} clips of {audio_set.clip_seconds:.2f} s at {audio_set.sample_rate:,} Hz"
          f"{classes}")


def declared_view(data: ConfigDict, keys: Sequence[str]) -> ConfigDict:
  """A copy of `data` holding only the keys a source declares (plus name and split), so a loader that reads an
  undeclared data.* key fails at once (AttributeError) instead of reading a key that `check_set_keys` would
  let the user set without effect."""
  return ConfigDict({k: data[k] for k in tuple(COMMON_KEYS) + tuple(keys) if k in data})


def audio_source(name: str, load, *, keys=(), splits=(), doc: str = ""):
  """A DataSource of medium "audio" for a loader `load(data_config, split) -> AudioSet` (any sample rate and
  clip length: `conform` brings it to data.sample_rate and data.clip_seconds). The loader sees only the
  data.* keys the source declares (AUDIO_KEYS + keys, and name/split)."""
  all_keys = tuple(AUDIO_KEYS) + tuple(k for k in keys if k not in AUDIO_KEYS)

  def checked_load(data: ConfigDict, split: str) -> AudioSet:
    clip_samples(data)  # bad sample_rate / clip_seconds fail before any loading
    if splits and split not in splits:
      raise UserError(f"{name} has splits {', '.join(repr(s) for s in splits)}, not {split!r}; set "
                      "--config.data.split")
    audio_set = load(declared_view(data, all_keys), split)
    if len(audio_set) < 1:
      raise UserError(f"data source {name} split {split!r} holds no clips; check --config.data.name and "
                      "--config.data.split")
    return conform(audio_set, data)

  return DataSource(name=name, medium="audio", keys=all_keys, load=checked_load, make_iterator=audio_iterator,
                    example_batch=audio_example_batch, splits=tuple(splits), describe=describe, doc=doc)


def load_audio_set(data: ConfigDict, split: str = None) -> AudioSet:
  """The whole split (default data.split) of an audio source, at data.sample_rate and data.clip_seconds (a
  one-line error for a source of another medium)."""
  source = get_source(data.name)
  if source.medium != "audio":
    raise UserError(f"data source {data.name!r} holds {source.medium}, not audio; this needs an audio dataset "
                    "(set --config.data.name=spoken_digits, speech_commands or audio_folder)")
  return source.load(data, split or data.split)
