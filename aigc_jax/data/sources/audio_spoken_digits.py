"""`spoken_digits`: the words "zero".."nine" synthesised with eSpeak NG, an offline stand-in for SC09.

SYNTHETIC SPEECH, NOT SC09. SC09 (the ten digit words of Speech Commands, Warden 2018; used for WaveNet,
WaveGAN and DiffWave) holds 1-second recordings of thousands of people; this set holds eSpeak NG's formant
synthesiser speaking the same ten words, so a model and a metric can be trained and checked with no network.
Numbers measured on it are not SC09 numbers and must not be reported as such.

Diversity per clip (drawn from a generator seeded by (seed, split, index), so the set is a pure function of
its seed and size):
  * voice: one of 8 English accents (en, en-us, en-us-nyc, en-029, en-gb-scotland, en-gb-x-rp,
    en-gb-x-gbclan, en-gb-x-gbcwmd) + one eSpeak voice variant (formant, pitch and voicing settings). The
    train split uses 43 variants, the test split 10 OTHER variants (TEST_VARIANTS), so the test split
    measures generalisation to unseen voices;
  * speaking rate 120..220 words per minute, base pitch 25..75 and pitch range 20..80 (eSpeak's 0..100
    scales), and eSpeak's own random seed (its breath and jitter noise);
  * gain: peak amplitude 0.2..0.9 (log-uniform);
  * time shift: the word sits centred in the 1-second clip, moved by up to +-0.1 s (kept inside the clip);
  * background noise: Gaussian noise through a one-pole low-pass (white to strongly low-passed) at a
    signal-to-noise ratio of 10..40 dB over the word.
eSpeak speaks at 22,050 Hz; clips are resampled to data.sample_rate (scipy's polyphase filter) and stored as
16-bit PCM, 1 second each like SC09 (the source's loader then fits them to data.clip_seconds, see data/audio.py).

eSpeak NG keeps state between utterances in static variables (its pitch flutter and wave phase), which neither
espeak_ng_SetRandSeed nor re-initialising resets: the same call gives different samples depending on what the
process spoke before. So generation runs in a FRESH Python process (this module's `__main__`) that speaks
the clips in a fixed order: the output is then bit-identical from run to run for a seed and size.

Generated once per (split, size, sample rate, seed, eSpeak build) into <data.data_dir or
$XDG_CACHE_HOME/aigc_jax>/spoken_digits/ and written atomically (a temporary file renamed into place), so a
killed generation leaves nothing half-written. Measured on the 2-core development VM: the 3,000 train + 600
test clips at 16 kHz take about 14 s of CPU in all (eSpeak ~1.5 ms per word, resampling and noise ~1 ms per
clip, plus two Python starts), 115 MB on disk; two generations gave byte-identical files. As a check that
the words are recognisable in voices never trained on, a logistic regression on 32-band x 15-frame log
spectrograms fitted on the train split scores 81% on the test split (98% on train; chance 10%).
"""
import ctypes
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tempfile
import threading

import numpy as np
from absl import logging

from aigc_jax.data import audio
from aigc_jax.data.registry import register_source
from aigc_jax.errors import UserError

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLIT_SIZES = {"train": 3000, "test": 600}
SPLIT_INDEX = {"train": 0, "test": 1}  # seeds each split's generators apart
# Fixed and arbitrary: the set is part of the benchmark, not of a run (config.seed does not change it).
SEED = 20160912
VERSION = 1  # bump when the recipe below changes, so old caches are not read as the new set
CLIP_SECONDS = 1.0
ACCENTS = ("en", "en-us", "en-us-nyc", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd")
# eSpeak voice variants (espeak-ng-data/voices/!v); effect voices (whisper, croak, robots, ...) are left out.
TRAIN_VARIANTS = ("m1", "m2", "m4", "m5", "m6", "m8", "f1", "f2", "f4", "f5", "klatt", "klatt3", "klatt4",
                  "Alex", "Andy", "Annie", "adam", "antonio", "aunty", "belinda", "benjamin", "boris", "caleb",
                  "david", "ed", "edward", "iven", "john", "linda", "max", "michel", "norbert", "paul",
                  "pedro", "quincy", "rob", "robert", "steph", "travis", "victor", "zac")
TEST_VARIANTS = ("m3", "m7", "f3", "klatt2", "Alicia", "Andrea", "anika", "grandma", "grandpa", "ian")
VARIANTS = {"train": TRAIN_VARIANTS, "test": TEST_VARIANTS}

# speak_lib.h (espeak-ng 1.52, API revision 12).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4


def cache_dir(data_dir: str) -> str:
  base = data_dir or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                                  "aigc_jax")
  return os.path.join(base, "spoken_digits")


