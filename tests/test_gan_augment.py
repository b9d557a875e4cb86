"""Discriminator augmentation (families/gan_augment_lib.py: DiffAugment, ADA and its adaptive p), its wiring
into the GAN family (model.augment; ADA's p in the checkpointed run state) and the limited-data subsets
(data.fraction)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from aigc_jax import configs, parallel, trainer
from aigc_jax import data as data_lib
from aigc_jax.checkpointing import Checkpointer
from aigc_jax.configs import base_config, load_experiment
from aigc_jax.data import pipeline
from aigc_jax.data.images import ImageSet
from aigc_jax.errors import UserError
from aigc_jax.families import gan, get_family
from aigc_jax.families import gan_augment_lib as aug

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

B, H = 8, 8
FULL = ("color", "translation", "cutout")


def images(seed, shape=(B, H, H, 3), low=-1.0, high=1.0):
  return jnp.asarray(np.random.default_rng(seed).uniform(low, high, size=shape), jnp.float32)


def keys(seed, n=B):
  return jax.random.split(jax.random.key(seed), n)


diffaugment = jax.jit(aug.diffaugment, static_argnums=2)
ada = jax.jit(aug.ada_augment)
affine_sample = jax.jit(aug.affine_sample)


# ----------------------------------------------------------------------------------------------- DiffAugment

def test_diffaugment_empty_policy_is_the_identity_and_unknown_names_are_refused():
  x = images(0)
  assert aug.diffaugment(x, keys(1), ()) is x
  with pytest.raises(ValueError, match="color, translation, cutout"):
    aug.diffaugment(x, keys(1), ("colour",))


def test_color_is_affine_with_the_closed_form_gradient_of_its_sum():
  """Brightness adds b, saturation and contrast rescale about a mean: the sum of the output is sum(x) + N*b,
  so d sum / dx = 1 everywhere; and a weighted sum's gradient matches an exact finite difference (affine)."""
  x, k = images(0), keys(1)
  grad = jax.grad(lambda x_: jnp.sum(diffaugment(x_, k, ("color",))))(x)
  np.testing.assert_allclose(grad, np.ones_like(grad), atol=1e-5)
  w, d = images(2), images(3)
  f = lambda x_: jnp.sum(w * diffaugment(x_, k, ("color",)))
  g = jax.grad(f)(x)
  assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
  np.testing.assert_allclose(f(x + d) - f(x), jnp.sum(g * d), rtol=1e-4, atol=1e-3)


def test_translation_is_a_zero_padded_shift_of_at_most_an_eighth_and_its_gradient_the_reverse_shift():
  x = images(0, low=0.5, high=1.0)  # no zeros of its own: zeros can only come from the padding
  out = np.asarray(diffaugment(x, keys(4), ("translation",)))
  shifts = []
  for b in range(B):
    padded = np.pad(np.asarray(x[b]), ((1, 1), (1, 1), (0, 0)))  # H // 8 = 1 pixel each way
    found = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
             if np.array_equal(out[b], padded[1 + dy:1 + dy + H, 1 + dx:1 + dx + H])]
    assert len(found) == 1
    shifts.append(found[0])
  assert len(set(shifts)) > 1  # per-example shifts
  w = images(5)
  g = jax.grad(lambda x_: jnp.sum(w * diffaugment(x_, keys(4), ("translation",))))(x)
  for b, (dy, dx) in enumerate(shifts):  # d/dx[i, j] = w[i - dy, j - dx] where that output pixel exists
    expected = np.pad(np.asarray(w[b]), ((1, 1), (1, 1), (0, 0)))[1 - dy:1 - dy + H, 1 - dx:1 - dx + H]
    np.testing.assert_array_equal(g[b], expected)


