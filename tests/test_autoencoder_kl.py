"""The KL autoencoder (families/autoencoder_kl.py): its KL term against a Monte-Carlo estimate, the reparameterised
sample's moments, the shapes of a 3-level model and of its adversarial train step (traced), a trainer run whose
own step program then lowers the loss and stores the batch's latent statistics (pooled over the global batch:
checked on 8 devices), the `load_autoencoder` contract on that run (shapes, the stored scale factor read back,
one-line errors naming the key), and one-line errors for bad config values. The file compiles one train step
(the trainer's, caught and reused) and one encoder program (shared), which keeps it cheap."""
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from aigc_jax import configs, parallel, trainer
from aigc_jax import data as data_lib
from aigc_jax.checkpointing import Checkpointer
from aigc_jax.configs import load_experiment
from aigc_jax.errors import UserError
from aigc_jax.families import autoencoder_kl, get_family
from aigc_jax.families.vae import gaussian_kl, gaussian_log_density
from aigc_jax.models.autoencoder_kl import AutoencoderKL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def images_npz(path):
  """32 train and 8 test 8x8 grey images of 2x2-pixel blocks, written as the `npz` source reads them (no
  data set to load: reading the bundled digits costs seconds)."""
  rng = np.random.default_rng(0)
  blocks = rng.integers(0, 256, size=(40, 4, 4, 1)).astype(np.uint8)
  images = np.repeat(np.repeat(blocks, 2, axis=1), 2, axis=2)
  np.savez(path, train_images=images[:32], test_images=images[32:])
  return str(path)


def tiny_config(path="", **overrides):
  """8x8x1 images -> 8x8x2 latents (one level: compiles fastest), width 8, no discriminator; 2 steps of batch 8
  on one device (a multi-device step costs several CPU-s more to compile, and saving a state replicated over
  several devices costs orbax a compiled slice per leaf shape and device; the cross-device pooling of the latent
  statistics is checked on 8 devices below), a checkpoint at the end."""
  c = load_experiment(os.path.join(ROOT, "experiments", "autoencoder_kl.py"), "cpu")
  values = {"data.name": "npz", "data.path": path, "model.ch": 8, "model.ch_mult": (1,), "model.mid_attention": False,
            "model.latent_channels": 2, "model.perceptual_weight": 0.0, "batch_size": 8, "num_devices": 1,
            "num_train_steps": 2, "checkpoint_every_steps": 2, "sample_every_steps": 0, "log_every_steps": 2,
            "eval.every_steps": 0}
  values.update(overrides)
  return configs.override(c, values)


