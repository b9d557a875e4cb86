"""WaveNet (van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio", Sections 2.1-2.5).

Input: the previous sample's 8-bit mu-law index (0..255) at every position, as a one-hot vector (the paper's
choice). The first layer is a causal convolution of that one-hot sequence with `kernel_size` taps, which is a
sum of one embedding lookup per tap (no 256-wide matmul). Then `stacks` x `layers_per_stack` residual layers,
layer i of a stack dilated by 2^i (1, 2, ..., 2^(L-1), repeated, Section 2.1), each

    z = W_f,g *_d h + V_f,g y                    (dilated causal conv with `kernel_size` taps, + label term)
    out = tanh(z_f) * sigmoid(z_g)               (gated activation unit, Eq. 2; global conditioning, Eq. 3)
    skip += 1x1(out);   h = h + 1x1(out)          (residual and parameterised skip connections, Section 2.4)

and the head relu -> 1x1 -> relu -> 1x1 -> 256 logits over the mu-law bins (Fig. 4).

`position_frames` F > 0 adds local conditioning in the form of Eq. 5 (V_f,g * y_t added inside each gate) on a
LEARNED code y_t of (label, position t in the clip): a table of F codes per class (one class when
unconditional) spaced evenly over the `clip_samples`-sample clip and interpolated linearly between their
centres. Not in the paper (its local conditioning is on linguistic features or spectrograms): an aid for short
clips of roughly aligned words, where it tells the network where in the word it is instead of leaving that to
be inferred from the receptive field (experiments/wavenet.py:cpu measures the difference).

Two ways to run the same parameters (the same sums, tap by tap, so both give the same numbers up to the float
rounding of two matmul shapes; the generators' draws agree, tests/test_wavenet.py):
- `__call__(x_BxT, labels_B)`: every position at once (teacher forcing, the naive generator), on channel-major
  [C, B, T] activations (the fast layout for XLA:CPU's weight gradients). Each causal convolution is a sum
  over taps of a shifted matmul (pad left by k*d, drop the last k*d), not an XLA convolution, so its
  per-position sums are those of `column`.
- `column(x_B, labels_B, queues, t)`: position t only, from per-layer queues of past layer inputs (Paine et
  al. 2016, "Fast Wavenet Generation Algorithm"): layer l writes h_t into a ring buffer of its last
  (K-1)*d_l + 1 inputs and reads h_{t-k*d_l} (k = 1..K-1) from it, so one new sample costs one column of the
  network instead of the whole receptive field.
"""
from typing import Any, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from aigc_jax.models.layers import Dense, channel_matmul

MU_LAW_BINS = 256


def dilations(layers_per_stack: int, stacks: int) -> List[int]:
  """1, 2, ..., 2^(L-1), repeated `stacks` times (van den Oord et al. 2016, Section 2.1)."""
  return [2 ** i for i in range(layers_per_stack)] * stacks


def receptive_field(layers_per_stack: int, stacks: int, kernel_size: int) -> int:
  """Input positions the logits at one position depend on: the input layer's K taps plus (K-1)*d per layer.
  With inputs shifted by one sample, the prediction of sample t sees samples t - receptive_field .. t - 1."""
  return kernel_size + (kernel_size - 1) * sum(dilations(layers_per_stack, stacks))


def _shift_right(v, shift: int, axis: int):
  """v[..., t - shift, ...] at position t of `axis`, zeros before the start (the causal padding)."""
  t = v.shape[axis]
  if shift >= t:
    return jnp.zeros_like(v)
  widths = [(0, 0)] * v.ndim
  widths[axis] = (shift, 0)
  return jax.lax.slice_in_dim(jnp.pad(v, widths), 0, t, axis=axis)


