"""Reverse-process samplers, each a single `lax.fori_loop` (one compiled program, no Python loop over t).

Both run on a subsequence of the T training timesteps (`sampling_timesteps`): the schedule is respaced to
it (Nichol & Dhariwal 2021), so ancestral DDPM with fewer steps and DDIM share one code path; with all T
steps the respaced schedule is the original one.

`denoise_fn(x_t, t_B) -> network output` is evaluated at the ORIGINAL timestep of each kept step (what the
network was trained on); guidance, conditioning and parameters live inside it. Per-step noise for example
i is normal(fold_in(key_i, step)), so a sample does not depend on how the batch is split across devices.
"""
import jax
import jax.numpy as jnp
import numpy as np

from aigc_jax.families.diffusion_lib import objectives
from aigc_jax.families.diffusion_lib.schedules import Schedule, take

SAMPLERS = ("ddpm", "ddim")


def sampling_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
  """`steps` evenly strided timesteps 0, k, 2k, ... with k = T // steps (DDIM's 'uniform'
  skip); steps = 0 or T means every timestep."""
  if steps in (0, num_timesteps):
    return np.arange(num_timesteps)
  return np.arange(steps) * (num_timesteps // steps)


def _step_noise(example_keys_B, step, shape):
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), shape))(example_keys_B)


def ddpm(denoise_fn, schedule: Schedule, timesteps, x_T, example_keys_B, *, prediction, variance, clip_denoised):
  """Ancestral sampling (Ho et al. 2020, Algorithm 2): x_{t-1} = mu_theta(x_t, t) + sigma_t z, no noise at
  the last step."""
  respaced = schedule.respace(timesteps)
  model_t = jnp.asarray(timesteps, jnp.int32)
  num_steps, b = len(timesteps), x_T.shape[0]

  def body(i, x):
    idx = num_steps - 1 - i
    idx_B = jnp.full((b,), idx, jnp.int32)
    out = denoise_fn(x, jnp.full((b,), model_t[idx], jnp.int32))
    mean, logvar, _ = objectives.p_mean_variance(prediction, variance, respaced, out, x, idx_B, clip_denoised)
    z = _step_noise(example_keys_B, idx, x.shape[1:])
    return mean + jnp.where(idx > 0, jnp.exp(0.5 * logvar), 0.0) * z

  return jax.lax.fori_loop(0, num_steps, body, x_T)


def ddim(denoise_fn, schedule: Schedule, timesteps, x_T, example_keys_B, *, eta: float, prediction, clip_denoised):
  """DDIM (Song, Meng & Ermon 2021, eq. 12): x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2)
  eps_hat + sigma z, sigma = eta sqrt((1 - abar_prev)/(1 - abar) (1 - abar/abar_prev)). eta = 0 is
  deterministic given x_T; eta = 1 is ancestral sampling with the posterior ('fixedsmall') variance."""
  respaced = schedule.respace(timesteps)
  model_t = jnp.asarray(timesteps, jnp.int32)
  num_steps, b = len(timesteps), x_T.shape[0]
  abar, abar_prev = respaced.alphas_cumprod, respaced.alphas_cumprod_prev
  sigma = eta * np.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))

  def body(i, x):
    idx = num_steps - 1 - i
    idx_B = jnp.full((b,), idx, jnp.int32)
    out = denoise_fn(x, jnp.full((b,), model_t[idx], jnp.int32))
    x0, eps = objectives.to_x0_and_eps(prediction, respaced, out, x, idx_B)
    if clip_denoised:  # re-derive eps from the clipped x0 so the two stay consistent
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = objectives.eps_from_x0(respaced, x0, x, idx_B)
    sigma_B = take(sigma, idx_B)
    direction = jnp.sqrt(jnp.maximum(take(1.0 - abar_prev, idx_B) - sigma_B ** 2, 0.0)) * eps
    x_prev = take(np.sqrt(abar_prev), idx_B) * x0 + direction
    if eta:
      x_prev = x_prev + sigma_B * _step_noise(example_keys_B, idx, x.shape[1:])
    return x_prev

  return jax.lax.fori_loop(0, num_steps, body, x_T)


def guided(apply_fn, labels_B, null_label: int, scale: float):
  """Classifier-free guidance (Ho & Salimans 2022) as a denoise_fn: out_uncond + scale (out_cond - out_uncond).

  scale = 0 is the unconditional model, 1 the conditional one, > 1 guided (the paper's w = scale - 1).
  Both branches go through the network as one doubled batch. `apply_fn(x, t_B, labels_B) -> output`.
  """
  if scale == 1.0:
    return lambda x, t_B: apply_fn(x, t_B, labels_B)
  null_B = jnp.full_like(labels_B, null_label)

  def denoise(x, t_B):
    both = apply_fn(jnp.concatenate([x, x]), jnp.concatenate([t_B, t_B]), jnp.concatenate([labels_B, null_B]))
    cond, uncond = jnp.split(both, 2)
    return uncond + scale * (cond - uncond)

  return denoise