def _espeak_build() -> str:
  try:
    return importlib.metadata.version("espeakng-loader")
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def cache_path(data_dir: str, split: str, num_examples: int, sample_rate: int, seed: int) -> str:
  return os.path.join(cache_dir(data_dir), f"{split}_{num_examples}x{sample_rate}hz_seed{seed}_v{VERSION}_"
                                           f"espeakng-loader{_espeak_build()}.npz")


class _ESpeak:
  """libespeak-ng (shipped by the espeakng-loader package) through ctypes, in synchronous mode: `speak`
  returns the int16 samples of one utterance at `sample_rate` (22,050 Hz)."""

  _lock = threading.Lock()  # the library is one global state

  def __init__(self):
    import espeakng_loader
    self._lib = lib = ctypes.CDLL(espeakng_loader.get_library_path())
    self._variant_dir = os.path.join(espeakng_loader.get_data_path(), "voices", "!v")
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    # The path is the directory that holds espeak-ng-data.
    data_parent = os.path.dirname(espeakng_loader.get_data_path()).encode()
    self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent, _INITIALIZE_DONT_EXIT)
    if self.sample_rate <= 0:
      raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate}) with data in {data_parent!r}")
    self._chunks = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    self._callback = callback_type(self._collect)  # kept referenced: the library calls it
    lib.espeak_SetSynthCallback(self._callback)

  def _collect(self, wav, num_samples, events):
    if wav and num_samples > 0:
      self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
    return 0  # continue

  def speak(self, text: str, voice: str, *, rate: int, pitch: int, pitch_range: int, seed: int) -> np.ndarray:
    variant = voice.split("+", 1)[1] if "+" in voice else ""
    # An unknown variant is silently replaced by the default voice; an unknown language is EE_NOT_FOUND.
    if variant and not os.path.isfile(os.path.join(self._variant_dir, variant)):
      raise RuntimeError(f"eSpeak has no voice variant {variant!r} in {self._variant_dir}")
    with self._lock:
      if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise RuntimeError(f"eSpeak has no voice {voice!r}")
      for parameter, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range), (_VOLUME, 100)):
        self._lib.espeak_SetParameter(parameter, int(value), 0)
      self._lib.espeak_ng_SetRandSeed(int(seed))
      self._chunks = []
      encoded = text.encode("utf-8") + b"\0"
      status = self._lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
      if status != 0:
        raise RuntimeError(f"espeak_Synth failed with status {status}")
      return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def _clip(espeak: _ESpeak, rng: np.random.Generator, word: str, variants, sample_rate: int) -> tuple:
  """One 1-second float clip at `sample_rate` with the diversity of the module docstring, and its voice."""
  from scipy import signal  # lazy: only generation needs it
  voice = f"{rng.choice(ACCENTS)}+{rng.choice(variants)}"
  rate, pitch, pitch_range = int(rng.integers(120, 221)), int(rng.integers(25, 76)), int(rng.integers(20, 81))
  peak = float(np.exp(rng.uniform(np.log(0.2), np.log(0.9))))
  shift_seconds = rng.uniform(-0.1, 0.1)
  snr_db, lowpass = rng.uniform(10.0, 40.0), rng.uniform(0.0, 0.95)
  samples = espeak.speak(word, voice, rate=rate, pitch=pitch, pitch_range=pitch_range,
                         seed=int(rng.integers(1, 2**31 - 1)))
  word_W = samples.astype(np.float64) / 32768.0
  loud = np.flatnonzero(np.abs(word_W) > 0.01 * np.abs(word_W).max())
  if not len(loud):
    raise RuntimeError(f"eSpeak produced silence for {word!r} in voice {voice}")
  word_W = audio.resample(word_W[loud[0]:loud[-1] + 1], espeak.sample_rate, sample_rate).astype(np.float64)
  word_W *= peak / np.abs(word_W).max()
  length = int(round(sample_rate * CLIP_SECONDS))
  word_W = word_W[:length]
  start = int(round((length - len(word_W)) / 2 + shift_seconds * sample_rate))
  start = min(max(start, 0), length - len(word_W))
  clip_T = np.zeros(length)
  clip_T[start:start + len(word_W)] = word_W
  noise_T = signal.lfilter([1.0 - lowpass], [1.0, -lowpass], rng.standard_normal(length))
  speech_rms = np.sqrt(np.mean(word_W ** 2))
  noise_T *= speech_rms * 10.0 ** (-snr_db / 20.0) / np.sqrt(np.mean(noise_T ** 2))
  return np.clip(clip_T + noise_T, -1.0, 1.0), voice


