"""The DDPM U-Net (Ho, Jain & Abbeel, NeurIPS 2020, Appendix B), a PixelCNN++-style encoder-decoder.

  x_BxHxWxC --conv--> [ResBlock x num_res_blocks (+ attention at attn_resolutions), downsample] per level
            --> middle: ResBlock, attention, ResBlock
            --> [ResBlock x (num_res_blocks + 1) on the concatenated skip, (+ attention), upsample] per level
            --> GroupNorm, swish, conv --> output_BxHxWxC

Every ResBlock adds a projection of the timestep embedding (sinusoidal -> MLP, 4 * ch wide). With
`num_classes > 0` a learned class embedding is added to it too; index `num_classes` is the "null" class
that classifier-free guidance trains with label dropout and samples the unconditional branch with.
With `context_dim > 0` the network is text-conditional as in latent diffusion (Rombach et al., CVPR 2022,
Section 3.3): after every self-attention block (the attention resolutions and the middle) a cross-attention block
lets each position attend to the caption's token states ctx_BxLxD under a key mask; masked tokens get exactly
zero weight and the block's output projection has no bias, so a caption with every token masked (the null caption
of classifier-free guidance) adds exactly nothing and the network is the same function as without text.
Initialisation follows the paper's code: fan-average uniform variance scaling, and the last conv of every
residual branch (and of the network) starts at zero, so each block starts as the identity.
"""
import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from aigc_jax.models.layers import Embed, example_dropout

