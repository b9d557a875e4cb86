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

Computed for XLA:CPU's sake (same function as the stacked convolutions; measured on 2 cores, bench/RESULTS.md
"DiffWave step layout", 2026-11-27):
- Activations are channel-major, [C, B, T]: every 1x1 and dilated convolution is then one matmul
  W^T [O, I] @ x [I, B*T] whose weight gradient contracts the minor axis of both operands. In the [B, T, C]
  layout that gradient contracts the major axis, and XLA:CPU transposed the [B*T, 3C] taps and the [B*T, C]
  gated activations of every layer to run it (a fifth of the step's op time).
- The N layers are unrolled with static dilations, and each layer's outputs (h, sum of skips) pass through
  `lax.optimization_barrier`: without it XLA fuses the cheap residual chain h_k = (h_{k-1} + r_k) / sqrt(2)
  into every consumer and recomputes it from the input and all earlier outputs, so a step's cost grew
  quadratically with N. (An earlier `nn.scan` over the layers avoided that too, but its traced dilation meant
  padding every layer by the largest one and dynamic slices whose gradients were scattered into [N, ...]
  buffers.)
- The dilated convolution is one matmul of the taps [x(t - d), x(t), x(t + d)] stacked on the (major)
  channel axis, as `DilatedConv`: XLA:CPU's dilated convolution ran 1.7x slower in the same stack, and three
  matmuls of shifted inputs or one matmul with shifted outputs 1.5-1.9x slower.
"""
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from aigc_jax.models.layers import Embed, channel_matmul
from aigc_jax.models.unet import timestep_embedding

STEP_EMBED_DIM = 128     # sinusoidal encoding of t (Section 3.1)
STEP_HIDDEN_DIM = 512    # the two shared FC layers
LABEL_EMBED_DIM = 128    # d_label (Section 3.2, "in all experiments")
KERNEL_SIZE = 3

conv_init = nn.initializers.he_normal()  # the reference code's kaiming_normal_ for every conv


class Pointwise(nn.Module):
  """A 1x1 convolution (nn.Dense's params: "kernel" [I, O], "bias" [O]) of channel-major [I, B, T] -> [O, B, T]."""
  features: int
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_IxBxT):
    kernel = self.param("kernel", self.kernel_init, (x_IxBxT.shape[0], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x_IxBxT, kernel, bias, dtype=self.dtype)
    return channel_matmul(x, kernel) + bias[:, None, None]


def dilations(num_layers: int, dilation_cycle: int):
  """Dilation of each residual layer: 1, 2, ..., 2^(cycle - 1), repeated."""
  return [2 ** (i % dilation_cycle) for i in range(num_layers)]


def receptive_field(num_layers: int, dilation_cycle: int, patch_size: int = 1) -> int:
  """Samples of input one output sample depends on: (k - 1) sum_i d_i + 1 (Kong et al. 2021, Section 3.3);
  with patches of P samples, that many whole frames, P times as many samples."""
  return ((KERNEL_SIZE - 1) * sum(dilations(num_layers, dilation_cycle)) + 1) * patch_size


class DilatedConv(nn.Module):
  """nn.Conv(features, (3,), kernel_dilation=dilation, padding="SAME") on channel-major [I, B, T] -> [O, B, T]:
  out[t] = sum_k x[t + (k - 1) d] kernel[k] + bias, zero outside the clip. Params as nn.Conv's: "kernel"
  [3, I, O], "bias" [O]."""
  features: int
  dilation: int
  kernel_init: Any = conv_init
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_IxBxT):
    i, t, d = x_IxBxT.shape[0], x_IxBxT.shape[2], self.dilation
    kernel = self.param("kernel", self.kernel_init, (KERNEL_SIZE, i, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x_IxBxT, kernel, bias, dtype=self.dtype)
    padded = jnp.pad(x, ((0, 0), (0, 0), (d, d)))
    taps_3IxBxT = jnp.concatenate([padded[..., :t], x, padded[..., 2 * d:]], axis=0)  # x[t - d], x[t], x[t + d]
    return channel_matmul(taps_3IxBxT, kernel.reshape(KERNEL_SIZE * i, self.features)) + bias[:, None, None]


class ResidualLayer(nn.Module):
  """One residual layer: (h, sum of skips) -> (h', sum of skips'), channel-major [C, B, T]."""
  channels: int
  dilation: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h_CxBxT, skips_CxBxT, step_BxE, label_BxL):
    c = self.channels
    y = h_CxBxT + nn.Dense(c, dtype=self.dtype, name="step_projection")(step_BxE).T[:, :, None]
    y = DilatedConv(2 * c, self.dilation, dtype=self.dtype, name="dilated_conv")(y)
    if label_BxL is not None:
      label_2CxB = nn.Dense(2 * c, kernel_init=conv_init, dtype=self.dtype, name="label_projection")(label_BxL).T
      y = y + label_2CxB[:, :, None]
    gated_CxBxT = jnp.tanh(y[:c]) * nn.sigmoid(y[c:])
    out = Pointwise(2 * c, kernel_init=conv_init, dtype=self.dtype, name="output_projection")(gated_CxBxT)
    residual_CxBxT, skip_CxBxT = out[:c], out[c:]
    # The barrier keeps XLA from fusing the residual chain into later layers (module docstring).
    return lax.optimization_barrier(((h_CxBxT + residual_CxBxT) / math.sqrt(2.0), skips_CxBxT + skip_CxBxT))


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
    frames_PxBxF = x_BxT.astype(self.dtype).reshape(b, t // p, p).transpose(2, 0, 1)
    h_CxBxF = nn.relu(Pointwise(c, kernel_init=conv_init, dtype=self.dtype, name="input_projection")(frames_PxBxF))
    step = timestep_embedding(t_B, STEP_EMBED_DIM)
    step = nn.swish(nn.Dense(STEP_HIDDEN_DIM, dtype=self.dtype, name="step_fc1")(step))
    step_BxE = nn.swish(nn.Dense(STEP_HIDDEN_DIM, dtype=self.dtype, name="step_fc2")(step))
    label_BxL = None
    if self.num_classes:
      if labels_B is None:
        raise ValueError("a class-conditional DiffWave needs labels (use index num_classes for 'no class')")
      label_BxL = Embed(self.num_classes + 1, LABEL_EMBED_DIM, dtype=self.dtype, name="label_embedding")(labels_B)

    skips_CxBxF = jnp.zeros_like(h_CxBxF)
    for i, dilation in enumerate(dilations(self.num_layers, self.dilation_cycle)):
      h_CxBxF, skips_CxBxF = ResidualLayer(c, dilation, self.dtype, name=f"layer_{i}")(
          h_CxBxF, skips_CxBxF, step_BxE, label_BxL)
    out = skips_CxBxF / math.sqrt(self.num_layers)
    out = nn.relu(Pointwise(c, kernel_init=conv_init, dtype=self.dtype, name="skip_projection")(out))
    out = Pointwise(p, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="output_projection")(out)
    return out.transpose(1, 2, 0).reshape(b, t).astype(jnp.float32)  # [P, B, F] -> [B, F, P] -> [B, T]
