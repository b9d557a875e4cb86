"""WaveNet's pieces outside the network: 8-bit mu-law companding, the mixture-of-logistics output distribution
and the two compiled generators.

Mu-law (ITU-T G.711; van den Oord et al. 2016, Section 2.2, Eq. 1): f(x) = sign(x) ln(1 + mu|x|) / ln(1 + mu),
mu = 255, then 256 equal bins of f over [-1, 1]: index i has centre f_i = 2i/255 - 1, so encode(-1) = 0,
encode(0) = 128 and encode(1) = 255, and f(decode(encode(x))) is within 1/255 of f(x) (half a bin).

Generators (both one `lax.scan` over time inside jit, one categorical draw per sample and step):
- cached (Paine et al. 2016, "Fast Wavenet Generation Algorithm"): `WaveNet.column` with per-layer queues,
  O(layers) work per new sample;
- naive: the full network over the last receptive_field inputs (the whole prefix while it is shorter, in a
  fixed-size window so shapes stay static) for every new sample, O(receptive field x layers) per sample.
Sample t of example b draws with fold_in(key_b, t) from the same logits (up to float rounding of the two
evaluation orders), so both give the same mu-law indices; tests/test_wavenet.py checks it.
With a guidance scale s != 1 (classifier-free guidance, Ho & Salimans 2022, on the logits as for the
autoregressive code prior) every step runs the network on 2B rows, the labels and then the null class, over
the same drawn samples, and draws from uncond + s (cond - uncond).
"""
import math

import jax
import jax.numpy as jnp

from aigc_jax.families.token_sampling_lib import guided_logits
from aigc_jax.models.wavenet import MU_LAW_BINS, WaveNet, empty_queues, receptive_field

MU = MU_LAW_BINS - 1
# The input before the first sample: the mu-law index of silence (encode(0.0)).
START_INDEX = MU_LAW_BINS // 2


def mu_law_compand(x):
  """f(x) = sign(x) ln(1 + mu|x|) / ln(1 + mu) on [-1, 1] (x is clipped there first)."""
  x = jnp.clip(jnp.asarray(x, jnp.float32), -1.0, 1.0)
  return jnp.sign(x) * jnp.log1p(MU * jnp.abs(x)) / math.log1p(MU)


def mu_law_encode(x):
  """Float audio in [-1, 1] -> int32 mu-law indices 0..255 (the nearest bin centre of f(x))."""
  f = mu_law_compand(x)
  return jnp.clip(jnp.floor((f + 1.0) / 2.0 * MU + 0.5), 0, MU).astype(jnp.int32)


def mu_law_decode(index):
  """Mu-law indices -> float audio in [-1, 1]: the inverse of f at the bin centre 2i/255 - 1."""
  f = (2.0 * jnp.asarray(index, jnp.float32) - MU) / MU  # exact numerator: no cancellation near index 128
  return jnp.sign(f) * jnp.expm1(jnp.abs(f) * math.log1p(MU)) / MU


def teacher_forcing_inputs(targets_BxT):
  """Inputs x[:, t] = targets[:, t - 1], x[:, 0] = silence: position t predicts sample t from samples < t."""
  start = jnp.full(targets_BxT[:, :1].shape, START_INDEX, targets_BxT.dtype)
  return jnp.concatenate([start, targets_BxT[:, :-1]], axis=1)


# The discretised mixture of logistics (Salimans et al. 2017, "PixelCNN++", Section 2.1, Eq. 2) over the same 256
# mu-law bins: the network outputs K mixture logits, K means and K log scales per position (in that order), and
# bin i of companded centre f_i gets the mixture's probability mass on [f_i - 1/255, f_i + 1/255], the two end
# bins the tails beyond them. Log scales are clamped below at -7 (PixelCNN++'s bound).
MIN_LOG_SCALE = -7.0


def logistic_mixture_log_probs(params_Nx3K, index_N):
  """log P(bin index) [N] under the mixtures params [N, 3K] (any leading shape N, index of the same shape)."""
  k = params_Nx3K.shape[-1] // 3
  logit_pi, means, log_scales = jnp.split(params_Nx3K.astype(jnp.float32), [k, 2 * k], axis=-1)
  log_scales = jnp.maximum(log_scales, MIN_LOG_SCALE)
  index = index_N[..., None]
  centred = (2.0 * index.astype(jnp.float32) - MU) / MU - means
  inv_scale = jnp.exp(-log_scales)
  upper, lower = inv_scale * (centred + 1.0 / MU), inv_scale * (centred - 1.0 / MU)
  log_cdf_upper = upper - jax.nn.softplus(upper)       # log sigmoid(upper): the first bin's mass
  log_survival_lower = -jax.nn.softplus(lower)         # log (1 - sigmoid(lower)): the last bin's
  mass = jax.nn.sigmoid(upper) - jax.nn.sigmoid(lower)
  # Where the mass underflows (a sharp component far from the bin) the density at the centre times the bin
  # width stands in, as in PixelCNN++; both branches stay finite so the gradient through `where` does too.
  middle = inv_scale * centred
  log_density = middle - log_scales - 2.0 * jax.nn.softplus(middle) + math.log(2.0 / MU)
  log_mass = jnp.where(mass > 1e-5, jnp.log(jnp.maximum(mass, 1e-12)), log_density)
  log_bin = jnp.where(index == 0, log_cdf_upper, jnp.where(index == MU, log_survival_lower, log_mass))
  return jax.nn.logsumexp(jax.nn.log_softmax(logit_pi, axis=-1) + log_bin, axis=-1)