def test_cutout_zeroes_one_clipped_half_size_square_and_passes_gradient_elsewhere():
  x = images(0, low=0.5, high=1.0)
  out = np.asarray(diffaugment(x, keys(6), ("cutout",)))
  g = np.asarray(jax.grad(lambda x_: jnp.sum(diffaugment(x_, keys(6), ("cutout",))))(x))
  for b in range(B):
    zero = np.all(out[b] == 0, axis=-1)
    rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
    assert 1 <= len(rows) <= H // 2 and 1 <= len(cols) <= H // 2
    assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all() and zero.sum() == len(rows) * len(cols)
    if 0 < rows.min() and rows.max() < H - 1:
      assert len(rows) == H // 2  # a square inside the image has the full size
    np.testing.assert_array_equal(out[b][~zero], np.asarray(x[b])[~zero])
    np.testing.assert_array_equal(g[b], np.where(zero[..., None], 0.0, 1.0) * np.ones_like(g[b]))


def test_the_transform_is_one_per_key_shared_by_real_and_fake_and_independent_of_the_batch():
  real, fake, k = images(0), images(1), keys(7)
  a = 0.3  # every policy is affine in x for a fixed key: T(a r + (1 - a) f) = a T(r) + (1 - a) T(f)
  mixed = diffaugment(a * real + (1 - a) * fake, k, FULL)
  np.testing.assert_allclose(mixed, a * diffaugment(real, k, FULL) + (1 - a) * diffaugment(fake, k, FULL),
                             atol=1e-5)
  other = diffaugment(real, keys(8), FULL)
  assert not np.allclose(mixed, a * other + (1 - a) * diffaugment(fake, k, FULL), atol=1e-3)
  assert np.all(np.abs(np.asarray(other - diffaugment(real, k, FULL))).reshape(B, -1).max(1) > 1e-3)
  np.testing.assert_array_equal(diffaugment(real[::-1], k[::-1], FULL)[::-1], diffaugment(real, k, FULL))


# -------------------------------------------------------------------------------------------------------- ADA

