"""The diffusion family's noise-prediction networks: ARCHS maps `model.arch` to a builder, the model.* keys only
it reads (another arch's key changed from its default is an error, checked by diffusion.check_arch), the media it
models and the shape of one example."""
import dataclasses
from typing import Callable, Tuple

from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax import optim
from aigc_jax.errors import UserError
from aigc_jax.families.diffusion_lib import latent as latent_lib
from aigc_jax.models.diffwave import DiffWave
from aigc_jax.models.unet import UNet


def _unet(config: ConfigDict) -> UNet:
  m, d = config.model, config.data
  levels = len(m.ch_mult)
  if d.image_size % 2 ** (levels - 1) and not latent_lib.enabled(config):  # latent: latent.load checks
    raise UserError(f"image_size {d.image_size} is not divisible by 2^{levels - 1} for {levels} U-Net levels; "
                    "change data.image_size or model.ch_mult")
  widths = [m.ch * k for k in m.ch_mult]
  if any(w % 32 for w in widths):
    raise UserError(f"U-Net widths {widths} must be multiples of 32 (GroupNorm uses 32 groups); change model.ch")
  return UNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
              attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout, num_classes=m.num_classes,
              out_channels=d.channels, dtype=optim.compute_dtype(config.dtype))


def _diffwave(config: ConfigDict) -> DiffWave:
  m = config.model
  if not isinstance(m.patch_size, int) or m.patch_size < 1:
    raise UserError(f"model.patch_size must be a positive integer (1 = the paper), got {m.patch_size!r}")
  clip = data_lib.example_batch(config, 1)["audio"].shape[-1]
  if clip % m.patch_size:
    raise UserError(f"a clip of {clip:,} samples (data.sample_rate * data.clip_seconds) is not a multiple of "
                    f"model.patch_size={m.patch_size}; change --config.model.patch_size or data.clip_seconds")
  return DiffWave(residual_channels=m.residual_channels, num_layers=m.residual_layers,
                  dilation_cycle=m.dilation_cycle, num_classes=m.num_classes, patch_size=m.patch_size,
                  dtype=optim.compute_dtype(config.dtype))


@dataclasses.dataclass(frozen=True)
class Arch:
  """A noise-prediction network: build(config) -> a Linen module called as (x, t_B, labels_B, train=...),
  the model.* keys only it reads, the media it models, and the shape of one example it takes."""
  build: Callable[[ConfigDict], object]
  keys: Tuple[str, ...]
  media: Tuple[str, ...]
  example: str  # e.g. "[H, W, C]": its rank is the number of axes one example must have


ARCHS = {
    "unet": Arch(_unet, ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout"), ("images",),
                 "[H, W, C]"),
    "diffwave": Arch(_diffwave, ("residual_channels", "residual_layers", "dilation_cycle", "patch_size"), ("audio",),
                     "[T]"),
}
