"""Fully connected GANs: Goodfellow et al.'s MNIST pair (2014) and the 2-D benchmark pair of PacGAN (2018).

Goodfellow et al.: generator uniform noise -> ReLU 1200 -> ReLU 1200 -> image; discriminator maxout 240x5 ->
maxout 240x5 -> logit, with dropout (keep 0.8 on the input, 0.5 on hidden layers), as in the paper's released
pylearn2 setup. Outputs are in [-1, 1] (tanh) rather than the paper's sigmoid [0, 1], the codebase's image
convention.

2-D mixtures (Lin et al. 2018, reference code github fjxmlzn/PacGAN, synthetic_data_experiments/*/
pacgan_task.py): `BatchNormMLPGenerator` 2-d normal noise -> 4 x [linear 400 without bias -> batch norm ->
ReLU] -> linear 2 (no squashing: points are unbounded); discriminator `MaxoutDiscriminator` with 3 maxout layers
of 200 units x 5 pieces -> linear logit, no dropout, its input `pack` points side by side. Weights ~ N(0, 0.02),
biases 0 (the code's IsotropicGaussian(0.02) / Constant(0)). Batch norm as blocks': epsilon 1e-4, and the
population statistics move by 0.05 of the batch's per step (flax momentum 0.95).
"""
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLPGenerator(nn.Module):
  image_shape: Sequence[int]  # (H, W, C)
  hidden: Sequence[int] = (1200, 1200)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z_BxZ, train: bool = True):
    x = z_BxZ
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    size = 1
    for d in self.image_shape:
      size *= d
    x = nn.Dense(size, dtype=self.dtype)(x)
    return jnp.tanh(x).astype(jnp.float32).reshape((-1, *self.image_shape))


def _kernel_init(init_std: float):
  """N(0, init_std) weights, or flax's default (LeCun normal) for 0."""
  return nn.initializers.normal(init_std) if init_std else nn.linear.default_kernel_init


class Maxout(nn.Module):
  units: int
  pieces: int
  dtype: jnp.dtype = jnp.float32
  init_std: float = 0.0  # 0: flax's default init

  @nn.compact
  def __call__(self, x):
    y = nn.Dense(self.units * self.pieces, kernel_init=_kernel_init(self.init_std), dtype=self.dtype)(x)
    return y.reshape((*y.shape[:-1], self.units, self.pieces)).max(axis=-1)


class MaxoutDiscriminator(nn.Module):
  hidden: Sequence[int] = (240, 240)
  pieces: int = 5
  input_dropout: float = 0.2
  hidden_dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32
  init_std: float = 0.0  # 0: flax's default init (Goodfellow et al.'s setting here); PacGAN: 0.02

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = True):
    x = x_BxHxWxC.reshape((x_BxHxWxC.shape[0], -1))
    x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
    for units in self.hidden:
      x = Maxout(units, self.pieces, dtype=self.dtype, init_std=self.init_std)(x)
      x = nn.Dropout(self.hidden_dropout, deterministic=not train)(x)
    return nn.Dense(1, kernel_init=_kernel_init(self.init_std), dtype=self.dtype)(x)[:, 0].astype(jnp.float32)


class BatchNormMLPGenerator(nn.Module):
  """noise [B, Z] -> points [B, out_dim]: hidden layers linear (no bias: batch norm's shift replaces it) ->
  batch norm -> ReLU, then a linear output. `axis_name` makes batch norm use the global batch's statistics
  across devices, so a data-parallel step equals the single-device step."""
  out_dim: int = 2
  hidden: Sequence[int] = (400, 400, 400, 400)
  init_std: float = 0.02
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z_BxZ, train: bool = True):
    x = z_BxZ
    for width in self.hidden:
      x = nn.Dense(width, use_bias=False, kernel_init=_kernel_init(self.init_std), dtype=self.dtype)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.95, epsilon=1e-4, axis_name=self.axis_name,
                       dtype=self.dtype)(x)
      x = nn.relu(x)
    x = nn.Dense(self.out_dim, kernel_init=_kernel_init(self.init_std), dtype=self.dtype)(x)
    return x.astype(jnp.float32)
