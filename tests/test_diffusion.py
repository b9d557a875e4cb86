"""Diffusion family: schedules against closed forms (float64), the forward process, the samplers, guidance,
the bound in bits/dim, the paper U-Net's size and the config errors. Tiny shapes; the trainings use a
one-device mesh so compile time stays small."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from aigc_jax import data as data_lib
from aigc_jax import parallel
from aigc_jax.configs import load_experiment
from aigc_jax.errors import UserError
from aigc_jax.families import get_family
from aigc_jax.families.diffusion import build_model
from aigc_jax.families.diffusion_lib import likelihood, objectives, samplers
from aigc_jax.families.diffusion_lib.schedules import cosine_betas, make_schedule, q_sample

def get_config(preset=""):
  return load_experiment(os.path.join(os.path.dirname(__file__), "..", "experiments", "ddpm.py"), preset)


def tiny_config(preset="cpu", **overrides):
  c = get_config(preset)
  c.data.image_size = 8
  c.batch_size = 16
  c.model.ch = 32
  c.model.ch_mult = (1,)
  c.model.num_res_blocks = 1
  c.model.attn_resolutions = ()
  c.diffusion.num_timesteps = 40
  c.sample.steps = 0
  c.sample.num = 4
  for key, value in overrides.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


def test_paper_unet_has_35_7m_params():
  config = get_config()
  model = build_model(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,), jnp.int32)))
  n = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))
  assert abs(n - 35.7e6) <= 0.1e6, n


def test_linear_schedule_matches_closed_forms_in_float64():
  s = make_schedule("linear", 1000, 1e-4, 0.02)
  betas = 1e-4 + (0.02 - 1e-4) * np.arange(1000) / 999
  np.testing.assert_allclose(s.betas, betas, rtol=1e-14)
  abar = np.exp(np.cumsum(np.log1p(-betas)))
  np.testing.assert_allclose(s.alphas_cumprod, abar, rtol=1e-12)
  assert s.alphas_cumprod.dtype == np.float64
  # Posterior q(x_{t-1} | x_t, x_0) by Gaussian conditioning: prior N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}),
  # likelihood x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t); precisions add.
  t = np.arange(1, 1000)
  alpha, abar_prev = 1 - betas[t], abar[t - 1]
  var = 1.0 / (1.0 / (1 - abar_prev) + alpha / betas[t])
  np.testing.assert_allclose(s.posterior_variance[t], var, rtol=1e-10)
  x0, xt = 0.3, -1.7
  mean = var * (np.sqrt(abar_prev) * x0 / (1 - abar_prev) + np.sqrt(alpha) * xt / betas[t])
  np.testing.assert_allclose(s.posterior_mean_coef1[t] * x0 + s.posterior_mean_coef2[t] * xt, mean, rtol=1e-9)
  # t = 0: the posterior is the point x0
  assert s.posterior_variance[0] == 0 and s.posterior_mean_coef1[0] == pytest.approx(1.0)
  assert np.all(np.isfinite(s.posterior_log_variance_clipped))


def test_cosine_schedule_and_respacing():
  T, off = 1000, 0.008
  f = lambda t: np.cos((t / T + off) / (1 + off) * np.pi / 2) ** 2
  s = make_schedule("cosine", T)
  unclipped = np.cumsum(cosine_betas(T) >= 0.999) == 0
  np.testing.assert_allclose(s.alphas_cumprod[unclipped], (f(np.arange(1, T + 1)) / f(0))[unclipped], rtol=1e-10)
  assert s.betas.max() <= 0.999
  kept = samplers.sampling_timesteps(T, 50)
  np.testing.assert_allclose(s.respace(kept).alphas_cumprod, s.alphas_cumprod[kept], rtol=1e-12)


def test_scaled_linear_schedule_is_latent_diffusions():
  s = make_schedule("scaled_linear", 1000, 0.00085, 0.012)
  assert s.betas[0] == pytest.approx(0.00085) and s.betas[-1] == pytest.approx(0.012)
  np.testing.assert_allclose(np.diff(np.sqrt(s.betas)), (0.012 ** 0.5 - 0.00085 ** 0.5) / 999, rtol=1e-9)
  # Stable Diffusion's terminal signal level, sqrt(abar_T) = 0.068265 (Lin et al. 2024, "Common Diffusion Noise
  # Schedules and Sample Steps are Flawed", Section 3.1), is a number this schedule must give.
  assert math.sqrt(s.alphas_cumprod[-1]) == pytest.approx(0.068265, abs=2e-6)


def test_logsnr_shift_scales_every_steps_snr_like_scaling_the_data():
  base = make_schedule("cosine", 200)
  shifted = make_schedule("cosine", 200, logsnr_shift=2 * math.log(5.0))
  snr = lambda a: a / (1.0 - a)
  unclipped = np.cumsum(shifted.betas >= 0.999) == 0
  np.testing.assert_allclose(snr(shifted.alphas_cumprod)[unclipped], 25.0 * snr(base.alphas_cumprod)[unclipped],
                             rtol=1e-9)
  # q(x_t | x_0) on the shifted schedule is the base schedule's on data 5x louder, once x_t is rescaled to unit
  # noise-free variance: sqrt(abar') = 5 sqrt(abar) / sqrt(25 abar + 1 - abar).
  a, a2 = base.alphas_cumprod[unclipped], shifted.alphas_cumprod[unclipped]
  np.testing.assert_allclose(np.sqrt(a2), 5 * np.sqrt(a) / np.sqrt(25 * a + 1 - a), rtol=1e-9)
  assert shifted.alphas_cumprod[-1] < 1e-5  # still ends in (nearly) pure noise
  np.testing.assert_array_equal(make_schedule("linear", 50, 1e-4, 0.02, 0.0).betas,
                                make_schedule("linear", 50, 1e-4, 0.02).betas)
  with pytest.raises(UserError, match=r"diffusion.logsnr_shift must be a number in \[-20, 20\]"):
    make_schedule("cosine", 10, logsnr_shift=float("nan"))


def test_q_sample_statistics():
  s = make_schedule("linear", 1000)
  x0 = jnp.full((4096, 4, 4, 1), 0.6)
  t = jnp.full((4096,), 300)
  xt = np.asarray(q_sample(s, x0, t, jax.random.normal(jax.random.key(0), x0.shape)))
  abar = s.alphas_cumprod[300]
  assert xt.mean() == pytest.approx(math.sqrt(abar) * 0.6, abs=0.01)
  assert xt.var() == pytest.approx(1 - abar, rel=0.02)


@pytest.mark.parametrize("prediction", objectives.PREDICTIONS)
def test_parametrisations_invert(prediction):
  s = make_schedule("cosine", 100)
  k1, k2 = jax.random.split(jax.random.key(1))
  x0, eps = jax.random.uniform(k1, (3, 4, 4, 1), minval=-1, maxval=1), jax.random.normal(k2, (3, 4, 4, 1))
  t = jnp.array([0, 50, 99])
  xt = q_sample(s, x0, t, eps)
  x0_hat, eps_hat = objectives.to_x0_and_eps(prediction, s, objectives.training_target(prediction, s, x0, eps, t), xt, t)
  np.testing.assert_allclose(x0_hat, x0, atol=2e-3)
  np.testing.assert_allclose(eps_hat, eps, atol=2e-3)


def test_discretized_decoder_sums_to_one_over_the_256_levels():
  grid = jnp.linspace(-1.0, 1.0, 256)[:, None, None, None]
  log_p = likelihood.discretized_gaussian_log_likelihood(grid, 0.13, jnp.log(0.2))
  assert float(jnp.sum(jnp.exp(log_p))) == pytest.approx(1.0, abs=1e-5)


def oracle(schedule, point):
  """The exact noise predictor for a dataset holding the single image `point`."""
  abar = schedule.alphas_cumprod
  return lambda x, t_B: ((x - jnp.asarray(np.sqrt(abar), jnp.float32)[t_B][:, None, None, None] * point)
                         / jnp.asarray(np.sqrt(1 - abar), jnp.float32)[t_B][:, None, None, None])


def test_ddpm_with_an_oracle_returns_the_one_training_point():
  s = make_schedule("linear", 1000)
  point = jax.random.uniform(jax.random.key(3), (1, 8, 8, 1), minval=-1, maxval=1)
  x_T = jax.random.normal(jax.random.key(4), (3, 8, 8, 1))
  keys = jax.random.split(jax.random.key(5), 3)
  for variance in ("fixedlarge", "fixedsmall"):
    out = jax.jit(lambda x: samplers.ddpm(oracle(s, point), s, np.arange(1000), x, keys, prediction="eps",
                                          variance=variance, clip_denoised=True))(x_T)
    np.testing.assert_allclose(out, jnp.broadcast_to(point, out.shape), atol=1e-4)


def test_ddim_eta0_is_deterministic_given_the_noise():
  s = make_schedule("linear", 1000)
  point = jnp.full((1, 4, 4, 1), 0.25)
  x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
  denoise = lambda x, t: 0.5 * oracle(s, point)(x, t) + 0.1 * jnp.tanh(x)  # an imperfect but fixed predictor
  run = jax.jit(lambda keys, eta: samplers.ddim(denoise, s, samplers.sampling_timesteps(1000, 20), x_T, keys,
                                                  eta=eta, prediction="eps", clip_denoised=True),
                static_argnums=1)
  keys_a, keys_b = jax.random.split(jax.random.key(1), 2), jax.random.split(jax.random.key(2), 2)
  np.testing.assert_array_equal(run(keys_a, 0.0), run(keys_b, 0.0))
  assert not np.allclose(run(keys_a, 1.0), run(keys_b, 1.0))


def perturbed_state(family, config, seed=0):
  """Fresh params plus noise: the zero-initialised output convs would make every branch output 0."""
  state = jax.jit(family.init)(jax.random.key(seed), data_lib.example_batch(config))
  leaves, tree = jax.tree.flatten(state["ema_params"])
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  return {**state, "ema_params": jax.tree.unflatten(tree, leaves)}


def test_guidance_scale_0_is_the_unconditional_model_and_rows_are_classes():
  config = tiny_config("cpu_cond")
  family = get_family(config)
  state = perturbed_state(family, config)
  model = build_model(config)
  # Jitted (compiled once per batch size), not run op by op: the same function, ~15 CPU-s cheaper.
  apply = jax.jit(lambda x, t, y: model.apply({"params": state["ema_params"]}, x, t, y))
  x = jax.random.normal(jax.random.key(2), (3, 8, 8, 1))
  t, labels = jnp.array([3, 20, 39]), jnp.array([1, 4, 7])
  null = jnp.full((3,), 10)
  np.testing.assert_allclose(samplers.guided(apply, labels, 10, 0.0)(x, t), apply(x, t, null), atol=1e-5)
  assert not np.allclose(apply(x, t, labels), apply(x, t, null), atol=1e-3)
  guided = samplers.guided(apply, labels, 10, 3.0)(x, t)
  np.testing.assert_allclose(guided, apply(x, t, null) + 3.0 * (apply(x, t, labels) - apply(x, t, null)), atol=1e-4)
  out = jax.jit(lambda ids: family.sample(state, jax.random.key(0), ids))(jnp.arange(4))
  assert out["images"].shape == (4, 8, 8, 1) and np.all(np.abs(out["images"]) <= 1)
  np.testing.assert_array_equal(out["labels"], [0, 0, 1, 1])  # 2 grid columns for 4 samples
  config.unlock().sample.label = 7
  # Only the labels are read: the compiled program drops the sampling chain it does not return.
  labels = jax.jit(lambda ids: get_family(config).sample(state, jax.random.key(0), ids)["labels"])(jnp.arange(4))
  np.testing.assert_array_equal(labels, [7, 7, 7, 7])


def one_device_run(config, num_steps):
  mesh = Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))
  family = get_family(config)
  state = parallel.replicate(jax.jit(family.init)(jax.random.key(0), data_lib.example_batch(config)), mesh)
  step = parallel.data_parallel(family.train_step, mesh)
  evaluate = jax.jit(jax.shard_map(family.eval_step, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P()),
                                   out_specs=P(), check_vma=False))
  held_out = data_lib.load_image_set(config.data, "test")
  eval_batch = parallel.shard_batch({"image": data_lib.to_model_range(held_out.images[:32]),
                                     "label": held_out.labels[:32]}, mesh)
  bpd = [float(evaluate(state, eval_batch, jax.random.key(9))["bpd"])]
  iterator = data_lib.make_train_iterator(config)
  losses = []
  for i in range(num_steps):
    state, metrics = step(state, parallel.shard_batch(next(iterator), mesh), jax.random.key(i))
    losses.append(float(metrics["loss"]))
  iterator.close()
  bpd.append(float(evaluate(state, eval_batch, jax.random.key(9))["bpd"]))
  return bpd, losses


def test_bound_bits_per_dim_is_finite_and_drops_during_training():
  config = tiny_config("cpu", optimizer__warmup_steps=0, optimizer__learning_rate=2e-3, model__dropout=0.1)
  config.sample.use_ema = False
  # 40 steps: after 30 the bound of this tiny net still swings by ~0.4 bits with the step keys (6.41-6.89).
  bpd, losses = one_device_run(config, 40)
  assert np.all(np.isfinite(bpd)), bpd
  assert bpd[1] < bpd[0] - 0.1, bpd
  assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses


def test_unet_dropout_masks_are_per_example_and_act():
  """Row b's dropout masks depend only on (the step key, b's global index): the device split cannot change them
  (models/layers.example_dropout; the family passes parallel.example_ids)."""
  model = build_model(tiny_config("cpu", model__dropout=0.5))
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  t = jnp.array([3, 17])
  params = jax.jit(lambda: model.init(jax.random.key(1), x, t, train=False))()["params"]
  # Off the init: its zero-initialised output convs would hide every mask.
  params = jax.tree.map(lambda p: p + 0.05 * jnp.sign(jnp.sin(jnp.arange(p.size) + 1.0)).reshape(p.shape), params)
  apply = jax.jit(lambda x, t, ids: model.apply({"params": params}, x, t, train=True,
                                                rngs={"dropout": jax.random.key(2)}, example_ids_B=ids))
  both = apply(x, t, jnp.array([5, 11]))
  np.testing.assert_allclose(apply(x[::-1], t[::-1], jnp.array([11, 5]))[::-1], both, atol=1e-5)  # by index
  other = apply(x, t, jnp.array([6, 12]))  # other indices, other masks: dropout acted
  assert not np.allclose(other[0], both[0], atol=1e-3) and not np.allclose(other[1], both[1], atol=1e-3)


@pytest.mark.parametrize("overrides, message", [
    (dict(sample__steps=41), "sample.steps=41"),
    (dict(sample__sampler="euler"), "unknown sample.sampler"),
    (dict(sample__guidance_scale=3.0), "needs a class-conditional model"),
    (dict(diffusion__prediction="score"), "unknown diffusion.prediction"),
    (dict(sample__label=3), "needs a class-conditional model"),
])
def test_bad_sampler_settings_are_one_line_user_errors(overrides, message):
  with pytest.raises(UserError, match=message) as info:
    get_family(tiny_config("cpu", **overrides))
  assert "\n" not in str(info.value)


def test_sample_label_out_of_range_is_a_one_line_error():
  with pytest.raises(UserError, match=r"sample.label=10 is out of range for a model of 10 classes.*0..9"):
    get_family(tiny_config("cpu_cond", sample__label=10))
