"""What the network predicts (eps, x0 or v) and the training loss on it.

All three parametrisations describe the same denoiser; `to_x0_and_eps` converts any of them back so the
samplers and the bound are written once. With prediction 'eps' and weighting 'simple' the loss is Ho et
al.'s L_simple, ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2 with t uniform.
"""
import jax.numpy as jnp
import numpy as np

from aigc_jax.errors import UserError
from aigc_jax.families.diffusion_lib.schedules import Schedule, take

PREDICTIONS = ("eps", "x0", "v")
WEIGHTINGS = ("simple", "min_snr")


def check(prediction: str, weighting: str):
  if prediction not in PREDICTIONS:
    raise UserError(f"unknown diffusion.prediction {prediction!r}; use one of {PREDICTIONS}")
  if weighting not in WEIGHTINGS:
    raise UserError(f"unknown diffusion.loss_weighting {weighting!r}; use one of {WEIGHTINGS}")


def training_target(prediction: str, schedule: Schedule, x0, noise, t_B):
  if prediction == "eps":
    return noise
  if prediction == "x0":
    return x0
  abar = schedule.alphas_cumprod  # v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022)
  return take(np.sqrt(abar), t_B, x0) * noise - take(np.sqrt(1.0 - abar), t_B, x0) * x0


def to_x0_and_eps(prediction: str, schedule: Schedule, model_out, xt, t_B):
  """(x0_hat, eps_hat) implied by the network output at x_t."""
  abar = schedule.alphas_cumprod
  if prediction == "eps":
    x0 = take(np.sqrt(1.0 / abar), t_B, xt) * xt - take(np.sqrt(1.0 / abar - 1.0), t_B, xt) * model_out
    return x0, model_out
  if prediction == "x0":
    eps = (xt - take(np.sqrt(abar), t_B, xt) * model_out) / take(np.sqrt(1.0 - abar), t_B, xt)
    return model_out, eps
  s, s1 = take(np.sqrt(abar), t_B, xt), take(np.sqrt(1.0 - abar), t_B, xt)
  return s * xt - s1 * model_out, s1 * xt + s * model_out


def eps_from_x0(schedule: Schedule, x0, xt, t_B):
  abar = schedule.alphas_cumprod
  return (take(np.sqrt(1.0 / abar), t_B, xt) * xt - x0) / take(np.sqrt(1.0 / abar - 1.0), t_B, xt)


def loss_weight(prediction: str, weighting: str, schedule: Schedule, t_B, min_snr_gamma: float = 5.0):
  """Per-example weight [B]. 'min_snr' (Hang et al. 2023) caps the effective x0-space weight at gamma."""
  if weighting == "simple":
    return jnp.ones(t_B.shape, jnp.float32)
  snr = schedule.alphas_cumprod / (1.0 - schedule.alphas_cumprod)
  capped = np.minimum(snr, min_snr_gamma)
  per_target = {"eps": capped / snr, "x0": capped, "v": capped / (snr + 1.0)}[prediction]
  return jnp.asarray(per_target, jnp.float32)[t_B]


def loss(prediction, weighting, schedule, model_out, x0, noise, t_B, min_snr_gamma=5.0):
  """Weighted mean-squared error, averaged over every non-batch axis (pixels, samples) then over the batch."""
  target = training_target(prediction, schedule, x0, noise, t_B)
  mse_B = jnp.mean(jnp.square(model_out - target), axis=tuple(range(1, x0.ndim)))
  return jnp.mean(loss_weight(prediction, weighting, schedule, t_B, min_snr_gamma) * mse_B)


def p_mean_variance(prediction, variance, schedule, model_out, xt, t_B, clip_denoised: float):
  """Mean, log-variance and x0_hat of the reverse step p(x_{t-1} | x_t): the posterior q(x_{t-1} | x_t, x0)
  with x0 replaced by the network's estimate (clipped to the data range when asked), fixed variance.
  `clip_denoised`: False/0 = no clipping, else the data range's bound (True = 1: data in [-1, 1])."""
  x0, _ = to_x0_and_eps(prediction, schedule, model_out, xt, t_B)
  if clip_denoised:
    x0 = jnp.clip(x0, -float(clip_denoised), float(clip_denoised))
  mean = take(schedule.posterior_mean_coef1, t_B, xt) * x0 + take(schedule.posterior_mean_coef2, t_B, xt) * xt
  return mean, take(schedule.model_log_variance(variance), t_B, xt), x0