default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def timestep_embedding(t_B, dim: int):
  """Transformer sinusoidal embedding of (possibly fractional) timesteps: [sin(t w_i), cos(t w_i)]."""
  half = dim // 2
  freqs_H = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args_BxH = t_B.astype(jnp.float32)[:, None] * freqs_H[None]
  emb = jnp.concatenate([jnp.sin(args_BxH), jnp.cos(args_BxH)], axis=1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def group_norm(channels: int, dtype):
  """32 groups as in the paper, but at least 4 channels per group: with one channel per group (a 32-wide
  U-Net) the norm after a ResBlock's first conv would subtract the per-channel time/class shift just added,
  and the network would ignore t and the label."""
  return nn.GroupNorm(num_groups=min(32, max(1, channels // 4)), epsilon=1e-6, dtype=dtype)


class ResnetBlock(nn.Module):
  out_ch: int
  dropout: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, temb_BxE, deterministic: bool, example_ids_B=None):
    h = nn.swish(group_norm(x_BxHxWxC.shape[-1], self.dtype)(x_BxHxWxC))
    h = nn.Conv(self.out_ch, (3, 3), kernel_init=default_init, dtype=self.dtype)(h)
    if temb_BxE is not None:  # None: no time embedding (the KL autoencoder's blocks, models/autoencoder_kl.py)
      h = h + nn.Dense(self.out_ch, kernel_init=default_init, dtype=self.dtype)(nn.swish(temb_BxE))[:, None, None]
    h = nn.swish(group_norm(self.out_ch, self.dtype)(h))
    h = example_dropout(self, self.dropout, h, not deterministic, example_ids_B)
    h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
    skip = x_BxHxWxC
    if x_BxHxWxC.shape[-1] != self.out_ch:  # the paper's "NIN" shortcut: a 1x1 projection
      skip = nn.Dense(self.out_ch, kernel_init=default_init, dtype=self.dtype)(skip)
    return skip + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all H*W positions."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC):
    b, hgt, wid, c = x_BxHxWxC.shape
    h = group_norm(c, self.dtype)(x_BxHxWxC).reshape(b, hgt * wid, c)
    dense = lambda init=default_init: nn.Dense(c, kernel_init=init, dtype=self.dtype)
    q_BxLxC, k_BxLxC, v_BxLxC = dense()(h), dense()(h), dense()(h)
    logits_BxLxL = jnp.einsum("blc,bmc->blm", q_BxLxC, k_BxLxC) / math.sqrt(c)
    weights = nn.softmax(logits_BxLxL.astype(jnp.float32), axis=-1).astype(v_BxLxC.dtype)
    h = jnp.einsum("blm,bmc->blc", weights, v_BxLxC)
    h = dense(nn.initializers.zeros)(h)
    return x_BxHxWxC + h.reshape(b, hgt, wid, c)


class CrossAttnBlock(nn.Module):
  """Multi-head attention from the H*W positions (queries) to the context tokens (keys, values), 64 channels a
  head as in latent diffusion's SpatialTransformer; the residual branch starts at zero (zero-initialised output
  projection) and is exactly zero for a query whose every key is masked."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, ctx_BxLxD, mask_BxL):
    b, hgt, wid, c = x_BxHxWxC.shape
    heads = max(1, c // 64)
    h = group_norm(c, self.dtype)(x_BxHxWxC).reshape(b, hgt * wid, heads, c // heads)
    ctx = ctx_BxLxD.astype(self.dtype)
    proj = lambda name: nn.DenseGeneral((heads, c // heads), kernel_init=default_init, dtype=self.dtype, name=name)
    q_BxPxNxK = proj("query")(h.reshape(b, hgt * wid, c))
    k_BxLxNxK, v_BxLxNxK = proj("key")(ctx), proj("value")(ctx)
    logits = jnp.einsum("bpnk,blnk->bnpl", q_BxPxNxK, k_BxLxNxK).astype(jnp.float32) / math.sqrt(c // heads)
    keep_Bx1x1xL = mask_BxL[:, None, None, :]
    weights = nn.softmax(jnp.where(keep_Bx1x1xL, logits, -1e9), axis=-1) * keep_Bx1x1xL  # all masked: 0, not 1/L
    out_BxPxNxK = jnp.einsum("bnpl,blnk->bpnk", weights.astype(v_BxLxNxK.dtype), v_BxLxNxK)
    out = nn.DenseGeneral(c, axis=(-2, -1), use_bias=False, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                          name="out")(out_BxPxNxK)
    return x_BxHxWxC + out.reshape(b, hgt, wid, c)


class UNet(nn.Module):
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  num_classes: int = 0        # 0: unconditional; else labels in [0, num_classes], num_classes = null class
  out_channels: int = 3
  context_dim: int = 0        # > 0: cross-attention to a text context [B, L, context_dim] after each attention
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, t_B, labels_B=None, ctx_BxLxD=None, mask_BxL=None, *, train: bool = False,
               example_ids_B=None):
    """`example_ids_B`: per-example dropout masks (models/layers.example_dropout)."""
    det = not train
    if self.context_dim and (ctx_BxLxD is None or mask_BxL is None):
      raise ValueError("a text-conditional UNet needs a context and its mask (an all-False mask = no caption)")

    def attend(h):
      h = AttnBlock(self.dtype)(h)
      return CrossAttnBlock(self.dtype)(h, ctx_BxLxD, mask_BxL) if self.context_dim else h

    temb = timestep_embedding(t_B, self.ch)
    temb = nn.Dense(4 * self.ch, kernel_init=default_init, dtype=self.dtype)(temb)
    temb = nn.Dense(4 * self.ch, kernel_init=default_init, dtype=self.dtype)(nn.swish(temb))
    if self.num_classes:
      if labels_B is None:
        raise ValueError("a class-conditional UNet needs labels (use index num_classes for 'no class')")
      temb = temb + Embed(self.num_classes + 1, 4 * self.ch, dtype=self.dtype)(labels_B)

    h = nn.Conv(self.ch, (3, 3), kernel_init=default_init, dtype=self.dtype)(x_BxHxWxC.astype(self.dtype))
    skips = [h]
    for level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = ResnetBlock(self.ch * mult, self.dropout, self.dtype)(h, temb, det, example_ids_B)
        if h.shape[1] in self.attn_resolutions:
          h = attend(h)
        skips.append(h)
      if level != len(self.ch_mult) - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), kernel_init=default_init, dtype=self.dtype)(h)
        skips.append(h)

    h = ResnetBlock(h.shape[-1], self.dropout, self.dtype)(h, temb, det, example_ids_B)
    h = attend(h)
    h = ResnetBlock(h.shape[-1], self.dropout, self.dtype)(h, temb, det, example_ids_B)

    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = ResnetBlock(self.ch * mult, self.dropout, self.dtype)(jnp.concatenate([h, skips.pop()], -1), temb, det,
                                                                  example_ids_B)
        if h.shape[1] in self.attn_resolutions:
          h = attend(h)
      if level != 0:
        b, hgt, wid, c = h.shape
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour upsampling
        h = nn.Conv(c, (3, 3), kernel_init=default_init, dtype=self.dtype)(h)
    assert not skips

    h = nn.swish(group_norm(h.shape[-1], self.dtype)(h))
    h = nn.Conv(self.out_channels, (3, 3), kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
    return h.astype(jnp.float32)
