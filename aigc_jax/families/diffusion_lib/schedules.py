"""Noise schedules and the Gaussian forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).

Shape-generic: x is any batch [B, ...] (images [B, H, W, C], signals [B, T]); per-example schedule values are
broadcast to x's rank (`take(values, t_B, like=x)`).

Every schedule quantity is computed once in float64 numpy and only cast to float32 where a traced
function reads it: 1 - abar_t is ~1e-4 at t = 0 and ~4e-5 from 1 at t = T - 1 for the linear schedule,
and the posterior variances and log-variances lose digits in float32 (the paper's code does the same).
Timesteps are 0-based: t = 0 is the paper's t = 1.
"""
import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from aigc_jax.errors import UserError

SCHEDULES = ("linear", "scaled_linear", "cosine")


def linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
  """Ho et al. 2020: betas evenly spaced from beta_start to beta_end (1e-4 .. 0.02 for T = 1000)."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def scaled_linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
  """Latent diffusion's "linear" (Rombach et al. 2022; 0.00085 .. 0.012 for T = 1000 in its text-to-image
  configs): sqrt(beta) evenly spaced, so the betas grow quadratically from beta_start to beta_end."""
  return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=np.float64) ** 2


def cosine_betas(num_timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal 2021, eq. 17: abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2) / abar(0); betas are clipped
  at 0.999 so the last step does not divide by ~0."""
  f = lambda t: np.cos((t / num_timesteps + offset) / (1 + offset) * math.pi / 2) ** 2
  t = np.arange(num_timesteps, dtype=np.float64)
  return np.minimum(1.0 - f(t + 1) / f(t), max_beta)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Float64 numpy arrays of length T derived from the betas (index = 0-based timestep)."""
  betas: np.ndarray

  @property
  def num_timesteps(self) -> int:
    return len(self.betas)

  @property
  def alphas_cumprod(self):
    return np.cumprod(1.0 - self.betas)

  @property
  def alphas_cumprod_prev(self):
    return np.append(1.0, self.alphas_cumprod[:-1])

  @property
  def posterior_variance(self):
    """Var of q(x_{t-1} | x_t, x_0) = beta_t (1 - abar_{t-1}) / (1 - abar_t); 0 at t = 0."""
    return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

  @property
  def posterior_log_variance_clipped(self):
    # The variance is 0 at t = 0; the paper's code substitutes the t = 1 value so the log stays finite.
    v = self.posterior_variance
    return np.log(np.append(v[1], v[1:])) if len(v) > 1 else np.log(self.betas)

  @property
  def posterior_mean_coef1(self):
    """Coefficient of x_0 in the posterior mean: beta_t sqrt(abar_{t-1}) / (1 - abar_t)."""
    return self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

  @property
  def posterior_mean_coef2(self):
    """Coefficient of x_t in the posterior mean: (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)."""
    return (1.0 - self.alphas_cumprod_prev) * np.sqrt(1.0 - self.betas) / (1.0 - self.alphas_cumprod)

  def model_log_variance(self, kind: str):
    """log Var of p(x_{t-1} | x_t): 'fixedlarge' = beta_t (with the posterior value at t = 0, as the paper's
    CIFAR-10 model), 'fixedsmall' = the posterior variance (clipped at t = 0)."""
    if kind == "fixedlarge":
      v = self.posterior_variance
      return np.log(np.append(v[1], self.betas[1:])) if len(v) > 1 else np.log(self.betas)
    if kind == "fixedsmall":
      return self.posterior_log_variance_clipped
    raise UserError(f"unknown diffusion.variance {kind!r}; use 'fixedlarge' or 'fixedsmall'")

  def respace(self, timesteps) -> "Schedule":
    """The schedule restricted to an increasing subsequence of timesteps (Nichol & Dhariwal 2021, sec. 4):
    new betas 1 - abar_{t_i} / abar_{t_{i-1}} keep abar at the kept steps, so a model trained on the full
    chain samples with fewer steps."""
    abar = self.alphas_cumprod[np.asarray(timesteps)]
    return Schedule(1.0 - abar / np.append(1.0, abar[:-1]))


def shift_logsnr(betas: np.ndarray, shift: float, max_beta: float = 0.999) -> np.ndarray:
  """The betas whose abar'_t = sigmoid(logit(abar_t) + shift): every step's signal-to-noise ratio
  abar / (1 - abar) times e^shift. For data x scaled by s, q(s x_t | x_0) has the SNR of x's times s^2, so
  shift = 2 log s trains on unscaled data at the noise levels a scaled copy would see (Hoogeboom et al. 2023,
  "simple diffusion", Section 3.1, shift their cosine schedule by 2 log(64 / resolution) for large images; a
  positive shift suits quiet data such as speech, std ~0.07 against ~0.5 for images). The endpoint abar_T
  is shifted too: pair a positive shift with a schedule that ends near abar = 0 (cosine), since sampling
  starts from N(0, I). Betas clipped at `max_beta` as cosine_betas."""
  abar = np.cumprod(1.0 - betas)
  shifted = 1.0 / (1.0 + np.exp(-(np.log(abar) - np.log1p(-abar) + shift)))
  return np.minimum(1.0 - shifted / np.append(1.0, shifted[:-1]), max_beta)


def make_schedule(kind: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
                  logsnr_shift: float = 0.0) -> Schedule:
  schedule = _base_schedule(kind, num_timesteps, beta_start, beta_end)
  if not isinstance(logsnr_shift, (int, float)) or isinstance(logsnr_shift, bool) or not abs(logsnr_shift) <= 20:
    raise UserError(f"diffusion.logsnr_shift must be a number in [-20, 20] (0 = no shift), got {logsnr_shift!r}")
  return Schedule(shift_logsnr(schedule.betas, logsnr_shift)) if logsnr_shift else schedule


def _base_schedule(kind: str, num_timesteps: int, beta_start: float, beta_end: float) -> Schedule:
  if num_timesteps < 1:
    raise UserError(f"diffusion.num_timesteps must be >= 1, got {num_timesteps}")
  if kind in ("linear", "scaled_linear"):
    if not 0 < beta_start <= beta_end < 1:
      raise UserError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end} (diffusion.beta_*)")
    betas = linear_betas if kind == "linear" else scaled_linear_betas
    return Schedule(betas(num_timesteps, beta_start, beta_end))
  if kind == "cosine":
    return Schedule(cosine_betas(num_timesteps))
  raise UserError(f"unknown diffusion.schedule {kind!r}; use one of {SCHEDULES}")


def take(values: np.ndarray, t_B, like=None):
  """float64 table -> float32 values at traced timesteps: [B], or [B, 1, ..., 1] with `like`'s rank so they
  broadcast against a batch of any shape (images [B, H, W, C], signals [B, T])."""
  v_B = jnp.asarray(values, jnp.float32)[t_B]
  return v_B if like is None else v_B.reshape(v_B.shape + (1,) * (jnp.ndim(like) - 1))


def q_sample(schedule: Schedule, x0, t_B, noise):
  """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, for x0 and noise [B, ...] of any rank."""
  abar = schedule.alphas_cumprod
  return take(np.sqrt(abar), t_B, x0) * x0 + take(np.sqrt(1.0 - abar), t_B, x0) * noise


def q_posterior(schedule: Schedule, x0, xt, t_B):
  """Mean and log-variance of q(x_{t-1} | x_t, x_0)."""
  mean = take(schedule.posterior_mean_coef1, t_B, x0) * x0 + take(schedule.posterior_mean_coef2, t_B, xt) * xt
  return mean, take(schedule.posterior_log_variance_clipped, t_B, x0)
