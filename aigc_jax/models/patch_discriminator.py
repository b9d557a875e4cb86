"""PatchGAN discriminator (Isola et al. 2017), the one VQGAN trains against (Esser, Rombach & Ommer 2021).

`num_layers` 4x4 stride-2 convolutions (widths width * 1, 2, 4, ... capped at 8x), one 4x4 stride-1
convolution, then a 4x4 stride-1 convolution to one logit per patch: [B, H, W, C] -> [B, h, w, 1], each
logit judging one overlapping receptive field rather than the whole image. LeakyReLU(0.2) after every
hidden layer; batch norm after every hidden layer but the first (`norm="batch"`, as the VQGAN authors' code
does) or none (`norm="none"`). Weights start from N(0, 0.02) and norm scales from N(1, 0.02), as in that code.

`axis_name` makes batch norm use the statistics of the global batch across devices, so a data-parallel step
computes what one device would.
"""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

NORMS = ("batch", "none")


def patch_grid_size(image_size: int, num_layers: int) -> int:
  """Side of the logit grid: each stride-2 conv halves (4x4, padding 1), each stride-1 conv takes one off."""
  size = image_size
  for _ in range(num_layers):
    size //= 2
  return size - 2


class PatchDiscriminator(nn.Module):
  width: int = 64
  num_layers: int = 3
  norm: str = "batch"
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = True):
    init = nn.initializers.normal(0.02)
    h = x_BxHxWxC.astype(self.dtype)
    widths = [self.width * min(2 ** i, 8) for i in range(self.num_layers + 1)]
    for i, width in enumerate(widths):
      stride = 2 if i < self.num_layers else 1
      # No bias before batch norm (it would be cancelled); the first layer has no norm, so it keeps its bias.
      normed = self.norm == "batch" and i > 0
      h = nn.Conv(width, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=not normed,
                  kernel_init=init, dtype=self.dtype)(h)
      if normed:
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=self.axis_name,
                         scale_init=lambda k, s, d=jnp.float32: 1.0 + 0.02 * nn.initializers.normal(1.0)(k, s, d),
                         dtype=self.dtype)(h)
      h = nn.leaky_relu(h, 0.2)
    logits = nn.Conv(1, (4, 4), padding=((1, 1), (1, 1)), kernel_init=init, dtype=self.dtype)(h)
    return logits.astype(jnp.float32)
