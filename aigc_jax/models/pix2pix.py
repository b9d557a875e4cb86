"""The pix2pix U-Net generator (Isola et al., CVPR 2017, Section 3.2.1 and the authors' code).

Encoder: `depth` 4x4 stride-2 convolutions C64-C128-C256-C512-C512-..., widths width * min(2^i, 8); the
first without normalisation; LeakyReLU(0.2) before every one but the first (the authors' pre-activation
order, so each skip carries the pre-activation output). Decoder: ReLU, 4x4 stride-2 up-convolution
(`layers.UpConv4x4`) back to the width of the mirrored encoder layer, normalisation, dropout on the first
`dropout_layers` of them (pix2pix's noise source, at training and test time), then concatenation with that
encoder layer's output (the U-Net skip); a last ReLU, up-convolution to `out_channels` and tanh.
With depth = log2(image size) the bottleneck is 1x1 (8 layers at 256, the paper's generator).

The innermost encoder layer is not normalised, as in the authors' PyTorch port: at a 1x1 bottleneck with
batch size 1 (the paper's setting) batch norm would reduce that layer to its bias. `norm`: "batch" (the
paper; `axis_name` makes the statistics those of the global batch across devices), "instance" (what batch
norm at batch size 1 with test-batch statistics computes, the paper's Section 3.3 remark) or "none".
Weights start from N(0, 0.02) and norm scales from N(1, 0.02), as in the paper's code.

Dropout masks come from per-example keys (`dropout_keys_Bx2`), so they do not depend on how the batch is
split across devices; without keys (or `dropout_rate` 0) the generator is deterministic.
"""
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from aigc_jax.models.layers import UpConv4x4

NORMS = ("batch", "instance", "none")
init_normal = nn.initializers.normal(0.02)


def scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def unet_depth(image_size: int, num_downsamples: int = 0) -> int:
  """Stride-2 layers of the encoder: `num_downsamples`, or 0 = down to a 1x1 bottleneck (log2 of the size).
  ValueError when the size cannot be halved that often."""
  if num_downsamples == 0:
    depth = int(round(math.log2(image_size))) if image_size >= 2 else 0
    if depth < 1 or 2 ** depth != image_size:
      raise ValueError(f"a U-Net down to a 1x1 bottleneck needs a power-of-two image size, got {image_size}")
    return depth
  if image_size % 2 ** num_downsamples:
    raise ValueError(f"image size {image_size} cannot be halved {num_downsamples} times "
                     f"(it must be a multiple of 2^{num_downsamples} = {2 ** num_downsamples})")
  return num_downsamples


def dropout(h_BxHxWxC, keys_Bx2, layer: int, rate: float):
  """Inverted dropout with one mask per example from fold_in(key_b, layer)."""
  keep = 1.0 - rate
  mask = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, layer), keep, h_BxHxWxC.shape[1:]))(keys_Bx2)
  return jnp.where(mask, h_BxHxWxC / keep, 0.0).astype(h_BxHxWxC.dtype)


class UNetGenerator(nn.Module):
  out_channels: int
  depth: int = 8
  width: int = 64
  norm: str = "batch"
  dropout_rate: float = 0.5
  dropout_layers: int = 3
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32
  upconv_impl: str = "auto"

  def _norm(self, h, train: bool):
    if self.norm == "batch":
      return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=self.axis_name,
                          scale_init=scale_init, dtype=self.dtype)(h)
    if self.norm == "instance":
      return nn.InstanceNorm(epsilon=1e-5, scale_init=scale_init, dtype=self.dtype)(h)
    return h

  @nn.compact
  def __call__(self, x_BxHxWxC, dropout_keys_Bx2=None, train: bool = True):
    if self.norm not in NORMS:
      raise ValueError(f"unknown norm {self.norm!r}; use one of {NORMS}")
    widths = [self.width * min(2 ** i, 8) for i in range(self.depth)]
    normed = lambda i: self.norm != "none" and 0 < i < self.depth - 1
    h = x_BxHxWxC.astype(self.dtype)
    skips = []
    for i, width in enumerate(widths):
      if i:
        h = nn.leaky_relu(h, 0.2)
      h = nn.Conv(width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=not normed(i),
                  kernel_init=init_normal, dtype=self.dtype, name=f"down{i}")(h)
      if normed(i):
        h = self._norm(h, train)
      skips.append(h)
    for j in range(self.depth - 1):
      mirror = self.depth - 2 - j
      h = UpConv4x4(widths[mirror], use_bias=self.norm == "none", kernel_init=init_normal, dtype=self.dtype,
                    impl=self.upconv_impl, name=f"up{j}")(nn.relu(h))
      h = self._norm(h, train)
      if j < self.dropout_layers and self.dropout_rate > 0 and dropout_keys_Bx2 is not None:
        h = dropout(h, dropout_keys_Bx2, j, self.dropout_rate)
      h = jnp.concatenate([h, skips[mirror]], axis=-1)
    h = UpConv4x4(self.out_channels, kernel_init=init_normal, dtype=self.dtype, impl=self.upconv_impl,
                  name="out")(nn.relu(h))
    return jnp.tanh(h).astype(jnp.float32)
