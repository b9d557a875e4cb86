"""VAE family: closed-form pieces against Monte Carlo and normalisation, the IWAE bound's ordering on a briefly
trained model, device-count independence, the Burda schedule, and one-line errors for bad input."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from aigc_jax import data as data_lib
from aigc_jax import parallel, trainer
from aigc_jax.configs import load_experiment
from aigc_jax.errors import UserError
from aigc_jax.evaluation.likelihood import evaluate_split
from aigc_jax.families import get_family
from aigc_jax.families import vae as vae_family

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiment_config(name, preset="cpu"):
  return load_experiment(os.path.join(ROOT, "experiments", f"{name}.py"), preset)


def tiny_vae(k=10, chunk=None):
  c = experiment_config("vae")
  c.data.name = "digits"
  c.data.image_size = 8  # the digits' native size: no resizing
  c.model.hidden = (64, 64)
  c.model.latent_dim = 4
  c.batch_size = 64
  c.eval.iwae_k = k
  c.eval.iwae_chunk = chunk or k
  return c


def train(config, steps, mesh=None):
  family = get_family(config)
  mesh = mesh or parallel.make_mesh()
  state = trainer.init_state(family, config, mesh)
  step_fn = parallel.data_parallel(family.train_step, mesh)
  iterator = data_lib.make_train_iterator(config)
  metrics = []
  for i in range(steps):
    state, m = step_fn(state, parallel.shard_batch(next(iterator), mesh), trainer.step_rng(config, i))
    jax.block_until_ready(m)  # forced CPU devices deadlock on queued collectives (ARCHITECTURE.md)
    metrics.append(jax.device_get(m))
  iterator.close()
  return family, state, metrics


def test_analytic_kl_matches_monte_carlo():
  rng = np.random.default_rng(0)
  mean = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  logvar = jnp.asarray(rng.normal(scale=0.5, size=(3, 5)), jnp.float32)

  @jax.jit  # one compiled program, not a dispatch (and a compile) per op
  def monte_carlo(mean, logvar):
    eps = jax.random.normal(jax.random.key(1), (200_000, 3, 5))
    z = mean + jnp.exp(0.5 * logvar) * eps
    flat = lambda a: a.reshape(-1, 5)
    log_q = vae_family.gaussian_log_density(flat(z), flat(jnp.broadcast_to(mean, z.shape)),
                                            flat(jnp.broadcast_to(logvar, z.shape)))
    log_p = vae_family.gaussian_log_density(flat(z), jnp.zeros_like(flat(z)), jnp.zeros_like(flat(z)))
    mc = (log_q - log_p).reshape(200_000, 3)
    return jnp.mean(mc, axis=0), jnp.std(mc, axis=0)

  mc_mean, mc_std = monte_carlo(mean, logvar)
  stderr = np.asarray(mc_std) / math.sqrt(200_000)
  analytic = np.asarray(vae_family.gaussian_kl(mean, logvar))
  np.testing.assert_array_less(np.abs(np.asarray(mc_mean) - analytic), 4 * stderr + 1e-4)


@pytest.mark.parametrize("kind", ["logistic", "gaussian"])
def test_discretized_likelihoods_sum_to_one_over_the_256_levels(kind):
  levels = jnp.arange(256, dtype=jnp.float32) / 127.5 - 1.0
  fn = vae_family.discretized_logistic_log_prob if kind == "logistic" else vae_family.discretized_gaussian_log_prob
  # One compiled program for every (loc, log_scale), not a dispatch per op.
  mass = jax.jit(lambda loc, log_scale: jnp.sum(jnp.exp(fn(levels, jnp.full_like(levels, loc),
                                                           jnp.full_like(levels, log_scale)))))
  for loc, log_scale in [(0.0, -1.0), (0.9, -4.0), (-0.3, -6.5), (1.5, 0.5)]:
    total = mass(jnp.float32(loc), jnp.float32(log_scale))
    assert abs(float(total) - 1.0) < 2e-3, (kind, loc, log_scale, float(total))


def test_iwae_bound_is_above_the_elbo_and_rises_with_k():
  config = tiny_vae()
  family, state, metrics = train(config, 150)
  assert metrics[-1]["neg_elbo"] < metrics[0]["neg_elbo"] - 10  # it learned something
  mesh = parallel.make_mesh()
  nll = {}
  for k in (1, 10, 100):
    cfg = tiny_vae(k, chunk=min(k, 50))
    result = evaluate_split(cfg, get_family(cfg), state, mesh, "test", batch_size=128)
    assert result["num_examples"] == 297  # every test image once, the last batch padded and masked
    nll[k] = result["iwae_nll"]
    neg_elbo = result["neg_elbo"]
    assert result["iwae_nll"] <= neg_elbo + 0.5  # bound >= ELBO (nats; k=1 equals it up to MC noise)
    assert math.isclose(result["iwae_nll_bits_per_dim"], result["iwae_nll"] / (64 * math.log(2)), rel_tol=1e-6)
  assert nll[1] > nll[10] > nll[100], nll  # -log p(x) bound tightens with k
  assert neg_elbo - nll[100] > 0.25  # measured ~0.75 nats for this tiny 4-latent model


def test_train_step_does_not_depend_on_device_count():
  config = tiny_vae()
  one = Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))
  _, state_1, m_1 = train(config, 3, one)
  _, state_8, m_8 = train(config, 3)
  np.testing.assert_allclose(m_1[-1]["neg_elbo"], m_8[-1]["neg_elbo"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(jax.device_get(state_1)), jax.tree.leaves(jax.device_get(state_8))):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_prior_samples_reconstructions_and_interpolations_are_images():
  config = tiny_vae()
  family, state, _ = train(config, 2)
  out = trainer.make_sampler(family, parallel.make_mesh())(state, jax.random.key(0), 10)
  assert out["images"].shape == (10, 8, 8, 1)
  assert out["images"].min() >= -1 and out["images"].max() <= 1
  x = data_lib.to_model_range(data_lib.load_image_set(config.data, "test").images[:4])
  params = jax.device_get(state)
  assert vae_family.reconstruct(config, params, x).shape == (4, 8, 8, 1)
  grid = vae_family.interpolate(config, params, x[:2], x[2:], 5)
  assert grid.shape == (10, 8, 8, 1)
  np.testing.assert_allclose(grid[0], vae_family.reconstruct(config, params, x[:1])[0], atol=1e-5)


def test_sample_mode_writes_prior_samples_reconstructions_and_interpolations(tmp_path):
  config = tiny_vae()
  config.num_train_steps, config.checkpoint_every_steps, config.sample_every_steps = 2, 2, 0
  config.sample.num = 16
  trainer.train_and_evaluate(config, str(tmp_path))
  trainer.sample(config, str(tmp_path))
  names = sorted(os.listdir(tmp_path / "samples"))
  assert names == ["2.npz", "2.png", "2_interpolations.png", "2_reconstructions.png"], names


def test_burda_schedule_steps_down_by_ten_to_the_minus_one_seventh():
  schedule = vae_family.burda_schedule(1e-3, steps_per_epoch=10)
  epochs_before_stage = [sum(3 ** j for j in range(i)) for i in range(8)]  # 0, 1, 4, 13, ...
  for i, e in enumerate(epochs_before_stage):
    np.testing.assert_allclose(float(schedule(e * 10)), 1e-3 * 10 ** (-i / 7), rtol=1e-5)
  np.testing.assert_allclose(float(schedule(3280 * 10)), 1e-4, rtol=1e-5)


def test_bernoulli_on_grey_levels_without_binarisation_is_a_one_line_error():
  config = tiny_vae()
  config.model.binarize = "none"
  with pytest.raises(UserError, match="binarize") as err:
    get_family(config)
  assert "\n" not in str(err.value)


def test_binarisation_with_a_continuous_likelihood_is_a_one_line_error():
  config = tiny_vae()
  config.model.likelihood = "logistic"
  with pytest.raises(UserError, match="binarize=none") as err:
    get_family(config)
  assert "\n" not in str(err.value)


def test_conv_vae_with_logistic_likelihood_trains():
  config = experiment_config("vae", "cifar10")
  config.data.name = "digits"
  config.data.image_size = 8
  config.data.channels = 1
  config.model.conv_hidden = 8
  config.model.latent_dim = 2
  config.model.num_downsamples = 1
  config.batch_size = 16
  config.optimizer.learning_rate = 3e-3
  _, _, metrics = train(config, 20)
  neg_elbo = [float(m["neg_elbo"]) for m in metrics]
  assert np.all(np.isfinite(neg_elbo)) and np.mean(neg_elbo[-3:]) < np.mean(neg_elbo[:3])
  assert metrics[0]["bits_per_dim"] > 0
