"""The variational bound on -log p(x_0) in bits/dim (Ho et al. 2020, eq. 5), for quantised data in [-1, 1]:

  L = KL(q(x_T | x_0) || N(0, I))                          prior term, no parameters
    + sum_{t>1} KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))   one network call per t
    - log p(x_0 | x_1)                                      discretised Gaussian decoder on the data's grid

Exact (every t, not a Monte-Carlo estimate over t), so one evaluation costs T network calls per batch. The
decoder's grid is the medium's as saved (`Quantisation`): 256 levels for 8-bit images (Ho et al.'s), the
16-bit PCM levels k / 32767 for audio (bits per sample). Every mean is over all non-batch axes, so x is any
batch [B, ...].
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from aigc_jax.families.diffusion_lib import objectives
from aigc_jax.families.diffusion_lib.schedules import Schedule, q_posterior, q_sample, take

LN2 = math.log(2.0)


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


@dataclasses.dataclass(frozen=True)
class Quantisation:
  """A grid of levels in [-1, 1]: half the spacing of neighbouring levels, and the |x| beyond which x is an
  edge level (its bin extends to -inf or +inf)."""
  half_bin: float
  edge: float


IMAGES_8BIT = Quantisation(half_bin=1.0 / 255, edge=0.999)           # levels -1 + 2k/255, k = 0..255
AUDIO_16BIT = Quantisation(half_bin=0.5 / 32767, edge=1.0 - 0.5 / 32767)  # levels k/32767 (media.audio's PCM)


def discretized_gaussian_log_likelihood(x, mean, log_scale, grid: Quantisation = IMAGES_8BIT):
  """log P(x) for x on `grid` (default: the 256 levels of 8-bit images) under N(mean, e^(2 log_scale))
  integrated over x's bin; the edge bins extend to -inf and +inf. log_ndtr keeps the tails finite where a CDF
  difference underflows. A bin narrower than 1e-3 standard deviations (16-bit audio under a decoder scale of
  ~1e-2) is density x width instead: its CDF difference would vanish in float32 a few deviations out, and the
  midpoint rule is exact there to ~1e-7 relative (never the case for 8-bit images, whose bins are ~1 std)."""
  inv_std = jnp.exp(-log_scale)
  upper, lower = inv_std * (x - mean + grid.half_bin), inv_std * (x - mean - grid.half_bin)
  log_cdf_upper = log_ndtr(upper)
  log_one_minus_cdf_lower = log_ndtr(-lower)
  # log(Phi(upper) - Phi(lower)) = log Phi(upper) + log(1 - Phi(lower) / Phi(upper))
  log_delta = log_cdf_upper + jnp.log1p(-jnp.minimum(jnp.exp(log_ndtr(lower) - log_cdf_upper), 1.0 - 1e-12))
  width = upper - lower
  log_midpoint = -0.5 * jnp.square(0.5 * (upper + lower)) - 0.5 * math.log(2 * math.pi) + jnp.log(width)
  log_delta = jnp.where(width < 1e-3, log_midpoint, log_delta)
  return jnp.where(x < -grid.edge, log_cdf_upper, jnp.where(x > grid.edge, log_one_minus_cdf_lower, log_delta))


def mean_over_pixels(x_BxD):
  """Per-example mean over every non-batch axis (pixels and channels, or samples)."""
  return jnp.mean(x_BxD, axis=tuple(range(1, x_BxD.ndim)))


def prior_bpd(schedule: Schedule, x0):
  t = jnp.full((x0.shape[0],), schedule.num_timesteps - 1, jnp.int32)
  abar = schedule.alphas_cumprod
  mean = take(np.sqrt(abar), t, x0) * x0
  logvar = take(np.log(1.0 - abar), t, x0)
  return mean_over_pixels(normal_kl(mean, logvar, 0.0, 0.0)) / LN2


def vb_term_bpd(model_out, x0, xt, t_B, *, schedule, prediction, variance, clip_denoised,
                grid: Quantisation = IMAGES_8BIT):
  """The bound's term at t (0-based): a KL for t > 0, the decoder NLL at t = 0; [B] bits/dim."""
  true_mean, true_logvar = q_posterior(schedule, x0, xt, t_B)
  mean, logvar, _ = objectives.p_mean_variance(prediction, variance, schedule, model_out, xt, t_B, clip_denoised)
  kl = mean_over_pixels(normal_kl(true_mean, true_logvar, mean, logvar)) / LN2
  nll = -mean_over_pixels(discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar, grid)) / LN2
  return jnp.where(t_B == 0, nll, kl)


def bound_bpd(apply_fn, x0, example_keys_B, *, schedule, prediction, variance, clip_denoised,
              grid: Quantisation = IMAGES_8BIT):
  """Per-example bits/dim of the bound and its parts. `apply_fn(x_t, t_B) -> model output`; example key i
  draws the noise of x_t at every t via fold_in(key_i, t), so the result does not depend on the batch split."""
  b = x0.shape[0]

  def one_t(total_B, t):
    noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), x0.shape[1:]))(example_keys_B)
    t_B = jnp.full((b,), t, jnp.int32)
    xt = q_sample(schedule, x0, t_B, noise)
    term_B = vb_term_bpd(apply_fn(xt, t_B), x0, xt, t_B, schedule=schedule, prediction=prediction,
                         variance=variance, clip_denoised=clip_denoised, grid=grid)
    return total_B + term_B, term_B

  vb_B, terms_TxB = jax.lax.scan(one_t, jnp.zeros((b,), jnp.float32), jnp.arange(schedule.num_timesteps))
  prior_B = prior_bpd(schedule, x0)
  return {"bpd": vb_B + prior_B, "prior_bpd": prior_B, "decoder_bpd": terms_TxB[0]}