def test_affine_sample_copies_pixels_for_blits_and_interpolates_fractional_shifts():
  x = images(0, shape=(H, H, 3))
  t = lambda tx, ty: jnp.array([[1.0, 0, tx], [0, 1.0, ty], [0, 0, 1.0]])
  np.testing.assert_array_equal(affine_sample(x, jnp.eye(3)), x)
  np.testing.assert_array_equal(affine_sample(x, jnp.diag(jnp.array([-1.0, 1, 1]))), x[:, ::-1])
  quarter = jnp.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # out(x, y) = in(-y, x)
  np.testing.assert_array_equal(affine_sample(x, quarter), np.rot90(np.asarray(x), k=1, axes=(0, 1)))
  shifted = np.asarray(affine_sample(x, t(2.0, -1.0)))  # out[i, j] = in[i - 1, j + 2], mirrored outside
  np.testing.assert_array_equal(shifted[1:, :H - 2], np.asarray(x)[:H - 1, 2:])
  np.testing.assert_array_equal(shifted[0], np.asarray(x)[1, np.r_[2:H, H - 2, H - 3]])  # row -1 -> row 1
  half = np.asarray(affine_sample(x, t(0.5, 0.0)))
  np.testing.assert_allclose(half[:, :H - 1], (np.asarray(x)[:, :H - 1] + np.asarray(x)[:, 1:]) / 2, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_ada_is_exactly_the_identity_at_p0_and_changes_every_example_at_p1(channels):
  x, k = images(0, shape=(B, H, H, channels)), keys(9)
  np.testing.assert_array_equal(ada(x, k, jnp.float32(0.0)), x)
  out = np.asarray(ada(x, k, jnp.float32(1.0)))
  assert np.all(np.abs(out - np.asarray(x)).reshape(B, -1).max(1) > 1e-2) and np.all(np.isfinite(out))


def test_ada_is_differentiable_a_function_of_each_examples_key_and_applies_a_share_p_of_transforms():
  x, k, p = images(0), keys(10), jnp.float32(0.5)
  w, d = images(1), images(2)
  f = lambda x_: jnp.sum(w * ada(x_, k, p))
  g = jax.grad(f)(x)
  assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
  np.testing.assert_allclose(f(x + d) - f(x), jnp.sum(g * d), rtol=1e-4, atol=1e-3)  # affine for a fixed key
  np.testing.assert_array_equal(ada(x[::-1], k[::-1], p)[::-1], ada(x, k, p))  # position in the batch: no effect
  # 18 transformations, each applied with probability p: at p = 0.02 most examples stay as they are.
  changed = [np.abs(np.asarray(ada(x, keys(100 + i), jnp.float32(0.02)) - x)).reshape(B, -1).max(1) > 0
             for i in range(8)]
  assert 0 < np.sum(changed) < 32


def test_ada_p_rises_on_an_overfitting_discriminator_falls_on_an_underfitting_one_and_stays_in_0_1():
  adjust = jax.jit(aug.ada_adjust, static_argnums=(2, 3))
  state = aug.ada_init_state(0.5)
  assert set(state) == {"p", "sign_sum", "count"} and all(v.shape == () for v in state.values())
  over = aug.ada_accumulate(state, jnp.full((B,), 3.0))  # r_t = 1 > 0.6
  assert float(aug.ada_rt(over)) == 1.0
  up = adjust(over, 256 * 4, 0.6, 500_000)
  assert float(up["p"]) == pytest.approx(0.5 + 1024 / 500_000) and float(up["count"]) == 0 == float(up["sign_sum"])
  down = adjust(aug.ada_accumulate(state, -jnp.ones((B, 1))), 1024, 0.6, 500_000)  # r_t = -1
  assert float(down["p"]) == pytest.approx(0.5 - 1024 / 500_000)
  assert float(adjust(state, 1024, 0.6, 500_000)["p"]) == 0.5  # nothing accumulated: p stays
  assert float(adjust(aug.ada_accumulate(aug.ada_init_state(0.999), jnp.ones(B)), 10_000, 0.6, 500_000)["p"]) == 1.0
  assert float(adjust(aug.ada_accumulate(aug.ada_init_state(0.001), -jnp.ones(B)), 10_000, 0.6, 500_000)["p"]) == 0.0
  mixed = aug.ada_accumulate(state, jnp.array([1.0, 1, 1, -1, 1, 1, 1, 1]))  # r_t = 0.75 > 0.6
  kept = jax.jit(aug.ada_maybe_adjust)(mixed, jnp.bool_(False), 1024)
  assert float(kept["p"]) == 0.5 and float(kept["count"]) == B
  assert float(jax.jit(aug.ada_maybe_adjust)(mixed, jnp.bool_(True), 1024)["p"]) > 0.5


def test_ada_accumulates_over_the_global_batch_inside_shard_map():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(B,)) + 0.3, jnp.float32)
  mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
  fn = jax.jit(jax.shard_map(lambda s, l: aug.ada_accumulate(s, l, "data"), mesh=mesh, in_specs=(P(), P("data")),
                             out_specs=P(), check_vma=False))
  sharded, whole = fn(aug.ada_init_state(0.2), logits), aug.ada_accumulate(aug.ada_init_state(0.2), logits)
  assert float(sharded["count"]) == B == float(whole["count"])
  assert float(sharded["sign_sum"]) == float(whole["sign_sum"]) == float(jnp.sum(jnp.sign(logits)))


# ------------------------------------------------------------------------------------------ data.fraction

def npz_config(tmp_path, fraction, labels=True):
  """An .npz source of 100 distinct 4x4 images in three classes of 50, 30 and 20."""
  rng = np.random.default_rng(0)
  arrays = {"images": rng.permutation(256)[:100, None, None, None].repeat(4, 1).repeat(4, 2).astype(np.uint8)}
  if labels:
    arrays["labels"] = rng.permutation(np.repeat([0, 1, 2], [50, 30, 20])).astype(np.int32)
  np.savez(tmp_path / "set.npz", **arrays)
  c = base_config()
  c.data.update(dict(name="npz", path=str(tmp_path / "set.npz"), image_size=4, fraction=fraction))
  c.batch_size = 10
  return c


