"""DCGAN generator and discriminator (Radford, Metz & Chintala, ICLR 2016).

Generator: z -> 4x4x(8w) projection -> stride-2 transposed convs halving the width and doubling the
resolution up to the image size -> tanh. Batch norm + ReLU everywhere but the output. Discriminator: the
mirror image with stride-2 convs, LeakyReLU(0.2), batch norm on all but the first layer, a linear logit.
Weights ~ N(0, 0.02), batch-norm scale ~ N(1, 0.02), as the paper prescribes.

`axis_name` makes batch norm use the statistics of the global batch across devices, so a data-parallel
step equals the single-device step.

The generator's upsampling layers are `UpConv4x4`: the parameters ("kernel" [4, 4, in, out], "bias") and
the function of `nn.ConvTranspose(out, (4, 4), strides=(2, 2), padding="SAME")`, under the same names, but
computed on CPU as one matmul and an overlap-add. XLA:CPU's kernel gradient of a transposed convolution
(the convolution autodiff produces for it) runs ~10x slower than that matmul, which made our DCGAN step
half as fast as PyTorch's on 2 cores; GPU and TPU keep the convolution (bench/RESULTS.md has the numbers).
"""
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

dcgan_init = nn.initializers.normal(0.02)
UPCONV_IMPLS = ("auto", "conv", "matmul")


def conv_transpose_4x4_s2(x_BxHxWxI, kernel_4x4xIxO):
  """What `nn.ConvTranspose(O, (4, 4), strides=(2, 2), padding="SAME")` computes: [B, H, W, I] -> [B, 2H, 2W, O]."""
  return lax.conv_transpose(x_BxHxWxI, kernel_4x4xIxO, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_transpose_4x4_s2_matmul(x_BxHxWxI, kernel_4x4xIxO):
  """The same function as `conv_transpose_4x4_s2`, as one matmul and an overlap-add (no convolution).

  Per spatial axis, lax.conv_transpose with SAME padding correlates the kernel with the input dilated by 2
  and padded by 2: out[o] = sum_k xd[o + k - 2] w[k] with xd[2m] = x[m], so input pixel m reaches output
  o = 2m + 2 - k through tap k. With k = 3 - (2a + r), a, r in {0, 1}: o = 2(m + a) + r - 1. One matmul gives
  each input pixel's 16 tap products [B, H, W, (a_y, r_y, a_x, r_x), O]; summing them at n = m + a of an
  [H+1, W+1] grid per phase (r_y, r_x) and interleaving the phases gives o = 2n + r - 1 = -1 .. 2H, of which
  the first and last rows and columns are cropped. Autodiff of this is two matmuls plus slices and pads.
  """
  b, h, w, i = x_BxHxWxI.shape
  o = kernel_4x4xIxO.shape[-1]
  flipped = kernel_4x4xIxO[::-1, ::-1]  # index 2a + r = 3 - k
  w_Ix16O = flipped.transpose(2, 0, 1, 3).reshape(i, 16 * o)
  taps = jnp.dot(x_BxHxWxI.reshape(b * h * w, i), w_Ix16O).reshape(b, h, w, 2, 2, 2, 2, o)
  grid = 0
  for a_y in (0, 1):
    for a_x in (0, 1):
      shift = ((0, 0), (a_y, 1 - a_y), (a_x, 1 - a_x), (0, 0), (0, 0), (0, 0))
      grid = grid + jnp.pad(taps[:, :, :, a_y, :, a_x], shift)  # [B, H+1, W+1, r_y, r_x, O]
  y = grid.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h + 2, 2 * w + 2, o)  # [B, (n, r_y), (n', r_x), O]
  return y[:, 1:-1, 1:-1]


class UpConv4x4(nn.Module):
  """`nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")`: same params, same function.

  `impl`: "conv" computes it as nn.ConvTranspose does (lax.conv_transpose), "matmul" as
  `conv_transpose_4x4_s2_matmul`, "auto" picks matmul on CPU and conv elsewhere when the program is lowered
  for its platform (`lax.platform_dependent`).
  """
  features: int
  use_bias: bool = True
  kernel_init: Any = dcgan_init
  bias_init: Any = nn.initializers.zeros
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x_BxHxWxI):
    if self.impl not in UPCONV_IMPLS:
      raise ValueError(f"unknown UpConv4x4 impl {self.impl!r}; use one of {UPCONV_IMPLS}")
    if x_BxHxWxI.ndim != 4:
      raise ValueError(f"UpConv4x4 takes [B, H, W, C] inputs, got shape {x_BxHxWxI.shape}")
    kernel = self.param("kernel", self.kernel_init, (4, 4, x_BxHxWxI.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x_BxHxWxI, kernel, bias, dtype=self.dtype)
    if self.impl == "conv":
      y = conv_transpose_4x4_s2(x, kernel)
    elif self.impl == "matmul":
      y = conv_transpose_4x4_s2_matmul(x, kernel)
    else:
      y = lax.platform_dependent(x, kernel, cpu=conv_transpose_4x4_s2_matmul, default=conv_transpose_4x4_s2)
    return y if bias is None else y + bias


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
      x = UpConv4x4(top // 2 ** (i + 1), use_bias=False, dtype=self.dtype, impl=self.upconv_impl,
                    name=f"ConvTranspose_{i}")(x)
      x = nn.relu(self._norm(train)(x))
    x = UpConv4x4(self.channels, dtype=self.dtype, impl=self.upconv_impl, name=f"ConvTranspose_{steps - 1}")(x)
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
