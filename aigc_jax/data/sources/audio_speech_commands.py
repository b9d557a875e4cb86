"""`speech_commands`: SC09, the ten digit words "zero".."nine" of Speech Commands v0.02 (Warden 2018,
arXiv:1804.03209), 16 kHz, 1-second clips, labels 0-9 in the order zero..nine: the benchmark of WaveGAN
(Donahue et al. 2019), WaveNet re-evaluations and DiffWave (Kong et al. 2021). Online: downloaded through TFDS
into data.data_dir (or ~/tensorflow_datasets) on first use; offline, use data.name=spoken_digits.

TFDS's own `speech_commands` builder cannot give SC09: it keeps ten command words (yes, no, up, ...) and
folds every other word, the digits included, into one `_unknown_` label. So this module defines a TFDS
builder of its own, `speech_commands_digits`, over the same archive (the same URL, so TFDS's download cache
is shared with `speech_commands`): every WAV under zero/ .. nine/, split by the archive's own
validation_list.txt and testing_list.txt (train = the rest), as SC09 is. Clips shorter than 1 s are
zero-padded at the end (data/audio.py); none is longer.
"""
import io
import os

import numpy as np

from aigc_jax.data import audio
from aigc_jax.data.registry import register_source
from aigc_jax.errors import UserError

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SAMPLE_RATE = 16000
BUILDER_NAME = "speech_commands_digits"
ARCHIVE_URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
# Split names of the builder (TFDS style) and the split each list file of the archive names.
SPLIT_LISTS = {"validation": "validation_list.txt", "test": "testing_list.txt"}
_BUILDER_CLASS = None


def read_wav_int16(data: bytes) -> tuple:
  """(int16 mono samples, sample rate) of a 16-bit PCM WAV held in memory (Speech Commands' format)."""
  import wave
  with wave.open(io.BytesIO(data)) as w:
    if w.getsampwidth() != 2 or w.getnchannels() != 1:
      raise ValueError(f"expected 16-bit mono PCM, got {8 * w.getsampwidth()}-bit, {w.getnchannels()} channels")
    return np.frombuffer(w.readframes(w.getnframes()), "<i2").copy(), w.getframerate()


def builder_class():
  """The TFDS builder, defined on first use (defining it registers it with TFDS, which imports TensorFlow)."""
  global _BUILDER_CLASS
  if _BUILDER_CLASS is not None:
    return _BUILDER_CLASS
  import tensorflow_datasets as tfds

  class SpeechCommandsDigits(tfds.core.GeneratorBasedBuilder):
    """SC09: the digit words of Speech Commands v0.02, labels zero..nine."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "SC09 from speech_commands_v0.02.tar.gz and its own validation/testing lists."}

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=__doc__,
          features=tfds.features.FeaturesDict({
              "audio": tfds.features.Audio(file_format="wav", sample_rate=SAMPLE_RATE, dtype=np.int16),
              "label": tfds.features.ClassLabel(names=WORDS)}),
          supervised_keys=("audio", "label"),
          homepage="https://arxiv.org/abs/1804.03209")

    def _split_generators(self, dl_manager):
      path = dl_manager.download(ARCHIVE_URL)
      listed = {}
      for member, f in dl_manager.iter_archive(path):
        for split, list_name in SPLIT_LISTS.items():
          if member.endswith(list_name):
            listed[split] = set(f.read().decode("ascii").split())
      if set(listed) != set(SPLIT_LISTS):
        raise RuntimeError(f"{ARCHIVE_URL} lacks {sorted(set(SPLIT_LISTS.values()) - set(listed.values()))}")
      return {split: self._generate_examples(dl_manager.iter_archive(path), split, listed)
              for split in ("train", "validation", "test")}

    def _generate_examples(self, archive, split, listed):
      for member, f in archive:
        word, name = os.path.split(member)[0].rsplit("/", 1)[-1], os.path.basename(member)
        if word not in WORDS or not name.endswith(".wav"):
          continue
        relative = f"{word}/{name}"
        in_split = next((s for s, names in listed.items() if relative in names), "train")
        if in_split != split:
          continue
        samples, rate = read_wav_int16(f.read())
        if rate != SAMPLE_RATE:
          raise RuntimeError(f"{relative} is sampled at {rate} Hz, not {SAMPLE_RATE}")
        yield relative, {"audio": samples, "label": word}

  _BUILDER_CLASS = SpeechCommandsDigits
  return _BUILDER_CLASS


def load_sc09(data_dir: str, split: str) -> audio.AudioSet:
  """The whole split at 16 kHz, each clip zero-padded at the end to the longest (1 s)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from aigc_jax.data import tfds_source
  tfds_source._hide_gpus_from_tensorflow(tf)  # TF would otherwise reserve GPU memory JAX needs
  builder = builder_class()(data_dir=data_dir or None)
  if not builder.is_prepared():
    fix = ("use --config.data.name=spoken_digits (offline, synthetic), or prepare it elsewhere and point "
           "--config.data.data_dir at it")
    where = data_dir or "~/tensorflow_datasets"
    if tfds_source.network_unreachable():
      raise tfds_source.offline_error(BUILDER_NAME, f"{tfds_source._PROBE_HOST[0]} unreachable, nothing "
                                                    f"prepared in {where}", fix)
    try:
      builder.download_and_prepare()
    except Exception as e:  # offline machines fail here with a connection/download error
      raise tfds_source.offline_error(BUILDER_NAME, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}",
                                      fix) from None
  waves, labels = [], []
  for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
    waves.append(np.asarray(example["audio"]).reshape(-1))
    labels.append(example["label"])
  if not waves:
    raise UserError(f"TFDS {BUILDER_NAME} split {split!r} is empty; set --config.data.split")
  length = max(SAMPLE_RATE, max(len(w) for w in waves))
  audio_NxT = np.zeros((len(waves), length), np.float32)
  for i, w in enumerate(waves):
    audio_NxT[i, :len(w)] = w.astype(np.float32) / 32768.0
  return audio.AudioSet(audio_NxT, np.asarray(labels, np.int32), SAMPLE_RATE, WORDS)


register_source(audio.audio_source(
    "speech_commands", lambda d, split: load_sc09(d.data_dir, split), keys=("data_dir",),
    splits=("train", "validation", "test"),
    doc="SC09: the digits of Speech Commands v0.02 through TFDS (online; downloaded into data.data_dir)"))