def test_fraction_keeps_a_fixed_class_stratified_share_of_the_training_split_only(tmp_path):
  config = npz_config(tmp_path, 0.1)
  full = data_lib.load_image_set(config.data)  # evaluation reads the whole split
  iterator = data_lib.make_train_iterator(config)
  subset = pipeline.training_subset(full, 0.1)
  assert len(full) == 100 and len(subset) == 10 and subset.subset_of == 100
  assert "10 of 100 images (class-stratified data.fraction=0.1) 4x4x1, 3 classes" in iterator.description
  np.testing.assert_array_equal(np.bincount(subset.labels), [5, 3, 2])  # each class its share
  rows = {r.tobytes(): l for r, l in zip(full.images, full.labels)}
  assert all(rows.get(r.tobytes()) == l for r, l in zip(subset.images, subset.labels))  # real pairs of the split
  np.testing.assert_array_equal(pipeline.training_subset(full, 0.1).images, subset.images)  # fixed
  assert len(np.unique(subset.images[:, 0, 0, 0])) == 10
  # 25 of 50/30/20: shares 12.5, 7.5, 5 round down to 24; the one left goes to the largest remainder, the tie
  # between classes 0 and 1 to the lower class.
  np.testing.assert_array_equal(np.bincount(pipeline.training_subset(full, 0.25).labels), [13, 7, 5])
  epoch = iterator.batch_at(0)["image"]  # batch 10 = one epoch of the subset
  assert {r.tobytes() for r in epoch} == {r.tobytes() for r in data_lib.to_model_range(subset.images)}
  iterator.close()
  assert pipeline.training_subset(full, 1.0) is full


def test_fraction_without_labels_is_a_seeded_subset_and_bad_values_are_one_line_errors(tmp_path):
  iterator = data_lib.make_train_iterator(npz_config(tmp_path, 0.25, labels=False))
  assert "25 of 100 images (seeded data.fraction=0.25)" in iterator.description
  unlabelled = ImageSet(np.arange(10 * 4, dtype=np.uint8).reshape(10, 2, 2, 1))
  kept = pipeline.training_subset(unlabelled, 0.25)  # round(2.5) = 3 (half up)
  assert len(kept) == 3 and kept.labels is None and len(np.unique(kept.images[:, 0, 0, 0])) == 3
  np.testing.assert_array_equal(pipeline.training_subset(unlabelled, 0.25).images, kept.images)
  for bad in (0.0, 1.5, -0.1):
    with pytest.raises(UserError, match="data.fraction must be a number in") as e:
      data_lib.check_fraction(npz_config(tmp_path, bad).data)
    assert "\n" not in str(e.value)
  with pytest.raises(UserError, match="keeps none"):
    pipeline.training_subset(unlabelled, 0.01)
  text = base_config()
  text.data.name, text.data.fraction = "python_stdlib", 0.5
  with pytest.raises(UserError, match="read by image sources only"):
    data_lib.check_fraction(text.data)
  with pytest.raises(UserError, match="--config.data.fraction is not used by data source 'python_stdlib'.*digits"):
    data_lib.check_set_keys(text.data, ["data.fraction"])
  data_lib.check_set_keys(npz_config(tmp_path, 0.5).data, ["data.fraction"])


# ------------------------------------------------------------------------------------- in the GAN family

def tiny_gan(**model):
  c = load_experiment(os.path.join(ROOT, "experiments", "gan.py"), "cpu")
  c.data.image_size, c.batch_size, c.num_train_steps = 8, 8, 10
  c.model.update(dict(g_hidden=(16,), d_hidden=(16,), d_pieces=2, z_dim=8, **model))
  return c


def test_augmentation_reaches_every_discriminator_call_with_its_own_per_example_keys(monkeypatch):
  """Traced, not compiled: D sees augmented reals and fakes in the D step, augmented fakes in the G step, and
  augmented inputs inside R1's critic."""
  calls = []

  def spy(x, keys_Bx2, policy):
    calls.append((x.shape, policy, keys_Bx2))
    return x

  monkeypatch.setattr(aug, "diffaugment", spy)
  config = tiny_gan(augment="diffaugment", diffaugment_policy="translation, color", gradient_penalty="r1")
  family = get_family(config)
  mesh = Mesh(np.asarray(jax.devices()[:8]), (parallel.DATA_AXIS,))
  batch = {"image": jnp.zeros((8, 8, 8, 1)), "label": jnp.zeros((8,), jnp.int32)}
  state = jax.eval_shape(family.init, jax.random.key(0), batch)
  jax.eval_shape(jax.shard_map(family.train_step, mesh=mesh, in_specs=(P(), P("data"), P()), out_specs=(P(), P()),
                               check_vma=False), state, batch, jax.random.key(1))
  # One call for the D step's reals and fakes together, one inside R1's critic, one for the G step's fakes.
  assert [shape[0] for shape, _, _ in calls] == [2, 1, 1]
  assert all(policy == ("translation", "color") and shape[1:] == (8, 8, 1) for shape, policy, _ in calls)


