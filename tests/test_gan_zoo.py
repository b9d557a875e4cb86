"""The GAN zoo's losses and regularisers (families/gan_lib.py) against closed forms and finite differences, and
the family's one-line errors for settings that cannot work or would be ignored."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax.configs import load_experiment
from aigc_jax.errors import UserError
from aigc_jax.families import gan, gan_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def critic(x_BxD):
  """A nonlinear critic that treats examples independently: sum(tanh(W x)) + (v . x)^2."""
  w = jnp.arange(12.0).reshape(3, 4) / 10 - 0.5
  v = jnp.array([0.3, -0.2, 0.1, 0.4])
  return jnp.sum(jnp.tanh(x_BxD @ w.T), axis=-1) + (x_BxD @ v) ** 2


def finite_difference_norms(f, x_BxD, h=1e-3):
  """||grad f_i(x_i)|| per example by central differences, one coordinate at a time."""
  x = np.asarray(x_BxD, np.float64)
  grads = np.zeros_like(x)
  for d in range(x.shape[1]):
    e = np.zeros_like(x)
    e[:, d] = h
    grads[:, d] = (np.asarray(f(jnp.asarray(x + e, jnp.float32))) - np.asarray(f(jnp.asarray(x - e, jnp.float32)))) / (2 * h)
  return np.linalg.norm(grads, axis=1)


def test_gradient_penalty_matches_finite_difference_gradient_norms():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=(2, 5, 4)).astype(np.float32)
  eps_B = rng.uniform(size=5).astype(np.float32)
  x_hat = eps_B[:, None] * real + (1 - eps_B[:, None]) * fake
  norms = finite_difference_norms(critic, x_hat)
  np.testing.assert_allclose(gan_lib.input_gradient_norms(critic, jnp.asarray(x_hat)), norms, rtol=2e-3)
  penalty = gan_lib.wgan_gp_penalty(critic, jnp.asarray(real), jnp.asarray(fake), jnp.asarray(eps_B))
  np.testing.assert_allclose(penalty, np.mean((norms - 1) ** 2), rtol=5e-3)
  np.testing.assert_allclose(gan_lib.r1_penalty(critic, jnp.asarray(real)),
                             np.mean(finite_difference_norms(critic, real) ** 2), rtol=5e-3)


def test_gradient_penalty_of_a_linear_critic_is_its_closed_form():
  w = jnp.array([3.0, 4.0])  # ||w|| = 5: WGAN-GP (5 - 1)^2 = 16 at any interpolate, R1 25
  lin = lambda x: x @ w
  real, fake = jnp.ones((3, 2)), -jnp.ones((3, 2))
  assert float(gan_lib.wgan_gp_penalty(lin, real, fake, jnp.array([0.0, 0.5, 1.0]))) == pytest.approx(16.0, 1e-5)
  assert float(gan_lib.r1_penalty(lin, real)) == pytest.approx(25.0, 1e-5)


def test_losses_closed_forms():
  real, fake = jnp.array([2.0, 0.0]), jnp.array([-1.0, 0.5])
  assert float(gan_lib.discriminator_loss("wasserstein", real, fake)) == pytest.approx(-0.25 - 1.0)
  assert float(gan_lib.generator_loss("wasserstein", fake)) == pytest.approx(0.25)
  # hinge: mean(relu(1 - [2, 0])) + mean(relu(1 + [-1, 0.5])) = 0.5 + 0.75
  assert float(gan_lib.discriminator_loss("hinge", real, fake)) == pytest.approx(1.25)
  sp = lambda x: np.log1p(np.exp(x))
  assert float(gan_lib.discriminator_loss("non_saturating", real, fake)) == pytest.approx(
      np.mean(sp(-np.array([2.0, 0.0]))) + np.mean(sp(np.array([-1.0, 0.5]))), 1e-6)
  logits = jnp.log(jnp.array([[1.0, 3.0], [2.0, 2.0]]))  # softmax rows (0.25, 0.75), (0.5, 0.5)
  assert float(gan_lib.classification_loss(logits, jnp.array([1, 0]))) == pytest.approx(
      -(np.log(0.75) + np.log(0.5)) / 2, 1e-6)


def test_pack_puts_consecutive_examples_side_by_side_on_the_last_axis():
  x = jnp.arange(4 * 2 * 2 * 3.0).reshape(4, 2, 2, 3)
  packed = gan_lib.pack(x, 2)
  assert packed.shape == (2, 2, 2, 6)
  np.testing.assert_array_equal(packed[1, ..., :3], x[2])
  np.testing.assert_array_equal(packed[1, ..., 3:], x[3])
  points = jnp.arange(12.0).reshape(6, 2)
  np.testing.assert_array_equal(gan_lib.pack(points, 3), [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]])
  assert gan_lib.pack(x, 1) is x


def config(**overrides):
  return load_experiment(os.path.join(ROOT, "experiments", "dcgan.py"), "cpu",
                         {f"model.{k}" if "." not in k else k: v for k, v in overrides.items()})


@pytest.mark.parametrize("overrides,needle", [
    ({"gradient_penalty": "wgan_gp"}, "needs a critic without batch norm"),
    ({"gp_weight": 5.0}, "model.gp_weight needs a gradient penalty"),
    ({"loss": "least_squares"}, "unknown model.loss"),
    ({"g_hidden": (8,)}, "model.g_hidden is not read by model.arch='dcgan'"),
    ({"cond_head": "acgan"}, "only applies to a class-conditional GAN"),
    ({"num_classes": 10}, "is unconditional"),
    ({"spectral_norm": True}, "model.spectral_norm is not available"),
    ({"pack": 3}, "not divisible by model.pack=3"),
    ({"sample.label": 3}, "needs a class-conditional model"),
])
def test_settings_that_cannot_work_or_would_be_ignored_are_one_line_errors(overrides, needle):
  with pytest.raises(UserError, match=needle) as e:
    gan.check_config(config(**overrides))
  assert "\n" not in str(e.value)
