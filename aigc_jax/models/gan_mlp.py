"""The fully connected generator / maxout discriminator pair of Goodfellow et al., 2014 (MNIST).

Generator: uniform noise -> ReLU 1200 -> ReLU 1200 -> image. Discriminator: maxout 240x5 -> maxout 240x5 ->
logit, with dropout (keep 0.8 on the input, 0.5 on hidden layers), as in the paper's released pylearn2 setup.
Outputs are in [-1, 1] (tanh) rather than the paper's sigmoid [0, 1], the codebase's image convention.
"""
from typing import Sequence

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


class Maxout(nn.Module):
  units: int
  pieces: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.Dense(self.units * self.pieces, dtype=self.dtype)(x)
    return y.reshape((*y.shape[:-1], self.units, self.pieces)).max(axis=-1)


class MaxoutDiscriminator(nn.Module):
  hidden: Sequence[int] = (240, 240)
  pieces: int = 5
  input_dropout: float = 0.2
  hidden_dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = True):
    x = x_BxHxWxC.reshape((x_BxHxWxC.shape[0], -1))
    x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
    for units in self.hidden:
      x = Maxout(units, self.pieces, dtype=self.dtype)(x)
      x = nn.Dropout(self.hidden_dropout, deterministic=not train)(x)
    return nn.Dense(1, dtype=self.dtype)(x)[:, 0].astype(jnp.float32)