@pytest.mark.parametrize("overrides,needle", [
    ({"augment": "mixup"}, "unknown model.augment"),
    ({"ada_target": 0.5}, "model.ada_target only applies to model.augment=ada"),
    ({"augment": "diffaugment", "ada_interval": 8}, "model.ada_interval only applies to model.augment=ada"),
    ({"diffaugment_policy": "color"}, "model.diffaugment_policy only applies to model.augment=diffaugment"),
    ({"augment": "diffaugment", "diffaugment_policy": "color,zoom"}, "unknown DiffAugment policy"),
    ({"augment": "diffaugment", "diffaugment_policy": " "}, "model.diffaugment_policy is empty"),
    ({"augment": "ada", "ada_target": 1.0}, "must lie in"),
    ({"augment": "ada", "data.channels": 2}, "1- or 3-channel images"),
])
def test_augment_settings_that_cannot_work_or_would_be_ignored_are_one_line_errors(overrides, needle):
  config = tiny_gan()
  configs.override(config, {k if "." in k else f"model.{k}": v for k, v in overrides.items()})
  with pytest.raises(UserError, match=needle) as e:
    gan.check_config(config)
  assert "\n" not in str(e.value)


def test_ada_p_rises_on_an_overfitting_discriminator_and_a_checkpoint_restores_it_exactly(tmp_path):
  """A D with a high learning rate on one repeated real batch overfits: r_t -> 1 > 0.6, so p climbs by
  batch * d_steps * interval / speed = 8 * 2 / 32 = 0.5 per adjustment (every 2 steps). The whole ADA state,
  accumulators mid-interval included, goes through a checkpoint and the next step equals the uninterrupted one."""
  config = tiny_gan(augment="ada", ada_interval=2, ada_speed_images=32)
  config.optimizer.d_learning_rate = 1e-2
  family = get_family(config)
  mesh = Mesh(np.asarray(jax.devices()[:8]), (parallel.DATA_AXIS,))
  step_fn = parallel.data_parallel(family.train_step, mesh, donate_state=False)
  real = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)
  batch = parallel.shard_batch({"image": real, "label": np.zeros(8, np.int32)}, mesh)
  state = parallel.replicate(jax.jit(family.init)(jax.random.key(0), batch), mesh)
  assert {k: float(v) for k, v in state["ada"].items()} == {"p": 0.0, "sign_sum": 0.0, "count": 0.0}
  p, history = 0.0, []
  for step in range(5):
    state, metrics = step_fn(state, batch, jax.random.key(step))
    if step % 2 == 1:  # an adjustment: r_t of the two steps' 16 real logits
      p = min(max(p + np.sign(float(metrics["ada_rt"]) - 0.6) * 0.5, 0.0), 1.0)
    history.append(float(metrics["ada_p"]))
    assert float(state["ada"]["p"]) == pytest.approx(p)
  assert max(history) > 0, history  # D overfit (r_t > 0.6 over an interval) and p rose
  assert float(state["ada"]["count"]) == 8  # step 4's logits, waiting for the next adjustment
  ckpt = Checkpointer(str(tmp_path))  # a host copy: saving 8 device replicas costs seconds more, same files
  ckpt.save(5, jax.device_get(state), {"batches_consumed": 5}, config.to_dict(), force=True)
  ckpt.wait()
  restored, _, _ = ckpt.restore(5, trainer.abstract_state(family, config), mesh)
  ckpt.close()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored["ada"]), jax.device_get(state["ada"]))
  after_restore, _ = step_fn(restored, batch, jax.random.key(5))
  uninterrupted, _ = step_fn(state, batch, jax.random.key(5))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(after_restore), jax.device_get(uninterrupted))
