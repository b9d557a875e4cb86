"""Reverse-process samplers, each a single `lax.fori_loop` (one compiled program, no Python loop over t).

DDPM and DDIM run on a subsequence of the T training timesteps (`sampling_timesteps`): the schedule is
respaced to it (Nichol & Dhariwal 2021), so ancestral DDPM with fewer steps and DDIM share one code path;
with all T steps the respaced schedule is the original one. `fast` is DiffWave's fast sampling (Kong et al.
2021, Appendix B): ancestral steps on a short user-defined variance schedule, the network evaluated at the
fractional training steps whose noise levels match it (`fast_alignment`).

`denoise_fn(x_t, t_B) -> network output` is evaluated at the ORIGINAL timestep of each kept step (what the
network was trained on; fractional for `fast`); guidance, conditioning and parameters live inside it. Per-step
noise for example i is normal(fold_in(key_i, step)), so a sample does not depend on how the batch is split
across devices. x is any batch [B, ...] (images [B, H, W, C], signals [B, T]).
"""
import jax
import jax.numpy as jnp
import numpy as np

from aigc_jax.errors import UserError
from aigc_jax.families.diffusion_lib import objectives
from aigc_jax.families.diffusion_lib.schedules import Schedule, take

SAMPLERS = ("ddpm", "ddim", "fast")
# DiffWave's user-defined T_infer = 6 variance schedules (Kong et al. 2021, Appendix B): LARGE (trained with
# T = 200, betas linear 1e-4 .. 0.02) and BASE (T = 50, betas linear 1e-4 .. 0.05).
FAST_SCHEDULE_T200 = (0.0001, 0.001, 0.01, 0.05, 0.2, 0.7)
FAST_SCHEDULE_T50 = (0.0001, 0.001, 0.01, 0.05, 0.2, 0.5)


def sampling_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
  """`steps` evenly strided timesteps 0, k, 2k, ... with k = T // steps (DDIM's 'uniform'
  skip); steps = 0 or T means every timestep."""
  if steps in (0, num_timesteps):
    return np.arange(num_timesteps)
  return np.arange(steps) * (num_timesteps // steps)


def check_fast_schedule(schedule: Schedule, fast_betas):
  """One-line errors for a user-defined schedule the trained chain cannot serve: every cumulative noise level
  gamma_bar_s = prod_{j<=s} (1 - eta_j) must lie between the training chain's abar at its first and last step,
  or there is no training step to align it with."""
  eta = np.asarray(fast_betas, np.float64)
  if eta.ndim != 1 or not len(eta) or np.any(eta <= 0) or np.any(eta >= 1):
    raise UserError(f"sample.fast_schedule must be a non-empty tuple of betas in (0, 1), got {tuple(fast_betas)}")
  gbar, abar = np.cumprod(1.0 - eta), schedule.alphas_cumprod
  outside = np.flatnonzero((gbar > abar[0] * (1 + 1e-12)) | (gbar < abar[-1] * (1 - 1e-12)))
  if len(outside):
    s = int(outside[0])
    raise UserError(f"sample.fast_schedule step {s + 1}: its noise level gamma_bar = {gbar[s]:.6g} is outside the "
                    f"trained chain's [{abar[-1]:.6g}, {abar[0]:.6g}] (abar at its last and first step); use "
                    f"betas whose running product of (1 - beta) stays inside, e.g. {FAST_SCHEDULE_T200} for T = 200")


def fast_alignment(schedule: Schedule, fast_betas) -> np.ndarray:
  """Kong et al. 2021, Appendix B, eq. 14: the fractional training step t_s^align of each fast step s, where
  sqrt(gamma_bar_s) is interpolated linearly between the consecutive training levels sqrt(abar_{t+1}) <=
  sqrt(gamma_bar_s) <= sqrt(abar_t):  t_s^align = t + (sqrt(abar_t) - sqrt(gamma_bar_s)) / (sqrt(abar_t) -
  sqrt(abar_{t+1})). 0-based like every timestep here (the paper's t - 1). float64 [T_infer]."""
  gbar = np.cumprod(1.0 - np.asarray(fast_betas, np.float64))
  sqrt_abar = np.sqrt(schedule.alphas_cumprod)  # decreasing in t; np.interp wants increasing abscissae
  steps = np.arange(schedule.num_timesteps, dtype=np.float64)
  return np.interp(np.sqrt(gbar), sqrt_abar[::-1], steps[::-1])


def _step_noise(example_keys_B, step, shape):
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), shape))(example_keys_B)


def _ancestral(denoise_fn, step_schedule: Schedule, model_t, x_T, example_keys_B, *, prediction, variance,
               clip_denoised):
  """x_{i-1} = mu_theta(x_i, i) + sigma_i z along `step_schedule` (one entry per sampling step), with the
  network evaluated at training step model_t[i]; no noise at the last step."""
  model_t = jnp.asarray(model_t)
  num_steps, b = step_schedule.num_timesteps, x_T.shape[0]

  def body(i, x):
    idx = num_steps - 1 - i
    idx_B = jnp.full((b,), idx, jnp.int32)
    out = denoise_fn(x, jnp.full((b,), model_t[idx], model_t.dtype))
    mean, logvar, _ = objectives.p_mean_variance(prediction, variance, step_schedule, out, x, idx_B, clip_denoised)
    z = _step_noise(example_keys_B, idx, x.shape[1:])
    return mean + jnp.where(idx > 0, jnp.exp(0.5 * logvar), 0.0) * z

  return jax.lax.fori_loop(0, num_steps, body, x_T)


