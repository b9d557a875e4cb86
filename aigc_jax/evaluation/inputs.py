"""What sample-quality evaluation needs to know about a medium, one `MediumInputs` per medium: how a real split
loads (with labels, for the classifier, the reference statistics and class_accuracy), how a family's samples
become backbone input, what reference numbers depend on, and how eval.quantize rounds samples ("as if saved").

The evaluators (FID/KID/IS/PR, mIS, AM, class_accuracy) and reference.py go through this table, and the backbone
registry (backbones.py) picks the network per medium, so a metric never branches on the medium. Built in:
"images" (uint8 NHWC from `data.load_image_set`) and "audio" (float [N, T] from `data.audio.load_audio_set`).
"""
import dataclasses
from typing import Callable, Optional

import numpy as np
from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax import media
from aigc_jax.data import audio as audio_data
from aigc_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class LabelledSplit:
  """A real split as its source holds it, plus the conversion to backbone input."""
  data: np.ndarray                          # uint8 [N, H, W, C] images, float32 [N, T] audio, ...
  labels: Optional[np.ndarray]              # int32 [N], or None for unlabelled data
  num_classes: int                          # 0 when unlabelled
  to_model: Callable[[np.ndarray], np.ndarray]  # a slice of `data` -> float32 backbone input in [-1, 1]

  def __len__(self):
    return len(self.data)


@dataclasses.dataclass(frozen=True)
class MediumInputs:
  medium: str
  noun: str                                                # what one example is called on the card
  load: Callable[[ConfigDict, str], LabelledSplit]         # (data config, split)
  samples_of: Callable[[dict, ConfigDict], np.ndarray]     # (family outputs, config) -> float32 in [-1, 1]
  data_key: Callable[[ConfigDict], dict]                   # what the numbers depend on besides name/path/split
  describe: Callable[[ConfigDict, int], dict]              # the card's reference fields for a split of n examples
  quantization: str                                        # the card's text when eval.quantize is on

  def quantize(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(media.get_medium(self.medium).quantize(x), np.float32)


_INPUTS: dict = {}


def register_inputs(inputs: MediumInputs, *, replace: bool = False) -> MediumInputs:
  if inputs.medium in _INPUTS and not replace:
    raise ValueError(f"evaluation inputs for {inputs.medium!r} are already registered")
  _INPUTS[inputs.medium] = inputs
  return inputs


def get_inputs(medium: str) -> MediumInputs:
  if medium not in _INPUTS:
    raise UserError(f"sample-quality metrics do not know the medium {medium!r} (they know {sorted(_INPUTS)}); "
                    "remove the sample metrics from eval.metrics, or register evaluation.inputs for it")
  return _INPUTS[medium]


# ------------------------------------------------------------------------------------------------------ images

IMAGE_QUANTIZATION = "uint8: round((x + 1) * 127.5) half to even, clipped to [0, 255], as if saved as PNG"


def images_of(samples: dict, config) -> np.ndarray:
  if "images" not in samples:
    raise UserError(f"family {config.family!r} samples {sorted(samples)}, not images; image metrics need images "
                    "(set --config.eval.metrics=\"('eval_step',)\")")
  return np.asarray(samples["images"], np.float32)


def _load_images(data: ConfigDict, split: str) -> LabelledSplit:
  image_set = data_lib.load_image_set(data, split)
  labelled = image_set.labels is not None
  return LabelledSplit(image_set.images, image_set.labels, int(image_set.num_classes or 0) if labelled else 0,
                       data_lib.to_model_range)


register_inputs(MediumInputs(
    medium="images", noun="images", load=_load_images, samples_of=images_of,
    data_key=lambda config: {"image_size": config.data.image_size, "channels": config.data.channels},
    describe=lambda config, n: {"num_images": n, "image_size": config.data.image_size},
    quantization=IMAGE_QUANTIZATION))


# ------------------------------------------------------------------------------------------------------- audio

AUDIO_QUANTIZATION = ("16-bit PCM: round(x * 32767) half to even, clipped to [-32768, 32767], then / 32767, "
                      "as if saved as WAV")


def sample_rate(config: ConfigDict) -> int:
  return int(config.data.sample_rate)


def _load_audio(data: ConfigDict, split: str) -> LabelledSplit:
  """Clips labelled -1 (unlabelled, in a partly labelled folder) keep label -1; a set with no class names is
  unlabelled (labels None)."""
  audio_set = audio_data.load_audio_set(data, split)
  rate = data.sample_rate
  if int(audio_set.sample_rate) != int(rate):
    raise UserError(f"data source {data.name!r} split {split!r} holds {audio_set.sample_rate} Hz audio, but "
                    f"data.sample_rate={rate}; set --config.data.sample_rate={audio_set.sample_rate}")
  labelled = audio_set.num_classes > 0
  return LabelledSplit(np.asarray(audio_set.audio_NxT, np.float32),
                       np.asarray(audio_set.labels_N, np.int32) if labelled else None, audio_set.num_classes,
                       lambda x: np.asarray(x, np.float32))


def audio_of(samples: dict, config) -> np.ndarray:
  """float32 [N, T] of a family's audio outputs: channels averaged to mono (the classifier hears mono), and a
  one-line error when the samples' rate is not data.sample_rate (the rate the classifier was trained at)."""
  if "audio" not in samples:
    raise UserError(f"family {config.family!r} samples {sorted(samples)}, not audio; audio metrics need audio "
                    "(set --config.eval.metrics=\"('eval_step',)\")")
  audio = np.asarray(samples["audio"], np.float32)
  if audio.ndim == 3:
    audio = audio.mean(axis=-1)
  if audio.ndim != 2:
    raise ValueError(f"audio samples must be [N, T] or [N, T, C], got shape {audio.shape}")
  want = sample_rate(config)
  rates = sorted(set(np.atleast_1d(np.asarray(samples.get("audio_sample_rate", want))).astype(int).tolist()))
  if rates != [want]:
    raise UserError(f"family {config.family!r} samples audio at {rates} Hz, but the evaluation classifier hears "
                    f"data.sample_rate={want} Hz; generate at data.sample_rate (or set --config.data.sample_rate)")
  return audio


def _audio_key(config: ConfigDict) -> dict:
  """Every data.* key the source reads (rate, clip length, folder...), except where a copy is cached (data_dir:
  the same clips wherever they are stored)."""
  d = config.data
  keys = sorted(set(data_lib.get_source(d.name).keys) - {"split", "data_dir"})
  return {"sample_rate": sample_rate(config), "source_keys": {k: d.get(k, None) for k in keys}}


register_inputs(MediumInputs(
    medium="audio", noun="clips", load=_load_audio, samples_of=audio_of, data_key=_audio_key,
    describe=lambda config, n: {"num_clips": n, **_audio_key(config)}, quantization=AUDIO_QUANTIZATION))
