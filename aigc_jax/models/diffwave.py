"""DiffWave's noise predictor eps_theta(x_t, t) (Kong, Ping, Huang, Zhao & Catanzaro, ICLR 2021, Section 3,
Figure 2 and Appendix C): a non-causal (bidirectional) dilated convolution network on raw waveforms.

  x_BxT --1x1 conv, ReLU--> h_BxTxC
        --N residual layers, dilation 2^(i mod cycle):
            y = h + FC_i(step embedding)            (broadcast over time)
            y = dilated conv k=3 (C -> 2C)(y) [+ Conv1x1_i(label embedding)]
            y = tanh(y[:C]) * sigmoid(y[C:])        (gated unit)
            residual, skip = split(Conv1x1 (C -> 2C)(y));  h = (h + residual) / sqrt(2)
        --sum of the N skips / sqrt(N) --1x1 conv, ReLU--> --1x1 conv (zero-initialised)--> eps_BxT

Diffusion-step embedding (Section 3.1): a 128-dimensional sinusoidal encoding of t, two fully connected
layers of 512 with swish shared by every layer, then a layer-specific FC to C channels. Eq. 8 of the paper
writes the frequencies as 10^(4j/63); the authors' SC09 code (github.com/philsyn/DiffWave-unconditional,
util.calc_diffusion_step_embedding) uses 10^(-4j/63), the transformer convention, which we follow (it is
`models.unet.timestep_embedding` at 128 dimensions): it varies smoothly in t, so the fractional steps of fast
sampling are evaluated directly rather than by interpolating a table.

Global conditioner (Section 3.2): a label embedding of d_label = 128 shared by all layers, mapped by a
layer-specific Conv1x1 to 2C channels and added as a bias after each dilated convolution. Index
`num_classes` is the null class that classifier-free guidance trains with label dropout (as the U-Net's).

Receptive field (Section 3.3): r = (k - 1) sum_i d_i + 1 = 2 * sum_i 2^(i mod cycle) + 1 samples
(`receptive_field`); the SC09 model's 36 layers with cycle 12 give r = 24,571 (1.54 s at 16 kHz). Output
position i sees inputs i - (r - 1)/2 .. i + (r - 1)/2 (zero padding beyond the clip); the network has no
downsampling, so any clip length works.

Computed for XLA:CPU's sake (same function as the stacked convolutions, measured on 2 cores):
- The N layers are one `nn.scan` (parameters stacked [N, ...]) with the dilation a scanned integer: unrolled,
  XLA fuses the cheap residual chain h_k = (h_{k-1} + r_k) / sqrt(2) into every consumer and recomputes it
  from the input and all earlier outputs, so a step's cost grew quadratically with N (16 layers of a C = 32
  stack on [16, 8000] clips: 1.27 s per layer against 0.17 s for one, single-threaded). A scanned layer costs
  the same at any depth, and compiles once whatever N.
- The dilated convolution is one matmul of the taps [x(t - d), x(t), x(t + d)] (dynamic slices of the clip
  zero-padded by the largest dilation), as `DilatedConv`; XLA:CPU's convolution inside a loop ran ~10x slower.
- The 1x1 convolutions' weight gradients are written out (`pointwise`): autodiff's own transpose of that
  dot made XLA:CPU copy the [B*T, O] cotangent and run a slow strided dot (130 ms against 34 ms for one
  C = 32 -> 64 layer on [16, 8000] clips).
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from aigc_jax.models.unet import timestep_embedding

STEP_EMBED_DIM = 128     # sinusoidal encoding of t (Section 3.1)
STEP_HIDDEN_DIM = 512    # the two shared FC layers
LABEL_EMBED_DIM = 128    # d_label (Section 3.2, "in all experiments")
KERNEL_SIZE = 3

conv_init = nn.initializers.he_normal()  # the reference code's kaiming_normal_ for every conv


@jax.custom_vjp
def pointwise(x_BxTxI, kernel_IxO):
  """x @ kernel over the last axis (a 1x1 convolution)."""
  return jnp.einsum("bti,io->bto", x_BxTxI, kernel_IxO)


def _pointwise_fwd(x_BxTxI, kernel_IxO):
  return pointwise(x_BxTxI, kernel_IxO), (x_BxTxI, kernel_IxO)


def _pointwise_bwd(residuals, g_BxTxO):
  x_BxTxI, kernel_IxO = residuals
  return jnp.einsum("bto,io->bti", g_BxTxO, kernel_IxO), jnp.einsum("bti,bto->io", x_BxTxI, g_BxTxO)


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


class Pointwise(nn.Module):
  """nn.Dense on [B, T, I] (params "kernel" [I, O] and "bias" [O]) with `pointwise`'s weight gradient."""
  features: int
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxI):
    kernel = self.param("kernel", self.kernel_init, (x_BxTxI.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x_BxTxI, kernel, bias, dtype=self.dtype)
    return pointwise(x, kernel) + bias


def dilations(num_layers: int, dilation_cycle: int):
  """Dilation of each residual layer: 1, 2, ..., 2^(cycle - 1), repeated."""
  return [2 ** (i % dilation_cycle) for i in range(num_layers)]


def receptive_field(num_layers: int, dilation_cycle: int, patch_size: int = 1) -> int:
  """Samples of input one output sample depends on: (k - 1) sum_i d_i + 1 (Kong et al. 2021, Section 3.3);
  with patches of P samples, that many whole frames, P times as many samples."""
  return ((KERNEL_SIZE - 1) * sum(dilations(num_layers, dilation_cycle)) + 1) * patch_size


class DilatedConv(nn.Module):
  """nn.Conv(features, (3,), kernel_dilation=d, padding="SAME") on [B, T, I] with the dilation d a traced
  integer <= max_dilation (so a scan over layers can carry it): out[t] = sum_k x[t + (k - 1) d] kernel[k]
  + bias, zero outside the clip. Params as nn.Conv's: "kernel" [3, I, O], "bias" [O]."""
  features: int
  max_dilation: int
  kernel_init: Any = conv_init
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxI, dilation):
    t, i = x_BxTxI.shape[1], x_BxTxI.shape[2]
    kernel = self.param("kernel", self.kernel_init, (KERNEL_SIZE, i, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x_BxTxI, kernel, bias, dtype=self.dtype)
    pad = self.max_dilation
    padded = jnp.pad(x, ((0, 0), (pad, pad), (0, 0)))
    left = lax.dynamic_slice_in_dim(padded, pad - dilation, t, axis=1)    # x[t - d]
    right = lax.dynamic_slice_in_dim(padded, pad + dilation, t, axis=1)   # x[t + d]
    taps_BxTx3I = jnp.concatenate([left, x, right], axis=-1)
    return pointwise(taps_BxTx3I, kernel.reshape(KERNEL_SIZE * i, self.features)) + bias


class ResidualLayer(nn.Module):
  """One residual layer; scanned over the N layers, carrying (h, sum of skips)."""
  channels: int
  max_dilation: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, carry, dilation, step_BxE, label_BxL):
    h_BxTxC, skips_BxTxC = carry
    c = self.channels
    y = h_BxTxC + nn.Dense(c, dtype=self.dtype, name="step_projection")(step_BxE)[:, None, :]
    y = DilatedConv(2 * c, self.max_dilation, dtype=self.dtype, name="dilated_conv")(y, dilation)
    if label_BxL is not None:
      y = y + nn.Dense(2 * c, kernel_init=conv_init, dtype=self.dtype, name="label_projection")(label_BxL)[:, None, :]
    gated_BxTxC = jnp.tanh(y[..., :c]) * nn.sigmoid(y[..., c:])
    out = Pointwise(2 * c, kernel_init=conv_init, dtype=self.dtype, name="output_projection")(gated_BxTxC)
    residual_BxTxC, skip_BxTxC = out[..., :c], out[..., c:]
    return ((h_BxTxC + residual_BxTxC) / math.sqrt(2.0), skips_BxTxC + skip_BxTxC), None


