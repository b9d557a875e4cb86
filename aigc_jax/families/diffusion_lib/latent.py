"""Latent diffusion (Rombach et al., CVPR 2022, Section 3.2): the diffusion family's process runs on the scaled
latents of a frozen KL autoencoder instead of on pixels.

`model.autoencoder` names a run of experiments/autoencoder_kl.py (its workdir, or one of its checkpoints/<step>);
"" keeps the model in pixel space. The autoencoder is restored with its own saved config
(`families.autoencoder_kl.load_autoencoder`), checked against this run's images (data.image_size, data.channels),
and held frozen as constants of the compiled step: a train step encodes the batch to its posterior mean times the
stored latent scale factor (1 / std of the latents, computed once by the autoencoder run, LDM's `scale_factor`),
and `sample` decodes the sampled latents back to images. The autoencoder's weights are not in this run's
checkpoints: keep its run next to this one. The variational bound (eval_step) would be in bits per latent
dimension, not comparable with pixel bits/dim, so a latent model has no eval_step.
"""
import dataclasses
from typing import Callable, Tuple

from ml_collections import ConfigDict

from aigc_jax.errors import UserError


def add_config_keys(c: ConfigDict):
  c.model.autoencoder = ""           # latent diffusion: a run of experiments/autoencoder_kl.py; "" = pixel space


def enabled(config: ConfigDict) -> bool:
  return bool(config.model.get("autoencoder", ""))


@dataclasses.dataclass(frozen=True)
class Latent:
  encode: Callable      # images [B, H, W, C] in [-1, 1] -> scaled latents [B, h, w, c] (jittable)
  decode: Callable      # scaled latents -> images in [-1, 1] (jittable)
  latent_shape: Tuple[int, int, int]
  scale_factor: float
  fingerprint: str
  checkpoint: str


def load(config: ConfigDict, medium: str) -> Latent:
  from aigc_jax.families.autoencoder_kl import load_autoencoder  # only latent runs need the autoencoder family
  if medium != "images":
    raise UserError(f"model.autoencoder is a KL autoencoder of images, and data.name={config.data.name!r} is "
                    f"{medium}; leave model.autoencoder empty")
  d = config.data
  ae = load_autoencoder(config.model.autoencoder, key="model.autoencoder",
                        expect_image_shape=(d.image_size, d.image_size, d.channels))
  params = ae.params
  h = ae.latent_shape[0]
  levels = len(config.model.ch_mult)
  if h % 2 ** (levels - 1):
    raise UserError(f"the autoencoder's latents are {h}x{h}, not divisible by 2^{levels - 1} for {levels} U-Net "
                    "levels; change model.ch_mult")
  return Latent(encode=lambda x: ae.jax_encode(params, x), decode=lambda z: ae.jax_decode(params, z),
                latent_shape=tuple(ae.latent_shape), scale_factor=float(ae.scale_factor),
                fingerprint=ae.fingerprint, checkpoint=ae.checkpoint)
