"""The config keys every family shares; experiments/*.py start from `base_config()` and lock the result."""
import importlib.util
import os

import ml_collections

from aigc_jax.errors import UserError


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.family = ""                  # module name in aigc_jax/families
  c.seed = 0
  c.batch_size = 64              # global, across all devices and hosts
  c.num_train_steps = 1000
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.sample_every_steps = 500     # 0 disables sample grids during training
  c.keep_checkpoints = 3          # the newest N; plus the best evaluation's step with eval.keep_best
  c.load_checkpoint = "latest"   # --mode=sample/eval: latest | best (the step eval.keep_best kept)
  c.dtype = "float32"            # compute dtype: float32 | bfloat16 (params stay float32)
  c.num_devices = 0              # devices to split the batch over; 0 = all (on CPU: the most that divide it)
  c.steps_per_dispatch = 1       # train steps per jitted call (lax.scan): cuts per-step host overhead of small models
  c.host_memory = "release"      # release (glibc's default) | keep: freed host memory stays in the process
                                 # (aigc_jax/hostmem.py: the audio cpu presets, 1.2-1.5x; DDPM/DCGAN: slower)

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"         # digits | npz | image_folder | a TFDS image dataset (mnist, cifar10, ...) |
                                 # audio: spoken_digits | speech_commands | audio_folder
  c.data.split = "train"
  c.data.path = ""               # for npz / image_folder / audio_folder
  c.data.data_dir = ""           # TFDS data_dir ("" = TFDS default); spoken_digits cache ("" = ~/.cache/aigc_jax)
  c.data.image_size = 32
  c.data.channels = 1
  c.data.random_flip = False
  c.data.fraction = 1.0          # image sources: train on a fixed (class-stratified) share of the training split
  c.data.sample_rate = 16000     # audio sources: Hz every clip is resampled to (SC09: 16,000)
  c.data.clip_seconds = 1.0      # audio sources: clip length; T = round(sample_rate * clip_seconds) samples

  c.model = ml_collections.ConfigDict()
  c.optimizer = ml_collections.ConfigDict()

  c.sample = ml_collections.ConfigDict()
  c.sample.num = 100
  c.sample.seed = 0
  c.sample.use_ema = True
  c.sample.label = -1            # class-conditional families: sample this class; -1 = every class in turn

  # Sample-quality evaluation (--mode=eval, and every eval.every_steps while training); aigc_jax/evaluation.
  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 0          # 0: no evaluation during training
  c.eval.keep_best = ""           # a metric of the eval card (e.g. loss, fid): its best step's checkpoint is kept
  c.eval.best_mode = "min"        # min | max: which value of eval.keep_best is best
  c.eval.num_samples = 1000       # generated samples (papers: 50000 for FID); generated in batch_size chunks
  c.eval.batch_size = 256         # per chunk of generation and feature extraction, global
  c.eval.seed = 0
  c.eval.metrics = ("fid", "kid", "is", "pr")  # also: parzen (GAN likelihood), eval_step (family likelihoods)
  c.eval.backbone = "classifier"  # classifier (trained on data.name's train split, offline) | inception
  c.eval.inception_path = ""      # FID Inception weights file (.pth or .npz), see README
  c.eval.clip_workdir = ""        # clip_score: the CLIP run (experiments/clip.py) that judges text-image fit
  c.eval.reference_split = "train"
  c.eval.quantize = True          # round samples to uint8 first, as if saved as PNG (the usual FID protocol)
  c.eval.max_pairwise_samples = 10000  # cap per set for KID and precision/recall (O(n^2))
  c.eval.kid_subsets = 100
  c.eval.kid_subset_size = 1000
  c.eval.parzen_split = "test"
  c.eval.parzen_validation_split = "train"  # sigma is chosen on the last parzen_num_validation images of it
  c.eval.parzen_num_validation = 10000
  c.eval.classifier_steps = 600
  c.eval.cache_dir = ""           # "" = <workdir>/eval/cache; share one across runs to reuse reference stats
  return c


# Integer keys count or size something and must be >= 1, except seeds (any integer) and keys whose last
# name is one of these, where 0 means "off", "none" or "the default".
ZERO_MEANS_OFF = ("num_devices", "every_steps", "sample_every_steps", "num_classes", "warmup_steps", "steps", "top_k",
                  "steps_per_epoch", "num_downsamples", "num_residual_blocks", "restart_dead_after",
                  "disc_start", "num_modes", "bpe_vocab_size", "position_frames", "mixture_components")


def _int_items(config, prefix=""):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _int_items(value, f"{prefix}{key}.")
    elif isinstance(value, int) and not isinstance(value, bool):
      yield f"{prefix}{key}", value


def check_sizes(config: ml_collections.ConfigDict):
  """A one-line UserError for a size or count below its minimum (batch, image size, channels, steps, widths,
  sample and eval counts), before any JAX work: a 0 batch or image size would otherwise end in a traceback."""
  for key, value in _int_items(config):
    name = key.rsplit(".", 1)[-1]
    if name == "seed" or name.endswith("_seed"):
      continue
    lowest = -1 if name == "label" else 0 if name in ZERO_MEANS_OFF else 1
    if value < lowest:
      meaning = {0: " (0 turns it off)", -1: " (-1 = every class in turn)"}.get(lowest, "")
      raise UserError(f"config.{key} must be >= {lowest}{meaning}, got {value}; set --config.{key} to an "
                      f"integer >= {lowest}")


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Unknown keys become errors (`--config.optimizer.lrr=1` fails instead of being ignored)."""
  config.lock()
  return config


def flat_dict(d: dict, prefix: str = "") -> dict:
  """{"model.width": 128, ...} of a nested dict (a config's to_dict())."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat_dict(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def override(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Sets {"model.width": 64, ...} in place, as `--config.model.width=64` would (notebooks, tests, benches)."""
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def load_experiment(path: str, preset: str = "", overrides: dict = None) -> ml_collections.ConfigDict:
  """get_config(preset) of an experiment file, as `--config=path[:preset]` would load it, with `overrides`
  ({"dotted.key": value}) set as `--config.<key>=` flags would (tests, benches, notebooks)."""
  name = "_aigc_jax_experiment_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(preset) if preset else module.get_config()
  return override(config, overrides or {})