def generate(split: str, num_examples: int, sample_rate: int, seed: int = SEED) -> dict:
  """Speaks `num_examples` clips of `split` (labels i % 10) in THIS process: deterministic only in a fresh
  process (see the module docstring); `load` runs it in one. {"audio": int16 [N, T], "labels": int32 [N],
  "voices": str [N]}."""
  espeak = _ESpeak()
  split_index = SPLIT_INDEX[split]
  clips, voices = [], []
  for i in range(num_examples):
    rng = np.random.default_rng([seed, split_index, i])
    clip_T, voice = _clip(espeak, rng, WORDS[i % 10], VARIANTS[split], sample_rate)
    clips.append(np.round(clip_T * 32767.0).astype(np.int16))
    voices.append(voice)
  return {"audio": np.stack(clips), "labels": np.arange(num_examples, dtype=np.int32) % 10,
          "voices": np.array(voices)}


def _write_atomically(path: str, arrays: dict):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_", suffix=".npz")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a cache is as readable as any other file
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def load_arrays(data_dir: str, split: str, sample_rate: int, num_examples: int = None, seed: int = SEED) -> dict:
  """The cached arrays of a split ({"audio": int16 [N, T], "labels", "voices"}), generated first (in a fresh
  process) if absent. `num_examples` defaults to SPLIT_SIZES[split]; tests pass a small one."""
  if split not in SPLIT_SIZES:
    raise UserError(f"spoken_digits has splits 'train' and 'test', not {split!r}; set --config.data.split")
  num_examples = SPLIT_SIZES[split] if num_examples is None else num_examples
  path = cache_path(data_dir, split, num_examples, sample_rate, seed)
  if not os.path.isfile(path):
    if importlib.util.find_spec("espeakng_loader") is None:
      raise UserError("data.name=spoken_digits synthesises speech with eSpeak NG from the espeakng-loader "
                      "package, which is not installed; run `pip install espeakng-loader`")
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:
      raise UserError(f"cannot create the spoken_digits cache {os.path.dirname(path)} ({e.strerror}); set "
                      "--config.data.data_dir to a writable directory") from None
    logging.info("spoken_digits: synthesising %d %s clips at %d Hz into %s (once)", num_examples, split,
                 sample_rate, path)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, "-m", __name__, path, split, str(num_examples), str(sample_rate),
                           str(seed)], env=env, capture_output=True, text=True)
    if done.returncode != 0 or not os.path.isfile(path):
      last = (done.stderr.strip().splitlines() or ["no output"])[-1]
      raise UserError(f"spoken_digits generation failed ({last}); set --config.data.data_dir to a writable "
                      "directory, or reinstall espeakng-loader")
  with np.load(path) as npz:
    return {k: npz[k] for k in npz.files}


def load(data, split: str, num_examples: int = None) -> audio.AudioSet:
  arrays = load_arrays(data.data_dir, split, data.sample_rate, num_examples)
  return audio.AudioSet(arrays["audio"].astype(np.float32) / 32767.0, arrays["labels"], data.sample_rate, WORDS)


register_source(audio.audio_source(
    "spoken_digits", load, keys=("data_dir",), splits=tuple(SPLIT_SIZES),
    doc="'zero'..'nine' synthesised offline with eSpeak NG (3,000 train / 600 test clips; test voices unseen); "
        "synthetic speech, not SC09"))


if __name__ == "__main__":  # the fresh generation process of load_arrays: path split num_examples rate seed
  _path, _split, _num, _rate, _seed = sys.argv[1:6]
  _write_atomically(_path, generate(_split, int(_num), int(_rate), int(_seed)))
