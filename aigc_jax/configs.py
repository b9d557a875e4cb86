"""The config keys every family shares; experiments/*.py start from `base_config()` and lock the result."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.family = ""                  # module name in aigc_jax/families
  c.seed = 0
  c.batch_size = 64              # global, across all devices and hosts
  c.num_train_steps = 1000
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.sample_every_steps = 500     # 0 disables sample grids during training
  c.keep_checkpoints = 3
  c.dtype = "float32"            # compute dtype: float32 | bfloat16 (params stay float32)

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"         # digits | npz | image_folder | a TFDS image dataset (mnist, cifar10, ...)
  c.data.split = "train"
  c.data.path = ""               # for npz / image_folder
  c.data.data_dir = ""           # TFDS data_dir ("" = TFDS default)
  c.data.image_size = 32
  c.data.channels = 1
  c.data.random_flip = False

  c.model = ml_collections.ConfigDict()
  c.optimizer = ml_collections.ConfigDict()

  c.sample = ml_collections.ConfigDict()
  c.sample.num = 100
  c.sample.seed = 0
  c.sample.use_ema = True
  return c


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Unknown keys become errors (`--config.optimizer.lrr=1` fails instead of being ignored)."""
  config.lock()
  return config