def ddpm(denoise_fn, schedule: Schedule, timesteps, x_T, example_keys_B, *, prediction, variance, clip_denoised):
  """Ancestral sampling (Ho et al. 2020, Algorithm 2): x_{t-1} = mu_theta(x_t, t) + sigma_t z, no noise at
  the last step."""
  return _ancestral(denoise_fn, schedule.respace(timesteps), np.asarray(timesteps, np.int32), x_T, example_keys_B,
                    prediction=prediction, variance=variance, clip_denoised=clip_denoised)


def fast(denoise_fn, schedule: Schedule, fast_betas, x_T, example_keys_B, *, prediction, variance, clip_denoised):
  """DiffWave's fast sampling (Kong et al. 2021, Appendix B, Algorithm 3): T_infer ancestral steps on the
  user-defined betas eta_s, mu = (x_s - eta_s / sqrt(1 - gamma_bar_s) eps_theta(x_s, t_s^align)) / sqrt(gamma_s)
  and sigma_s^2 = eta~_s (variance 'fixedsmall'; 'fixedlarge' gives eta_s), reusing the network trained on
  the T-step chain at the aligned fractional steps. No noise at the last step, as in `ddpm`."""
  aligned = fast_alignment(schedule, fast_betas).astype(np.float32)
  return _ancestral(denoise_fn, Schedule(np.asarray(fast_betas, np.float64)), aligned, x_T, example_keys_B,
                    prediction=prediction, variance=variance, clip_denoised=clip_denoised)


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
    if clip_denoised:  # re-derive eps from the clipped x0 so the two stay consistent (bound as p_mean_variance's)
      x0 = jnp.clip(x0, -float(clip_denoised), float(clip_denoised))
      eps = objectives.eps_from_x0(respaced, x0, x, idx_B)
    sigma_B = take(sigma, idx_B, x)
    direction = jnp.sqrt(jnp.maximum(take(1.0 - abar_prev, idx_B, x) - sigma_B ** 2, 0.0)) * eps
    x_prev = take(np.sqrt(abar_prev), idx_B, x) * x0 + direction
    if eta:
      x_prev = x_prev + sigma_B * _step_noise(example_keys_B, idx, x.shape[1:])
    return x_prev

  return jax.lax.fori_loop(0, num_steps, body, x_T)


def guided(apply_fn, cond_B, null_B, scale: float):
  """Classifier-free guidance (Ho & Salimans 2022) as a denoise_fn: out_uncond + scale (out_cond - out_uncond).

  scale = 0 is the unconditional model, 1 the conditional one, > 1 guided (the paper's w = scale - 1).
  Both branches go through the network as one doubled batch. `apply_fn(x, t_B, cond_B) -> output`; the condition
  is class labels [B] with `null_B` the null class's index, or any pytree of [B, ...] arrays (a caption's context
  and mask) with `null_B` the same pytree for the null condition.
  """
  if not isinstance(scale, jax.Array) and scale == 1.0:  # a traced scale (one program for many) takes both
    return lambda x, t_B: apply_fn(x, t_B, cond_B)
  if isinstance(null_B, int):
    null_B = jnp.full_like(cond_B, null_B)
  both_cond = jax.tree.map(lambda c, n: jnp.concatenate([c, n]), cond_B, null_B)

  def denoise(x, t_B):
    both = apply_fn(jnp.concatenate([x, x]), jnp.concatenate([t_B, t_B]), both_cond)
    cond, uncond = jnp.split(both, 2)
    return uncond + scale * (cond - uncond)

  return denoise


def check_config(config, changed, text: bool):
  """One-line errors for sampler settings the diffusion model cannot honour; `changed(keys)` lists the sample.* keys
  that differ from the family's defaults, `text` whether the model is text-conditional."""
  s, T = config.sample, config.diffusion.num_timesteps
  if s.sampler not in SAMPLERS:
    raise UserError(f"unknown sample.sampler {s.sampler!r}; use one of {SAMPLERS}")
  if not 0 <= s.steps <= T:
    raise UserError(f"sample.steps={s.steps} must be between 1 and diffusion.num_timesteps={T} (0 = all T)")
  if s.guidance_scale != 1.0 and not (config.model.num_classes or text):
    raise UserError(f"sample.guidance_scale={s.guidance_scale} needs a class-conditional model (model.num_classes "
                    "> 0) or a text-conditional one (model.text_encoder); leave it at 1.0 for an unconditional model")
  dropout_key = "caption_dropout" if text else "label_dropout"
  if s.guidance_scale != 1.0 and not config.diffusion[dropout_key]:
    raise UserError(f"sample.guidance_scale={s.guidance_scale} needs the null {'caption' if text else 'class'}, "
                    f"which only a model trained with diffusion.{dropout_key} > 0 has learned; set "
                    "sample.guidance_scale=1.0")
  if s.sampler == "ddim" and s.eta < 0:
    raise UserError(f"sample.eta must be >= 0, got {s.eta}")
  if s.sampler == "fast" and changed(["steps"]):
    raise UserError(f"sample.steps={s.steps} is not read by sample.sampler=fast (the length of "
                    "sample.fast_schedule is its number of steps); set --config.sample.steps=0")
  if s.sampler != "fast" and changed(["fast_schedule"]):
    raise UserError(f"sample.fast_schedule is read by sample.sampler=fast only, not {s.sampler!r}; set "
                    "--config.sample.sampler=fast or leave sample.fast_schedule at its default")