def logistic_mixture_bin_logits(params_Nx3K):
  """log P(bin) for every bin, [N, 256]: the mixture as a categorical, for sampling (temperature, guidance and
  the draw then act as on the softmax's logits, and the training loss is one of these entries)."""
  bins = jnp.arange(MU_LAW_BINS, dtype=jnp.int32)
  expanded = jnp.broadcast_to(params_Nx3K[..., None, :], params_Nx3K.shape[:-1] + (MU_LAW_BINS, params_Nx3K.shape[-1]))
  return logistic_mixture_log_probs(expanded, jnp.broadcast_to(bins, params_Nx3K.shape[:-1] + (MU_LAW_BINS,)))


def pick(logits_BxV, keys_B, t, temperature: float):
  """Sample t of each example: categorical(logits / temperature) with key fold_in(key_b, t); argmax at 0."""
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  step_keys_B = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys_B)
  return jax.vmap(lambda k, l: jax.random.categorical(k, l / temperature))(step_keys_B, logits_BxV).astype(jnp.int32)


def make_generate(model: WaveNet, temperature: float, guidance_scale: float = 1.0, null_label: int = -1,
                  bin_logits=lambda out_NxV: out_NxV):
  """generate(params, keys_B, labels_B, length, cached=True) -> int32 mu-law indices [B, length]. With
  guidance_scale != 1 the model must know the class `null_label` (trained with label dropout). `bin_logits`
  maps the network's outputs at one position to logits over the 256 bins (identity for the softmax head,
  `logistic_mixture_bin_logits` for the mixture)."""
  rf = receptive_field(model.layers_per_stack, model.stacks, model.kernel_size)
  guided = guidance_scale != 1.0

  def rows(v_B):
    """The network's batch: the B rows, twice (for the conditional and null branches) when guided."""
    return jnp.concatenate([v_B, v_B]) if guided else v_B

  def combine(out_NxV, b):
    logits_NxV = bin_logits(out_NxV)
    return guided_logits(logits_NxV[:b], logits_NxV[b:], guidance_scale) if guided else logits_NxV

  def generate(params, keys_B, labels_B, length: int, cached: bool = True):
    b = keys_B.shape[0]
    variables = {"params": params}
    if guided:
      labels_B = jnp.concatenate([labels_B, jnp.full_like(labels_B, null_label)])
    if cached:
      def step(carry, t):
        x_B, queues = carry
        out_NxV, queues = model.apply(variables, rows(x_B), labels_B, queues, t, method=WaveNet.column)
        next_B = pick(combine(out_NxV, b), keys_B, t, temperature)
        return (next_B, queues), next_B

      carry = (jnp.full((b,), START_INDEX, jnp.int32), empty_queues(model, 2 * b if guided else b))
      _, index_TxB = jax.lax.scan(step, carry, jnp.arange(length, dtype=jnp.int32))
      return index_TxB.T

    window = min(rf, length)

    def naive_step(inputs_BxT1, t):
      # inputs[:, t] = sample t - 1 (START_INDEX at 0); one extra slot so the last write stays in bounds.
      start = jnp.clip(t - window + 1, 0, length - window)
      window_BxW = jax.lax.dynamic_slice_in_dim(inputs_BxT1, start, window, axis=1)
      out_NxWxV = model.apply(variables, rows(window_BxW), labels_B, start)
      out_NxV = jax.lax.dynamic_index_in_dim(out_NxWxV, t - start, axis=1, keepdims=False)
      next_B = pick(combine(out_NxV, b), keys_B, t, temperature)
      return jax.lax.dynamic_update_index_in_dim(inputs_BxT1, next_B, t + 1, axis=1), next_B

    inputs_BxT1 = jnp.full((b, length + 1), START_INDEX, jnp.int32)
    _, index_TxB = jax.lax.scan(naive_step, inputs_BxT1, jnp.arange(length, dtype=jnp.int32))
    return index_TxB.T

  return generate
