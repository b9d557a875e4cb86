"""The KL-regularised autoencoder of latent diffusion (Rombach, Blattmann, Lorenz, Esser & Ommer, "High-Resolution
Image Synthesis with Latent Diffusion Models", CVPR 2022, Section 3.1 and Appendix G; the CompVis code's
ldm/models/autoencoder.py AutoencoderKL with ldm/modules/diffusionmodules/model.py Encoder/Decoder).

  x_BxHxWxC --conv 3x3 (ch)--> per level i: num_res_blocks ResnetBlocks of ch * ch_mult[i] channels
            (+ self-attention where the side is in attn_resolutions), a stride-2 3x3 conv after every level
            but the last --> middle: ResnetBlock, [attention], ResnetBlock --> GroupNorm, swish,
            conv 3x3 to 2c --> 1x1 conv ("quant_conv") --> mean_Bxhxwxc, logvar_Bxhxwxc
  z_Bxhxwxc --1x1 conv ("post_quant_conv")--> conv 3x3 --> middle --> per level, coarsest first:
            num_res_blocks + 1 ResnetBlocks (+ attention), nearest-neighbour x2 and a 3x3 conv after every level
            but the finest --> GroupNorm, swish, conv 3x3 ("conv_out") --> x_hat_BxHxWxC

h = H / 2^(len(ch_mult) - 1). The residual and attention blocks are the DDPM U-Net's (models/unet.py) without a
time embedding, as in the paper's code (temb_channels = 0). The stride-2 convolution pads one row and column at
the bottom/right only, as that code does (its torch pad (0, 1, 0, 1)). The log-variance is clipped to
[-30, 20], as the code's DiagonalGaussianDistribution does, so exp(logvar) stays finite in float32.
`mid_attention=False` drops the middle attention blocks (the paper's code always has them; at 4x4 latents of
8x8 digits they cost more than they give). The decoder sows the input of its last conv ("intermediates" /
"last_layer_input") for VQGAN's adaptive weight, as models/vqvae.py does.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from aigc_jax.models.unet import AttnBlock, ResnetBlock, default_init, group_norm

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


def conv3x3(channels: int, dtype, name=None, strides=1, padding="SAME"):
  return nn.Conv(channels, (3, 3), strides=(strides, strides), padding=padding, kernel_init=default_init,
                 dtype=dtype, name=name)


class Tower(nn.Module):
  """The settings the encoder and the decoder share."""
  latent_channels: int
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = ()
  mid_attention: bool = True
  dtype: jnp.dtype = jnp.float32


class Encoder(Tower):

  @nn.compact
  def __call__(self, x_BxHxWxC):
    """Mean and log-variance (before clipping) of q(z|x), each [B, h, w, latent_channels], float32."""
    h = conv3x3(self.ch, self.dtype)(x_BxHxWxC.astype(self.dtype))
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = ResnetBlock(self.ch * mult, 0.0, self.dtype)(h, None, True)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.dtype)(h)
      if level != len(self.ch_mult) - 1:
        h = conv3x3(h.shape[-1], self.dtype, strides=2, padding=((0, 1), (0, 1)))(h)
    h = middle(h, self.mid_attention, self.dtype)
    h = conv3x3(2 * self.latent_channels, self.dtype)(nn.swish(group_norm(h.shape[-1], self.dtype)(h)))
    moments = nn.Conv(2 * self.latent_channels, (1, 1), kernel_init=default_init, dtype=self.dtype,
                      name="quant_conv")(h).astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, logvar


class Decoder(Tower):
  out_channels: int = 3

  @nn.compact
  def __call__(self, z_Bxhxwxc):
    h = nn.Conv(self.latent_channels, (1, 1), kernel_init=default_init, dtype=self.dtype,
                name="post_quant_conv")(z_Bxhxwxc.astype(self.dtype))
    h = conv3x3(self.ch * self.ch_mult[-1], self.dtype)(h)
    h = middle(h, self.mid_attention, self.dtype)
    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = ResnetBlock(self.ch * mult, 0.0, self.dtype)(h, None, True)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.dtype)(h)
      if level != 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour upsampling
        h = conv3x3(h.shape[-1], self.dtype)(h)
    h = nn.swish(group_norm(h.shape[-1], self.dtype)(h))
    self.sow("intermediates", "last_layer_input", h)
    return last_layer(self.out_channels, self.dtype)(h).astype(jnp.float32)


def middle(h, attention: bool, dtype):
  """The middle of the encoder and the decoder: ResnetBlock, self-attention (optional), ResnetBlock. Called
  inside a compact module, so its blocks are that module's."""
  h = ResnetBlock(h.shape[-1], 0.0, dtype)(h, None, True)
  if attention:
    h = AttnBlock(dtype)(h)
  return ResnetBlock(h.shape[-1], 0.0, dtype)(h, None, True)


def last_layer(out_channels: int, dtype=jnp.float32):
  """The decoder's last conv ("conv_out"), also as a standalone module for the adaptive weight."""
  return conv3x3(out_channels, dtype, name="conv_out")


class AutoencoderKL(Tower):
  """encode(x) -> (mean, clipped logvar) of q(z|x); decode(z) -> x_hat; __call__(x, eps) -> (x_hat, z, mean,
  logvar) with the reparameterised sample z = mean + exp(logvar / 2) * eps (eps ~ N(0, I) from the caller, who
  owns the randomness: parallel.example_keys gives each example its own)."""
  channels: int = 3  # of the images

  def setup(self):
    shared = {f: getattr(self, f) for f in ("latent_channels", "ch", "num_res_blocks", "mid_attention", "dtype")}
    shared.update(ch_mult=tuple(self.ch_mult), attn_resolutions=tuple(self.attn_resolutions))
    self.encoder = Encoder(**shared)
    self.decoder = Decoder(out_channels=self.channels, **shared)

  def encode(self, x_BxHxWxC):
    mean, logvar = self.encoder(x_BxHxWxC)
    return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

  def decode(self, z_Bxhxwxc):
    return self.decoder(z_Bxhxwxc)

  def sample_posterior(self, x_BxHxWxC, eps_Bxhxwxc):
    """(z, mean, logvar): the reparameterised draw z = mean + exp(logvar / 2) * eps of q(z|x)."""
    mean, logvar = self.encode(x_BxHxWxC)
    return mean + jnp.exp(0.5 * logvar) * eps_Bxhxwxc, mean, logvar

  def __call__(self, x_BxHxWxC, eps_Bxhxwxc):
    z, mean, logvar = self.sample_posterior(x_BxHxWxC, eps_Bxhxwxc)
    return self.decode(z), z, mean, logvar
