"""DCGAN generator and discriminator (Radford, Metz & Chintala, ICLR 2016).

Generator: z -> 4x4x(8w) projection -> stride-2 transposed convs halving the width and doubling the
resolution up to the image size -> tanh. Batch norm + ReLU everywhere but the output. Discriminator: the
mirror image with stride-2 convs, LeakyReLU(0.2), batch norm on all but the first layer, a linear logit.
Weights ~ N(0, 0.02), batch-norm scale ~ N(1, 0.02), as the paper prescribes.

`axis_name` makes batch norm use the statistics of the global batch across devices, so a data-parallel
step equals the single-device step.

The generator's upsampling layers are `layers.UpConv4x4`: the parameters and function of
`nn.ConvTranspose(out, (4, 4), strides=(2, 2), padding="SAME")` under the same names, computed as a matmul and
an overlap-add on CPU, where XLA's transposed-convolution gradient is slow (models/layers.py says why).
"""
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from aigc_jax.models.layers import UpConv4x4

dcgan_init = nn.initializers.normal(0.02)


def bn_scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def num_resolution_steps(image_size: int) -> int:
  steps = int(round(math.log2(image_size / 4)))
  if image_size < 8 or 4 * 2 ** steps != image_size:
    raise ValueError(f"DCGAN needs an image size of 4 * 2^k >= 8, got {image_size}")
  return steps


class DCGANGenerator(nn.Module):
  image_size: int = 32
  channels: int = 1
  width: int = 64  # channels of the last hidden layer ("ngf"); layer i has width * 2^(steps-1-i)
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32
  upconv_impl: str = "auto"  # how UpConv4x4 computes; same params and function whichever

  def _norm(self, train):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=self.axis_name,
                        scale_init=bn_scale_init, dtype=self.dtype)

  @nn.compact
  def __call__(self, z_BxZ, train: bool = True):
    steps = num_resolution_steps(self.image_size)
    top = self.width * 2 ** (steps - 1)
    x = nn.Dense(4 * 4 * top, use_bias=False, kernel_init=dcgan_init, dtype=self.dtype)(z_BxZ)
    x = nn.relu(self._norm(train)(x.reshape((-1, 4, 4, top))))
    # Named as the nn.ConvTranspose layers they replace, so the param tree (and checkpoints) are unchanged.
    for i in range(steps - 1):
      x = UpConv4x4(top // 2 ** (i + 1), use_bias=False, kernel_init=dcgan_init, dtype=self.dtype,
                    impl=self.upconv_impl, name=f"ConvTranspose_{i}")(x)
      x = nn.relu(self._norm(train)(x))
    x = UpConv4x4(self.channels, kernel_init=dcgan_init, dtype=self.dtype, impl=self.upconv_impl,
                  name=f"ConvTranspose_{steps - 1}")(x)
    return jnp.tanh(x).astype(jnp.float32)


class DCGANDiscriminator(nn.Module):
  image_size: int = 32
  width: int = 64  # channels of the first conv ("ndf")
  axis_name: Optional[str] = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, train: bool = True):
    steps = num_resolution_steps(self.image_size)
    x = x_BxHxWxC.astype(self.dtype)
    for i in range(steps):
      x = nn.Conv(self.width * 2 ** i, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=i == 0,
                  kernel_init=dcgan_init, dtype=self.dtype)(x)
      if i > 0:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=self.axis_name,
                         scale_init=bn_scale_init, dtype=self.dtype)(x)
      x = nn.leaky_relu(x, 0.2)
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(1, kernel_init=dcgan_init, dtype=self.dtype)(x)[:, 0].astype(jnp.float32)