class DiffWave(nn.Module):
  residual_channels: int = 64   # C
  num_layers: int = 30          # N
  dilation_cycle: int = 10      # dilations 1 .. 2^(cycle - 1)
  num_classes: int = 0          # 0: unconditional; else labels in [0, num_classes], num_classes = null class
  patch_size: int = 1           # P: samples per network frame (1 = the paper; see `DiffWave.__call__`)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxT, t_B, labels_B=None, *, train: bool = False):
    """eps_theta(x_t, t) [B, T] for x_t [B, T] and (possibly fractional) steps t_B. `train` is accepted for the
    diffusion family's calling convention; the network has no dropout."""
    del train
    c, p = self.residual_channels, self.patch_size
    b, t = x_BxT.shape
    if t % p:
      raise ValueError(f"clip length {t} is not a multiple of patch_size {p}")
    # Patching (not in the paper): P consecutive samples form one frame, so the layers run at 1/P of the
    # sample rate and every dilation (and the receptive field) spans P times as many samples.
    h = Pointwise(c, kernel_init=conv_init, dtype=self.dtype, name="input_projection")(
        x_BxT.astype(self.dtype).reshape(b, t // p, p))
    h_BxTxC = nn.relu(h)
    step = timestep_embedding(t_B, STEP_EMBED_DIM)
    step = nn.swish(nn.Dense(STEP_HIDDEN_DIM, dtype=self.dtype, name="step_fc1")(step))
    step_BxE = nn.swish(nn.Dense(STEP_HIDDEN_DIM, dtype=self.dtype, name="step_fc2")(step))
    label_BxL = None
    if self.num_classes:
      if labels_B is None:
        raise ValueError("a class-conditional DiffWave needs labels (use index num_classes for 'no class')")
      label_BxL = nn.Embed(self.num_classes + 1, LABEL_EMBED_DIM, dtype=self.dtype, name="label_embedding")(labels_B)

    dilations_N = dilations(self.num_layers, self.dilation_cycle)
    layers = nn.scan(ResidualLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                     in_axes=(0, nn.broadcast, nn.broadcast), length=self.num_layers)
    (_, skips_BxTxC), _ = layers(c, max(dilations_N), self.dtype, name="layers")(
        (h_BxTxC, jnp.zeros_like(h_BxTxC)), jnp.asarray(dilations_N, jnp.int32), step_BxE, label_BxL)
    out = skips_BxTxC / math.sqrt(self.num_layers)
    out = nn.relu(Pointwise(c, kernel_init=conv_init, dtype=self.dtype, name="skip_projection")(out))
    out = Pointwise(p, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="output_projection")(out)
    return out.reshape(b, t).astype(jnp.float32)