def with_discriminator(config, **overrides):
  """A 1-layer, 4-channel PatchGAN from step 0."""
  return configs.override(config, {"model.use_discriminator": True, "model.disc_layers": 1, "model.disc_width": 4,
                                   "model.disc_start": 0, **overrides})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A trainer run of the tiny config: namespace(config, workdir, state (final, host), step_fn (the trainer's own
  jitted step, caught on its way out of parallel.data_parallel, so the tests reuse the compiled program), mesh,
  posterior (jitted sample_posterior of the model on [8, 8, 8, 1] images, shared by the tests), x_train, x_test
  ([8, 8, 8, 1] in [-1, 1]))."""
  root = tmp_path_factory.mktemp("autoencoder_kl")
  config = tiny_config(images_npz(root / "images.npz"))
  workdir = str(root / "run")
  caught, data_parallel = {}, parallel.data_parallel

  def catching(step, mesh, **kwargs):
    caught["step_fn"], caught["mesh"] = data_parallel(step, mesh, **kwargs), mesh
    return caught["step_fn"]

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(trainer.parallel, "data_parallel", catching)
    state = jax.device_get(trainer.train_and_evaluate(config, workdir))
  assert caught["mesh"].devices.size == 1
  model = autoencoder_kl.build(config).model
  posterior = jax.jit(lambda p, x, e: model.apply({"params": p}, x, e, method=AutoencoderKL.sample_posterior))
  images = lambda split: data_lib.to_model_range(data_lib.load_image_set(config.data, split).images[:8])
  return types.SimpleNamespace(config=config, workdir=workdir, state=state, posterior=posterior,
                               x_train=images("train"), x_test=images("test"), **caught)


def test_kl_term_matches_a_monte_carlo_estimate():
  """KL(q || N(0, I)) in closed form == E_q[log q(z) - log p(z)], estimated from 100k reparameterised draws."""
  rng = np.random.default_rng(0)
  mean = jnp.asarray(rng.normal(size=(2, 2, 2, 2)), jnp.float32)
  logvar = jnp.asarray(rng.uniform(-2.0, 1.0, size=(2, 2, 2, 2)), jnp.float32)

  @jax.jit
  def monte_carlo(eps_Nxhxwxc):
    def one(mean_hxwxc, logvar_hxwxc):
      z = mean_hxwxc + jnp.exp(0.5 * logvar_hxwxc) * eps_Nxhxwxc
      log_q = gaussian_log_density(z, jnp.broadcast_to(mean_hxwxc, z.shape), jnp.broadcast_to(logvar_hxwxc, z.shape))
      log_ratio = log_q - gaussian_log_density(z, jnp.zeros_like(z), jnp.zeros_like(z))
      return jnp.mean(log_ratio), jnp.std(log_ratio) / jnp.sqrt(z.shape[0])
    return jax.vmap(one)(mean, logvar)

  estimate, standard_error = monte_carlo(jax.random.normal(jax.random.key(0), (100_000, 2, 2, 2)))
  closed = gaussian_kl(mean, logvar)
  np.testing.assert_array_less(np.abs(closed - estimate), 5 * standard_error)
  want = 0.5 * np.sum(np.exp(logvar) + np.asarray(mean) ** 2 - 1.0 - logvar, axis=(1, 2, 3))
  np.testing.assert_allclose(closed, want, rtol=1e-5)


def test_shapes_of_a_three_level_autoencoder_and_of_an_adversarial_step():
  """Traced only, no compile: 16x16x3 -> 4x4x3 with ch_mult (1, 2, 2) and attention, and back; and the train
  step with the discriminator (its adaptive weight reads the decoder's conv_out and the input it sowed)."""
  config = tiny_config(**{"data.image_size": 16, "data.channels": 3, "model.ch_mult": (1, 2, 2),
                          "model.latent_channels": 3, "model.mid_attention": True, "model.attn_resolutions": (8,)})
  built = autoencoder_kl.build(config)
  x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  eps = jax.ShapeDtypeStruct((2, 4, 4, 3), jnp.float32)
  recon, z, mean, logvar = jax.eval_shape(lambda x_, e: built.model.init_with_output(jax.random.key(0), x_, e)[0],
                                          x, eps)
  assert built.latent_shape == (4, 4, 3) and z.shape == mean.shape == logvar.shape == (2, 4, 4, 3)
  assert recon.shape == (2, 16, 16, 3)
  built = autoencoder_kl.build(with_discriminator(tiny_config()))
  batch = {"image": jax.ShapeDtypeStruct((8, 8, 8, 1), jnp.float32)}
  state = jax.eval_shape(built.init, jax.random.key(0), batch)
  mesh = Mesh(np.asarray(jax.devices()[:2]), (parallel.DATA_AXIS,))
  new_state, metrics = jax.eval_shape(parallel.data_parallel(built.family.train_step, mesh), state, batch,
                                      jax.random.key(0))
  assert {"adaptive_weight", "g_adv", "d_loss", "rec_grad_norm"} <= set(metrics)
  assert jax.tree.map(lambda a: a.shape, new_state) == jax.tree.map(lambda a: a.shape, state)


def test_reparameterised_sample_has_the_encoders_mean_and_variance(run):
  params = jax.tree.map(np.array, run.state["params"])
  # Shift the log-variance so sigma is far from 1 and differs per channel.
  params["encoder"]["quant_conv"]["bias"][2:] = [-1.5, 0.8]
  n = 2048
  x = np.repeat(run.x_train[:1], n, axis=0)
  eps = jax.random.normal(jax.random.key(3), (n, 8, 8, 2))
  z, mean, logvar = jax.device_get(run.posterior(params, x, eps))
  var = np.exp(logvar[0])
  assert z.shape == (n, 8, 8, 2) and var.max() > 5.0 * var.min()
  np.testing.assert_allclose(mean, np.broadcast_to(mean[:1], mean.shape), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(z.mean(0), mean[0], atol=5 * np.sqrt(var.max() / n))
  np.testing.assert_allclose(z.var(0) / var, 1.0, atol=5 * np.sqrt(2.0 / n))


def test_steps_lower_the_loss_and_store_the_batch_latent_statistics(run):
  """Three more steps of the trainer's own program on one batch."""
  batch = parallel.shard_batch({"image": run.x_train, "label": np.zeros(8, np.int32)}, run.mesh)
  current, history = parallel.replicate(run.state, run.mesh), []
  for i in range(3):
    current, metrics = run.step_fn(current, batch, jax.random.fold_in(jax.random.key(7), i))
    history.append(jax.device_get(metrics))
    if i == 0:
      stats = jax.device_get(current["latent_stats"])
  assert [h["rec_loss"] for h in history] == sorted((h["rec_loss"] for h in history), reverse=True)
  # The logged KL is the closed form of the batch's posteriors at the step's params; the stored latent
  # statistics are those of every example's posterior mean.
  _, mean, logvar = run.posterior(run.state["params"], run.x_train, np.zeros((8, 8, 8, 2), np.float32))
  np.testing.assert_allclose(history[0]["kl"], np.mean(gaussian_kl(mean, logvar)), rtol=1e-5)
  np.testing.assert_allclose(stats["std"], np.std(np.asarray(mean)), rtol=1e-4)
  np.testing.assert_allclose(stats["mean"], np.mean(np.asarray(mean)), rtol=1e-4, atol=1e-6)
  assert history[0]["latent_std"] == pytest.approx(float(stats["std"]))


def test_latent_statistics_pool_the_global_batch_over_eight_devices():
  """The scale factor's std is over every element of the global batch, whatever the device count (each device
  alone sees one example of very different scale)."""
  mean_Bxhxwxc = np.random.default_rng(0).normal(size=(8, 2, 2, 3)) * np.arange(1, 9)[:, None, None, None] + 0.5
  mesh = Mesh(np.asarray(jax.devices()[:8]), (parallel.DATA_AXIS,))
  pooled = jax.jit(jax.shard_map(autoencoder_kl.latent_moments, mesh=mesh, in_specs=jax.P(parallel.DATA_AXIS),
                                 out_specs=jax.P(), check_vma=False))(jnp.asarray(mean_Bxhxwxc, jnp.float32))
  np.testing.assert_allclose(pooled["std"], np.std(mean_Bxhxwxc), rtol=1e-5)
  np.testing.assert_allclose(pooled["mean"], np.mean(mean_Bxhxwxc), rtol=1e-5)


def test_load_autoencoder_round_trip_and_its_errors(run, tmp_path):
  workdir, state = run.workdir, run.state
  ae = autoencoder_kl.load_autoencoder(workdir, expect_image_shape=(8, 8, 1))
  assert (ae.step, ae.latent_shape, ae.image_shape) == (2, (8, 8, 2), (8, 8, 1))
  assert ae.scale_factor == pytest.approx(1.0 / float(state["latent_stats"]["std"]), rel=1e-6)  # stored, read back
  assert ae.checkpoint == os.path.join(workdir, "checkpoints", "2") and len(ae.fingerprint) == 16
  jax.tree.map(np.testing.assert_array_equal, ae.params, state["params"])
  z = ae.encode(run.x_test)
  _, mean, _ = run.posterior(state["params"], run.x_test, np.zeros((8, 8, 8, 2), np.float32))
  np.testing.assert_allclose(z, np.asarray(mean) * ae.scale_factor, rtol=1e-5, atol=1e-6)
  recon = ae.decode(z)
  assert recon.shape == run.x_test.shape and np.all(np.abs(recon) <= 1.0)
  want = jax.jit(autoencoder_kl.build(run.config).decode_params)(state["params"], mean)  # the scale cancels
  np.testing.assert_allclose(recon, np.asarray(want), rtol=1e-4, atol=1e-5)
  assert autoencoder_kl.load_autoencoder(os.path.join(workdir, "checkpoints", "2")).fingerprint == ae.fingerprint

  def error(*args, **kwargs):
    with pytest.raises(UserError) as err:
      autoencoder_kl.load_autoencoder(*args, key="model.autoencoder", **kwargs)
    assert "\n" not in str(err.value) and "model.autoencoder=" in str(err.value)
    return str(err.value)

  assert "no checkpoints/" in error(str(tmp_path / "missing"))
  assert "no checkpoint of step 7" in error(workdir, step=7)
  assert "16x16x1" in error(workdir, expect_image_shape=(16, 16, 1))
  other = str(tmp_path / "other")  # a run of another family: only its saved config is read
  ckpt = Checkpointer(other)
  ckpt.save(1, {"w": np.zeros(2, np.float32)}, {"batches_consumed": 0}, {"family": "vqvae"}, force=True)
  ckpt.wait()
  ckpt.close()
  assert "'vqvae' run, not an autoencoder_kl run" in error(other)


@pytest.mark.parametrize("overrides,key", [
    ({"model.ch_mult": ()}, "model.ch_mult"),
    ({"model.ch_mult": (1, 2, 2, 2, 2)}, "data.image_size"),
    ({"model.attn_resolutions": (4,)}, "model.attn_resolutions"),
    ({"model.kl_weight": -1.0}, "model.kl_weight"),
    ({"model.pixel_loss": "l3"}, "model.pixel_loss"),
    ({"model.perceptual_weight": -1.0}, "model.perceptual_weight"),
    ({"model.disc_start": 2}, "model.disc_start"),
    ({"model.disc_loss": "wgan"}, "model.disc_loss"),
    ({"model.disc_layers": 2}, "model.disc_layers"),  # set for a run without a discriminator
    ({"sample.use_ema": True}, "sample.use_ema"),
])
def test_bad_settings_are_one_line_errors(overrides, key):
  adversarial = key in ("model.disc_start", "model.disc_loss")
  with pytest.raises(UserError, match=key.replace(".", r"\.")) as err:
    get_family(with_discriminator(tiny_config(), **overrides) if adversarial else tiny_config(**overrides))
  assert "\n" not in str(err.value)
