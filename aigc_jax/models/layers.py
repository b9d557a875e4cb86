"""Layers shared by several models.

`UpConv4x4` is `nn.ConvTranspose(out, (4, 4), strides=(2, 2), padding="SAME")` (DCGAN's generator, the
VQ-VAE decoder) with the same parameters ("kernel" [4, 4, in, out], "bias") and the same function, but
computed on CPU as one matmul and an overlap-add. XLA:CPU's kernel gradient of a transposed convolution
(the convolution autodiff produces for it) runs ~10-20x slower than that matmul, which made our DCGAN step
half as fast as PyTorch's on 2 cores; GPU and TPU keep the convolution (bench/RESULTS.md has the numbers).

`Dense` is `nn.Dense` (same parameters, same function) whose weight gradient is computed as (g^T x)^T, the
upstream gradient as the transposed LEFT operand: for dW = x^T g, XLA:CPU transposed the [N, M] gradient into
a copy first, fused with the elementwise op that produced it (GELU's backward in the GPT MLP), at a fraction of
memory speed; ~20% of the GPT cpu step (bench/RESULTS.md "GPT step: weight gradients").

`example_dropout` is dropout whose mask row for an example depends only on (the call site's key, the example's
index in the global batch), so a data-parallel step draws the same masks on 1 or N devices without vmapping
the model over examples (2x slower on CPU; ARCHITECTURE.md "Pitfalls").

`Embed` is `nn.Embed` (same parameter, same lookup values) whose lookup runs in float32 and is cast after, so
its gradient (every token's cotangent summed into its row) accumulates in float32. nn.Embed casts the table
first, so with dtype=bfloat16 that sum ran in bfloat16: on a 64 x 256 batch of tiny Shakespeare the most
frequent character's row gradient was 5.9% off (0.17% this way, the cotangent's own rounding; bench/RESULTS.md).
Off CPU, small tables (characters, bytes, VQ codes, class labels) are looked up as a one-hot matmul: the
gather's gradient is a scatter-add into few rows, each hit thousands of times per batch, which GPUs serialise
on atomics (a compare-and-swap loop for bf16, and for float32 too in jaxlib 0.10.2-0.11.0: openxla/xla#26371,
jax-ml/jax#38806); the one-hot product's gradient is a matmul (float32 accumulation, rounded to `dtype` once).
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

UPCONV_IMPLS = ("auto", "conv", "matmul")


EMBED_LOOKUPS = ("auto", "gather", "one_hot")
ONE_HOT_MAX_ROWS = 2048  # one-hot costs 4 * rows * width FLOPs per token (lookup and gradient), in `dtype`


def embed_one_hot(table_VxD, ids, dtype=None):
  """table[ids] as one_hot(ids) @ table in `dtype` (default: the table's): the same values (one nonzero term per
  row, at full precision), and a gradient that is a matmul instead of a scatter-add. On GPUs and TPUs a bf16
  matmul accumulates in float32, so the table's gradient is rounded to bf16 once, like every Dense kernel's
  gradient in bf16 training, rather than summed in bf16."""
  dtype = dtype or table_VxD.dtype
  one_hot = jax.nn.one_hot(ids, table_VxD.shape[0], dtype=dtype)
  return jnp.dot(one_hot, table_VxD.astype(dtype), precision=lax.Precision.HIGHEST)


class Embed(nn.Embed):
  """nn.Embed whose gradient is not summed in bf16 (module docstring). `lookup`: "gather" (jnp.take from the
  float32 table, cast to `dtype` after), "one_hot" (`embed_one_hot`), "auto": one-hot for tables of at most
  ONE_HOT_MAX_ROWS rows when the program is lowered for a GPU or TPU, gather otherwise."""
  lookup: str = "auto"

  def __call__(self, inputs):
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError(f"Embed takes integer ids, got {inputs.dtype}")
    if self.lookup not in EMBED_LOOKUPS:
      raise ValueError(f"Embed lookup={self.lookup!r}; choose one of {EMBED_LOOKUPS}")
    dtype = self.dtype or self.embedding.dtype
    gather = lambda table, ids: jnp.take(table, ids, axis=0).astype(dtype)
    one_hot = functools.partial(embed_one_hot, dtype=dtype)
    if self.lookup == "one_hot":
      return one_hot(self.embedding, inputs)
    if self.lookup == "auto" and self.num_embeddings <= ONE_HOT_MAX_ROWS:
      return lax.platform_dependent(self.embedding, inputs, cpu=gather, default=one_hot)
    return gather(self.embedding, inputs)


def example_dropout(module: nn.Module, rate: float, x, train: bool, example_ids_B=None):
  """Inverted dropout of `x` [B, ...] from inside `module`'s compact method. With `example_ids_B` (int [B], e.g.
  parallel.example_ids) row b's mask is drawn from fold_in(module.make_rng("dropout"), example_ids_B[b]);
  without, from the "dropout" stream for the whole array (nn.Dropout)."""
  if not train or rate == 0.0:
    return x
  if example_ids_B is None:
    return nn.Dropout(rate)(x, deterministic=False)
  site_key = module.make_rng("dropout")  # differs per call site: flax folds in the module path and a counter
  keep = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(site_key, i), 1.0 - rate, x.shape[1:]))(
      example_ids_B)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)


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
  kernel_init: Any = nn.initializers.lecun_normal()  # nn.ConvTranspose's default
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


def channel_matmul(x_IxBxT, kernel_IxO):
  """A 1x1 convolution of channel-major activations: [O, B, T] = kernel^T @ x over the leading axis
  (DiffWave, WaveNet: with the time axis minor, the weight gradient contracts it in both operands)."""
  i, b, t = x_IxBxT.shape
  return jnp.einsum("io,in->on", kernel_IxO, x_IxBxT.reshape(i, b * t)).reshape(-1, b, t)


@jax.custom_vjp
def matmul_rows(x_NxK, w_KxM):
  """x @ w for 2-D x, with the weight gradient as (g^T x)^T (see the module docstring)."""
  return x_NxK @ w_KxM


def _matmul_rows_fwd(x_NxK, w_KxM):
  return x_NxK @ w_KxM, (x_NxK, w_KxM)


def _matmul_rows_bwd(residuals, g_NxM):
  x_NxK, w_KxM = residuals
  dw_MxK = lax.dot_general(g_NxM, x_NxK, (((0,), (0,)), ((), ())))
  return g_NxM @ w_KxM.T, dw_MxK.T


matmul_rows.defvjp(_matmul_rows_fwd, _matmul_rows_bwd)


class Dense(nn.Module):
  """nn.Dense over the last axis (params "kernel" [in, out], "bias" [out]) through `matmul_rows`."""
  features: int
  use_bias: bool = True
  dtype: Optional[Any] = None
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x, channels_first: bool = False):
    """x [..., in] -> [..., out]; `channels_first`: x is [in, ...] (channel-major activations) and the product
    contracts its leading axis directly, [in, ...] -> [..., out], with no transpose of x."""
    in_features = x.shape[0] if channels_first else x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (in_features, self.features), jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if channels_first:
      y = lax.dot_general(x.reshape(in_features, -1), kernel, (((0,), (0,)), ((), ())))
      y = y.reshape(x.shape[1:] + (self.features,))
    else:
      y = matmul_rows(x.reshape(-1, x.shape[-1]), kernel).reshape(x.shape[:-1] + (self.features,))
    return y if bias is None else y + bias