class WaveNet(nn.Module):
  residual_channels: int = 64
  dilation_channels: int = 64     # channels of each of the gate's tanh and sigmoid halves
  skip_channels: int = 256
  layers_per_stack: int = 10
  stacks: int = 3
  kernel_size: int = 2
  num_classes: int = 0            # > 0: global conditioning on a class label (Eq. 3)
  position_frames: int = 0        # > 0: local conditioning on a learned (label, position) code, F per clip
  clip_samples: int = 0           # the clip length T the position code spans (needed when position_frames > 0)
  out_dim: int = MU_LAW_BINS      # logits per position
  dtype: Any = jnp.float32

  def setup(self):
    r, g, s, k = self.residual_channels, self.dilation_channels, self.skip_channels, self.kernel_size
    self.dilations = dilations(self.layers_per_stack, self.stacks)
    n = len(self.dilations)
    # Every layer's weights in one array per kind, layer first (one RNG draw each, a small init program;
    # fan-in excludes the layer axis).
    fan_in = nn.initializers.lecun_normal(batch_axis=(0,))
    # The one-hot input conv: one [256, R] table per tap, scaled so that the K-tap sum has unit variance.
    self.input_taps = self.param("input_taps", nn.initializers.normal(k ** -0.5), (k, MU_LAW_BINS, r))
    self.input_bias = self.param("input_bias", nn.initializers.zeros, (r,))
    self.gate_taps = self.param("gate_taps", fan_in, (n, k, r, 2 * g))        # [layer, tap, in, tanh|sigmoid]
    self.gate_bias = self.param("gate_bias", nn.initializers.zeros, (n, 2 * g))
    if self.num_classes:  # V_f,g of Eq. 3 as an embedding of the label, per layer
      self.label_embed = self.param("label_embed", nn.initializers.normal(1.0), (n, self.num_classes, 2 * g))
    if self.position_frames:  # V_f,g y_t of Eq. 5 folded into the learned code: [class, frame, layer, 2G]
      if self.clip_samples < 1:
        raise ValueError("WaveNet(position_frames > 0) needs clip_samples, the clip length the frames span")
      self.position_embed = self.param("position_embed", nn.initializers.normal(1.0),
                                       (max(self.num_classes, 1), self.position_frames, n, 2 * g))
    self.skip_kernel = self.param("skip_kernel", fan_in, (n, g, s))
    self.skip_bias = self.param("skip_bias", nn.initializers.zeros, (n, s))
    # The last layer's residual output would feed nothing.
    self.residual_kernel = self.param("residual_kernel", fan_in, (n - 1, g, r))
    self.residual_bias = self.param("residual_bias", nn.initializers.zeros, (n - 1, r))
    self.head_hidden = Dense(s, dtype=self.dtype)
    self.head_out = Dense(self.out_dim, dtype=self.dtype)

  def _label_terms(self, labels_B) -> list:
    """V_f,g y per layer, [B, 2G] (zeros when unconditional)."""
    if not self.num_classes:
      return [None] * len(self.dilations)
    return [jnp.take(self.label_embed[i], labels_B, axis=0).astype(self.dtype) for i in range(len(self.dilations))]

  def _position_terms(self, labels_B, t):
    """The learned local code at positions t (int array, any shape P) for each example: [B, *P, layer, 2G],
    linear between frame centres (t + 0.5) T / F - 0.5 and constant beyond the first and last; None when off."""
    if not self.position_frames:
      return None
    table_BxFxNx2G = jnp.take(self.position_embed, labels_B if self.num_classes else jnp.zeros((1,), jnp.int32),
                              axis=0)
    code = jnp.einsum("...f,bfnc->b...nc", self._hat_weights(t), table_BxFxNx2G)
    return code.astype(self.dtype)

  def _hat_weights(self, t):
    """[*P, F] weights of the frames at positions t: hat functions centred on (f + 0.5) T / F - 0.5 (a matmul
    with the table, so the gradient is one too, not a scatter-add)."""
    f = self.position_frames
    u = jnp.clip((jnp.asarray(t, jnp.float32) + 0.5) * (f / self.clip_samples) - 0.5, 0.0, f - 1.0)
    return jnp.maximum(0.0, 1.0 - jnp.abs(u[..., None] - jnp.arange(f, dtype=jnp.float32)))

  def _input_tap(self, k: int, x, channels_first: bool = False):
    """Tap k's embedding of mu-law indices x [...] as [..., R], or gathered straight into channel-major [R, ...]
    (`channels_first`: columns of the transposed table); index -1 (before the clip) is the zero one-hot."""
    if channels_first:
      e = jnp.take(self.input_taps[k].T, jnp.maximum(x, 0), axis=1)
      return jnp.where((x >= 0)[None], e, 0.0).astype(self.dtype)
    e = jnp.take(self.input_taps[k], jnp.maximum(x, 0), axis=0)
    return jnp.where((x >= 0)[..., None], e, 0.0).astype(self.dtype)

  def _gate(self, acc, i: int, label_term, position_term=None):
    z = acc + self.gate_bias[i].astype(self.dtype)
    if label_term is not None:
      z = z + (label_term[:, None] if z.ndim == 3 else label_term)
    if position_term is not None:
      z = z + position_term[..., i, :]
    zf, zg = jnp.split(z, 2, axis=-1)
    return jnp.tanh(zf) * jax.nn.sigmoid(zg)

  def _one_by_one(self, v, kernel, bias, i: int):
    return v @ kernel[i].astype(self.dtype) + bias[i].astype(self.dtype)

  def _head(self, skip, channels_first: bool = False):
    """relu -> 1x1 -> relu -> 1x1 on skip [..., S], or on channel-major skip [S, B, T] (`channels_first`: the
    first 1x1 contracts the channel axis where it lies, so no [S, B, T] -> [B, T, S] transpose)."""
    y = self.head_hidden(nn.relu(skip), channels_first=channels_first)
    return self.head_out(nn.relu(y)).astype(jnp.float32)

  def __call__(self, x_BxT, labels_B: Optional[jnp.ndarray] = None, start=0):
    """Logits [B, T, out_dim] at every position; position t depends on x[:, t - receptive_field + 1 .. t].
    `start`: the clip position of x[:, 0] (a window of a longer clip; only the position code reads it).

    The residual layers run on channel-major [C, B, T] activations: every weight gradient then contracts the
    minor (time) axis of both operands and the gate's tanh/sigmoid halves are contiguous slices, where the
    [B, T, C] layout made XLA:CPU transpose each layer's inputs and interleave the halves' gradients
    (bench/RESULTS.md "WaveNet: channel-major layers")."""
    b, t_len = x_BxT.shape
    h_RxBxT = self._input_tap(0, x_BxT, channels_first=True)
    for k in range(1, self.kernel_size):
      h_RxBxT = h_RxBxT + _shift_right(self._input_tap(k, x_BxT, channels_first=True), k, axis=2)
    h_RxBxT = h_RxBxT + self.input_bias.astype(self.dtype)[:, None, None]
    # A zero added to the first layer's output: its gradient (flax "perturbations") is d logits / d h per
    # position, which tests/test_wavenet.py uses to check causality. A no-op without that collection.
    h_RxBxT = self.perturb("input_h", h_RxBxT)
    conditioning = self._conditioning_terms(labels_B, start + jnp.arange(t_len), b)
    skip_SxBxT = 0.0
    for i, d in enumerate(self.dilations):
      w = self.gate_taps[i].astype(self.dtype)
      acc = channel_matmul(h_RxBxT, w[0])
      for k in range(1, self.kernel_size):
        acc = acc + channel_matmul(_shift_right(h_RxBxT, k * d, axis=2), w[k])
      z_2GxBxT = acc + (self.gate_bias[i].astype(self.dtype)[:, None, None] + conditioning[i])
      g = z_2GxBxT.shape[0] // 2
      out_GxBxT = jnp.tanh(z_2GxBxT[:g]) * jax.nn.sigmoid(z_2GxBxT[g:])
      skip_SxBxT = skip_SxBxT + self._channel_one_by_one(out_GxBxT, self.skip_kernel, self.skip_bias, i)
      if i < len(self.dilations) - 1:
        h_RxBxT = h_RxBxT + self._channel_one_by_one(out_GxBxT, self.residual_kernel, self.residual_bias, i)
    return self._head(skip_SxBxT, channels_first=True)

  def _channel_one_by_one(self, v_IxBxT, kernel, bias, i: int):
    return channel_matmul(v_IxBxT, kernel[i].astype(self.dtype)) + bias[i].astype(self.dtype)[:, None, None]

  def _conditioning_terms(self, labels_B, t_T, batch: int) -> list:
    """Per layer, the label and position terms of the gate in channel-major form: [2G, B, 1] or [2G, B, T]
    (0.0 when unconditional). The position code is the hat-weight matmul of `_position_terms`, per layer and
    with the time axis minor, so neither it nor its gradient needs a transpose of a [B, T, 2G] array."""
    n = len(self.dilations)
    terms = [0.0] * n
    if self.num_classes:
      label_Nx2GxB = jnp.transpose(jnp.take(self.label_embed, labels_B, axis=1), (0, 2, 1)).astype(self.dtype)
      terms = [label_Nx2GxB[i][:, :, None] for i in range(n)]
    if self.position_frames:
      weights_TxF = self._hat_weights(t_T)
      table_BxFxNx2G = jnp.take(self.position_embed, labels_B if self.num_classes else jnp.zeros((batch,), jnp.int32),
                                axis=0)
      table_Nx2GxBxF = jnp.transpose(table_BxFxNx2G, (2, 3, 0, 1)).astype(self.dtype)
      terms = [terms[i] + jnp.einsum("cbf,tf->cbt", table_Nx2GxBxF[i], weights_TxF.astype(self.dtype))
               for i in range(n)]
    return terms

  def queue_shapes(self, batch: int) -> List[Tuple[int, ...]]:
    """Shapes of the generation queues: input indices [B, K], then per layer [B, (K-1)*d + 1, R] (its inputs
    at positions t - (K-1)*d .. t: one slot more than the taps read, see `column`)."""
    k = self.kernel_size
    return [(batch, k)] + [(batch, (k - 1) * d + 1, self.residual_channels)
                           for d in dilations(self.layers_per_stack, self.stacks)]

  def column(self, x_B, labels_B, queues: list, t):
    """Logits [B, out_dim] at position t from x_B = x[:, t] and the queues of positions < t; returns
    (logits, queues with position t written). `queues` start as `empty_queues` (the causal padding)."""
    k_taps = self.kernel_size
    label_terms = self._label_terms(labels_B)
    position_terms = self._position_terms(labels_B, t)
    # Ring buffers of Q = (K-1)*d + 1 slots: input t lives at slot t mod Q, so h_{t-j*d} (j = 1..K-1) is at
    # (t - j*d) mod Q, never the slot t is written to. Each layer writes h_t first and reads its taps from the
    # written buffer, so XLA updates the loop-carried buffer in place (reading the old buffer at the slot
    # being overwritten made it copy every queue on every step: O(receptive field) work per sample).
    ring = lambda q, j_back: jax.lax.dynamic_index_in_dim(q, (t - j_back) % q.shape[1], axis=1, keepdims=False)
    write = lambda q, v: jax.lax.dynamic_update_index_in_dim(q, v, t % q.shape[1], axis=1)
    index_q = write(queues[0], x_B)
    h = self._input_tap(0, x_B)
    for k in range(1, k_taps):
      h = h + self._input_tap(k, ring(index_q, k))
    h = h + self.input_bias.astype(self.dtype)
    skip = 0.0
    layer_qs = []
    for i, d in enumerate(self.dilations):
      q = write(queues[1 + i], h.astype(queues[1 + i].dtype))
      layer_qs.append(q)
      w = self.gate_taps[i].astype(self.dtype)
      acc = h @ w[0]
      for k in range(1, k_taps):
        acc = acc + ring(q, k * d).astype(self.dtype) @ w[k]
      out = self._gate(acc, i, label_terms[i], position_terms)
      skip = skip + self._one_by_one(out, self.skip_kernel, self.skip_bias, i)
      if i < len(self.dilations) - 1:
        h = h + self._one_by_one(out, self.residual_kernel, self.residual_bias, i)
    return self._head(skip), [index_q] + layer_qs


def empty_queues(model: WaveNet, batch: int) -> list:
  """Queues before position 0: input index -1 (the zero one-hot) and zero layer inputs (the causal padding)."""
  shapes = model.queue_shapes(batch)
  return [jnp.full(shapes[0], -1, jnp.int32)] + [jnp.zeros(s, model.dtype) for s in shapes[1:]]
