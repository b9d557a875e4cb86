"""VQGAN variant of the VQ-VAE family: the adaptive weight against its closed form, the discriminator losses,
the LPIPS-style distance, cosine code lookup, dead-code restarts (exactly the dead codes; 8 devices == 1),
a few train steps that stay finite and match across device counts, and one-line errors for bad input."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from aigc_jax import data as data_lib
from aigc_jax import configs, parallel
from aigc_jax.configs import load_experiment
from aigc_jax.errors import UserError
from aigc_jax.evaluation.classifier import DigitClassifier
from aigc_jax.families import get_family
from aigc_jax.families import vqgan_lib
from aigc_jax.models.patch_discriminator import PatchDiscriminator
from aigc_jax.models.vqvae import VectorQuantizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_vqgan(tmp_path, experiment="vqgan", **overrides):
  c = load_experiment(os.path.join(ROOT, "experiments", f"{experiment}.py"), "cpu")
  values = {"model.hidden": 8, "model.residual_hidden": 4, "model.num_residual_blocks": 0, "model.num_codes": 16,
            "model.code_dim": 4, "batch_size": 16, "num_train_steps": 3, "eval.classifier_steps": 5,
            "eval.cache_dir": str(tmp_path / "cache")}
  if experiment == "vqgan":
    values.update({"model.disc_width": 4, "model.disc_start": 1})
  values.update(overrides)
  return configs.override(c, values)


def meshes():
  return (Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,)),
          Mesh(np.asarray(jax.devices()[:8]), (parallel.DATA_AXIS,)))


def test_adaptive_weight_matches_its_closed_form_on_a_linear_layer():
  rng = np.random.default_rng(0)
  h_NxI = rng.normal(size=(6, 3))
  w_IxO = rng.normal(size=(3, 2))
  t_NxO, a_NxO = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
  rec = lambda w: jnp.mean((jnp.asarray(h_NxI) @ w - t_NxO) ** 2)
  gan = lambda w: -jnp.mean(jnp.asarray(a_NxO) * (jnp.asarray(h_NxI) @ w))
  weight, rec_norm, gan_norm = vqgan_lib.adaptive_weight(rec, gan, jnp.asarray(w_IxO), axis_name=None)
  n = t_NxO.size  # the means run over every output entry
  g_rec = h_NxI.T @ (2.0 * (h_NxI @ w_IxO - t_NxO) / n)  # d/dW mean((hW - t)^2)
  g_gan = -h_NxI.T @ a_NxO / n                          # d/dW -mean(a * hW)
  np.testing.assert_allclose(rec_norm, np.linalg.norm(g_rec), rtol=1e-5)
  np.testing.assert_allclose(gan_norm, np.linalg.norm(g_gan), rtol=1e-5)
  np.testing.assert_allclose(weight, np.linalg.norm(g_rec) / (np.linalg.norm(g_gan) + 1e-6), rtol=1e-5)
  # A discriminator that ignores the image: no GAN gradient, so lambda hits the 1e4 clip.
  clipped, _, _ = vqgan_lib.adaptive_weight(rec, lambda w: 0.0 * jnp.sum(w), jnp.asarray(w_IxO), axis_name=None)
  assert float(clipped) == vqgan_lib.ADAPTIVE_MAX


def test_discriminator_losses_match_closed_forms():
  real, fake = jnp.asarray([2.0, 0.5, -1.0]), jnp.asarray([-2.0, 0.0, 1.5])
  # hinge: relu(1 - real) = [0, .5, 2], relu(1 + fake) = [0, 1, 2.5]; means 5/6 and 7/6, halved sum = 1.
  np.testing.assert_allclose(vqgan_lib.discriminator_loss("hinge", real, fake), 1.0, rtol=1e-6)
  want = 0.5 * (np.mean(np.log1p(np.exp(-np.asarray(real)))) + np.mean(np.log1p(np.exp(np.asarray(fake)))))
  np.testing.assert_allclose(vqgan_lib.discriminator_loss("vanilla", real, fake), want, rtol=1e-6)
  np.testing.assert_allclose(vqgan_lib.generator_adversarial_loss(fake), -np.mean(np.asarray(fake)), rtol=1e-6)


def test_patch_discriminator_gives_one_logit_per_patch():
  x = jax.ShapeDtypeStruct((2, 16, 16, 1), jnp.float32)
  for norm in ("batch", "none"):  # shapes only: traced, never compiled
    disc = PatchDiscriminator(width=4, num_layers=2, norm=norm)
    variables = jax.eval_shape(lambda x_: disc.init(jax.random.key(0), x_, train=False), x)
    assert jax.eval_shape(lambda v, x_: disc.apply(v, x_, train=False), variables, x).shape == (2, 2, 2, 1)
    assert ("batch_stats" in variables) == (norm == "batch")


def test_perceptual_distance_is_zero_for_equal_images_and_grows_with_noise():
  model = DigitClassifier(num_classes=10)
  x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 1), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.key(2), x.shape)

  @jax.jit
  def distances(x):
    variables = model.init(jax.random.key(1), x)
    return [vqgan_lib.perceptual_distance(model, variables, x, x + s * noise) for s in (0.0, 0.05, 0.5)]

  same, small, large = distances(x)
  np.testing.assert_allclose(same, 0.0, atol=1e-6)
  assert small.shape == (4,) and bool(jnp.all(small > 0)) and bool(jnp.all(large > small))


def test_l2_code_lookup_is_the_argmax_of_cosine_similarity():
  z = jax.random.normal(jax.random.key(0), (2, 4, 4, 8)) * jnp.linspace(0.1, 10.0, 8)  # norms differ a lot
  vq = VectorQuantizer(num_codes=32, code_dim=8, l2=True)
  variables = jax.jit(vq.init)(jax.random.key(1), z)
  quantized, idx = jax.jit(vq.apply)(variables, z)
  codes = np.asarray(variables["params"]["embedding"])
  flat = np.asarray(z).reshape(-1, 8)
  cosine = (flat / np.linalg.norm(flat, axis=1, keepdims=True)) @ (codes / np.linalg.norm(codes, axis=1,
                                                                                          keepdims=True)).T
  np.testing.assert_array_equal(np.asarray(idx).reshape(-1), np.argmax(cosine, axis=1))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(quantized), axis=-1), 1.0, rtol=1e-5)
  # The plain lookup differs here (Euclidean distance prefers codes near the large-norm inputs' scale).
  _, idx_l2sq = jax.jit(VectorQuantizer(num_codes=32, code_dim=8).apply)(variables, z)
  assert not np.array_equal(np.asarray(idx_l2sq), np.asarray(idx))


def test_dead_code_restart_replaces_exactly_the_dead_codes_and_ignores_the_device_count():
  rng = np.random.default_rng(0)
  embedding = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
  age = jnp.asarray([0, 4, 1, 4, 0, 2], jnp.int32)
  counts = jnp.asarray([3, 0, 0, 0, 5, 1], jnp.int32)  # codes 1 and 3 reach age 5 >= 5; code 2 only 2
  z = jnp.asarray(rng.normal(size=(32, 3)) + 10.0, jnp.float32)
  key = jax.random.key(3)
  results = []
  for mesh in meshes():
    fn = jax.jit(jax.shard_map(lambda e, a, c, z_: vqgan_lib.restart_dead_codes(e, a, c, z_, key, 5), mesh=mesh,
                               in_specs=(P(), P(), P(), P(parallel.DATA_AXIS)), out_specs=P(), check_vma=False))
    results.append(jax.device_get(fn(embedding, age, counts, z)))
  (emb1, age1, dead1), (emb8, age8, dead8) = results
  np.testing.assert_array_equal(dead1, [False, True, False, True, False, False])
  np.testing.assert_array_equal(age1, [0, 0, 2, 0, 0, 0])
  keep = ~dead1
  np.testing.assert_array_equal(emb1[keep], np.asarray(embedding)[keep])
  rows = [int(np.flatnonzero(np.all(np.asarray(z) == emb1[k], axis=1))[0]) for k in (1, 3)]  # batch rows
  assert rows[0] != rows[1]
  np.testing.assert_array_equal(emb8, emb1)
  np.testing.assert_array_equal(age8, age1)


def run_steps(config, mesh, num_steps, family=None):
  """(metric history, final state, discriminator after step 0 or None) of `num_steps` steps on digits."""
  family = family or get_family(config)
  b = config.batch_size
  images = data_lib.to_model_range(data_lib.load_image_set(config.data, "train").images[:num_steps * b])
  state = parallel.replicate(jax.jit(family.init)(jax.random.key(0), data_lib.example_batch(config)), mesh)
  initial_d = jax.device_get(state.get("discriminator"))
  step_fn = parallel.data_parallel(family.train_step, mesh, donate_state=False)
  history, d_after_first = [], None
  for i in range(num_steps):
    batch = parallel.shard_batch({"image": images[b * i:b * (i + 1)], "label": np.zeros(b, np.int32)}, mesh)
    state, metrics = step_fn(state, batch, jax.random.fold_in(jax.random.key(7), i))
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    if i == 0:
      d_after_first = jax.device_get(state.get("discriminator"))
  return history, jax.device_get(state), initial_d, d_after_first


def test_a_step_with_dead_code_restarts_is_the_same_on_one_and_eight_devices(tmp_path):
  """l2 codes and restarts after one unused step (the VQ-VAE variant: a small program to compile twice)."""
  config = tiny_vqgan(tmp_path, "vqvae", **{"model.restart_dead_after": 1, "model.l2_codes": True})
  family = get_family(config)
  (h1, s1, _, _), (h8, s8, _, _) = (run_steps(config, mesh, 1, family) for mesh in meshes())
  assert h1[0]["restarted_codes"] > 0 and h1[0]["restarted_codes"] == h8[0]["restarted_codes"]
  for k in h1[0]:
    assert h8[0][k] == pytest.approx(h1[0][k], rel=1e-4, abs=1e-6), k
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s1, s8)
  assert int(np.sum(s1["code_age"])) == 0  # every code was used or restarted this step


def test_vqgan_steps_stay_finite_and_freeze_the_discriminator_before_disc_start(tmp_path, capsys):
  """Two steps with the perceptual loss (classifier trained into eval.cache_dir on first trace), a batch-norm
  discriminator and disc_start = 1; on one device, which compiles fastest (the test above checks 1 == 8)."""
  config = tiny_vqgan(tmp_path)
  history, state, initial_d, d_after_first = run_steps(config, meshes()[0], 2)
  assert "perceptual loss: digits classifier" in capsys.readouterr().out
  assert os.listdir(tmp_path / "cache")
  for h in history:
    assert all(np.isfinite(v) for v in h.values()), h
  assert history[0]["adaptive_weight"] == 0.0 and history[1]["adaptive_weight"] > 0.0
  assert history[0]["rec_loss"] > history[0]["mse"]  # L1 + perceptual, not the MSE
  jax.tree.map(np.testing.assert_array_equal, d_after_first, initial_d)  # step 0 < disc_start: untouched
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), state["discriminator"]["params"],
                       initial_d["params"])
  assert max(jax.tree.leaves(moved)) > 0.0


@pytest.mark.parametrize("overrides,key", [
    ({"model.variant": "gan"}, "model.variant"),
    ({"model.variant": "vqvae"}, "model.disc_start"),  # the tiny config's disc_start=1 would be ignored
    ({"model.disc_loss": "wgan"}, "model.disc_loss"),
    ({"model.disc_norm": "layer"}, "model.disc_norm"),
    ({"model.disc_weight": 0.0}, "model.disc_weight"),
    ({"model.disc_start": 3}, "model.disc_start"),
    ({"model.disc_layers": 4}, "model.disc_layers"),
    ({"model.pixel_loss": "l3"}, "model.pixel_loss"),
    ({"model.perceptual_weight": -1.0}, "model.perceptual_weight"),
])
def test_bad_vqgan_settings_are_one_line_errors(tmp_path, overrides, key):
  with pytest.raises(UserError, match=key.replace(".", r"\.")) as err:
    get_family(tiny_vqgan(tmp_path, **overrides))
  assert "\n" not in str(err.value)
