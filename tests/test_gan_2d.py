"""The 2-D mode-coverage benchmarks: the ring/grid sources (deterministic, resumable, host-split), the
mode_coverage evaluator's closed forms, the points medium, and a packed GAN on points."""
import math
import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from ml_collections import ConfigDict
from PIL import Image

from aigc_jax import data as data_lib
from aigc_jax import media, parallel, trainer
from aigc_jax.configs import load_experiment
from aigc_jax.data.sources import gaussian_mixtures as gm
from aigc_jax.errors import UserError
from aigc_jax.evaluation.evaluators import mode_coverage as mc
from aigc_jax.evaluation.registry import EvalContext
from aigc_jax.families import gan_lib, get_family
from aigc_jax.media import points as points_medium

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_config(name="ring", **keys):
  return ConfigDict({"name": name, "split": "train", **keys})


def test_ring_and_grid_are_the_papers_mixtures():
  ring = gm.mixture(data_config("ring"))
  angles = np.arctan2(ring.centres_Kx2[:, 1], ring.centres_Kx2[:, 0]) % (2 * np.pi)
  np.testing.assert_allclose(np.sort(angles), 2 * np.pi * np.arange(8) / 8, atol=1e-12)
  np.testing.assert_allclose(np.linalg.norm(ring.centres_Kx2, axis=1), 1.0)
  assert ring.std == 0.01
  grid = gm.mixture(data_config("grid"))
  assert grid.std == 0.05
  assert sorted(map(tuple, grid.centres_Kx2.tolist())) == [(i, j) for i in range(-4, 5, 2) for j in range(-4, 5, 2)]
  # Keys override the defaults; 0 keeps them.
  assert gm.mixture(data_config("ring", radius=2.0, std=0.0, num_modes=4)).centres_Kx2[0].tolist() == [2.0, 0.0]
  assert gm.mixture(data_config("grid", num_modes=9, spacing=1.0)).centres_Kx2.min() == -1.0
  with pytest.raises(UserError, match="data.num_modes=24 is not a square"):
    gm.mixture(data_config("grid", num_modes=24))
  with pytest.raises(UserError, match="data.std must be > 0"):
    gm.mixture(data_config("ring", std=-1.0))
  with pytest.raises(UserError, match="splits .*'validation'"):
    gm.load(data_config("ring"), "validation")
  with pytest.raises(UserError, match="data.radius is not used by data source 'grid'.*sources that read it: ring"):
    data_lib.check_set_keys(data_config("grid"), ["data.radius"])


def iterator(name="ring", start=0, seed=3, batch=12, split="train", host=(0, 1)):
  source = gm.load(data_config(name), split)
  return gm.MixtureBatches(source, batch, seed, start_batch=start, process_index=host[0], process_count=host[1])


def test_batches_are_a_pure_function_of_their_index_and_resume_exactly():
  it = iterator()
  first = [next(it) for _ in range(4)]
  assert it.batches_consumed == 4
  resumed = iterator(start=2)
  for b in first[2:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["points"], b["points"])
    np.testing.assert_array_equal(got["label"], b["label"])
  np.testing.assert_array_equal(it.batch_at(1)["points"], first[1]["points"])
  assert first[0]["points"].dtype == np.float32 and first[0]["points"].shape == (12, 2)
  assert first[0]["label"].dtype == np.int32
  # Each point lies near the centre of its label (std 0.01 on a unit ring).
  centres = gm.mixture(data_config()).centres_Kx2
  for b in first:
    assert np.abs(b["points"] - centres[b["label"]]).max() < 0.06
  # Two hosts slice the same global batch; another split and another seed are other streams.
  halves = [iterator(host=(h, 2)).batch_at(1)["points"] for h in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), first[1]["points"])
  assert not np.array_equal(iterator(split="test").batch_at(1)["points"], first[1]["points"])
  assert not np.array_equal(iterator(seed=4).batch_at(1)["points"], first[1]["points"])


def test_the_training_iterator_comes_from_the_registry_with_its_medium():
  config = ConfigDict({"data": data_config("grid"), "batch_size": 8, "seed": 0})
  assert data_lib.medium(config) == "points"
  it = data_lib.make_train_iterator(config)
  assert "25 Gaussians" in it.description and it.batch_at(0)["points"].shape == (8, 2)
  example = data_lib.example_batch(config, 4)
  assert example["points"].shape == (4, 2) and example["label"].shape == (4,)


def evaluator(name="ring", num_samples=16):
  config = ConfigDict({"family": "gan", "data": data_config(name), "eval": {"seed": 0, "num_samples": num_samples}})
  return mc.ModeCoverage(EvalContext(config, "", None, None, None, ""))


def score(ev, *chunks):
  for chunk in chunks:
    ev.absorb(ev.record({"points": chunk}))
  return ev.finish()


def test_mode_coverage_closed_forms():
  ring = gm.mixture(data_config("ring"))
  centres = ring.centres_Kx2.astype(np.float32)
  values, sections = score(evaluator(), centres, centres)  # every centre, twice: all modes, uniform
  assert values == {"modes_covered": 8, "high_quality": 1.0, "mode_reverse_kl": 0.0}
  assert sections["mode_coverage"]["per_mode_counts"] == [2] * 8
  values, _ = score(evaluator(), np.repeat(centres[3:4], 10, 0))  # all at one centre: log 8 from uniform
  assert values["modes_covered"] == 1 and values["high_quality"] == 1.0
  assert values["mode_reverse_kl"] == pytest.approx(math.log(8))
  values, _ = score(evaluator(), np.full((5, 2), 10.0, np.float32), np.full((3, 2), np.nan, np.float32))
  assert values == {"modes_covered": 0, "high_quality": 0.0, "mode_reverse_kl": None}
  # Counts (2, 1, 1) on three of eight modes: p = (1/2, 1/4, 1/4), KL = 1/2 log 4 + 2 * 1/4 log 2; one far point.
  points = np.concatenate([centres[[0, 0, 1, 2]], [[5.0, 5.0]]]).astype(np.float32)
  values, _ = score(evaluator(), points[:2], points[2:])  # in two chunks, as a resumed evaluation absorbs them
  assert values["modes_covered"] == 3 and values["high_quality"] == pytest.approx(4 / 5)
  assert values["mode_reverse_kl"] == pytest.approx(0.5 * math.log(4) + 0.5 * math.log(2))
  # 3 std is the border, strictly: 2.99 std away is high quality, 3.01 std is not.
  offsets = np.array([[2.99 * ring.std, 0.0], [3.01 * ring.std, 0.0]])
  np.testing.assert_array_equal(mc.nearest_modes(centres[:1] + offsets, centres, ring.std), [0, -1])


def test_mode_coverage_scores_real_points_as_the_ceiling_and_checks_its_input():
  ev = evaluator("grid", num_samples=2500)
  _, sections = score(ev, gm.mixture(data_config("grid")).centres_Kx2.astype(np.float32))
  real = sections["mode_coverage"]["real_test_points"]
  assert real["modes_covered"] == 25
  assert abs(real["high_quality"] - real["expected_high_quality"]) < 0.01  # 1 - exp(-4.5) = 0.9889
  with pytest.raises(UserError, match="points \\[N, 2\\]"):
    ev.record({"points": np.zeros((3, 3), np.float32)})
  with pytest.raises(UserError, match="not points"):
    ev.record({"images": np.zeros((3, 2, 2, 1), np.float32)})
  with pytest.raises(UserError, match="data.name='digits' has none"):
    mc.check(ConfigDict({"data": {"name": "digits"}}), None)


def test_points_medium_writes_a_scatter_and_float32_arrays(tmp_path):
  ring = gm.mixture(data_config("ring"))
  x, _ = ring.draw(np.random.default_rng(0), 200)
  x[0] = [50.0, 0.0]  # one wild point: outside the view, counted, not drawn
  paths = media.write_samples({"points": x}, str(tmp_path), 7)
  assert [os.path.basename(p) for p in paths] == ["7_points.png", "7.npz"]
  image = np.asarray(Image.open(paths[0]))
  assert image.shape == (512, 512, 3)
  # The view ignores the wild point (99th percentile), and every mode centre is drawn dark, y up.
  half = points_medium.view_half_width(x)
  assert 1.0 < half < 1.3
  margin = points_medium.MARGIN
  scale = (points_medium.SIZE - 2 * margin) / (2 * half)
  for cx, cy in ring.centres_Kx2:
    u, v = int(round((cx + half) * scale + margin)), int(round((half - cy) * scale + margin))
    assert image[v - 2:v + 3, u - 2:u + 3].min() == 0
  np.testing.assert_array_equal(np.load(paths[1])["points"], x)
  q = media.get_medium("points").quantize(x)
  assert q.dtype == np.float32
  np.testing.assert_array_equal(q, x)


def tiny_points_gan(preset="ring_pac2", batch=16):
  c = load_experiment(os.path.join(ROOT, "experiments", "gan_2d.py"), preset)
  c.model.g_hidden = (16,)
  c.model.d_hidden = (8,)
  c.model.d_pieces = 2
  c.batch_size = batch
  return c


def train(config, devices, num_steps):
  """State and metrics after `num_steps` data-parallel steps on the ring source's own batches."""
  family = get_family(config)
  mesh = Mesh(np.asarray(devices), (parallel.DATA_AXIS,))
  step_fn = parallel.data_parallel(family.train_step, mesh)
  it = data_lib.make_train_iterator(config)
  state = parallel.replicate(jax.jit(family.init)(trainer.run_keys(config)[0], it.batch_at(0)), mesh)
  metrics = None
  for step in range(num_steps):
    state, metrics = step_fn(state, parallel.shard_batch(it.batch_at(step), mesh), trainer.step_rng(config, step))
    jax.block_until_ready(metrics)  # ARCHITECTURE.md: queued collectives deadlock XLA:CPU with forced devices
  return family, mesh, jax.device_get(state), jax.device_get(metrics)


def test_packed_gan_on_points_trains_the_same_on_eight_devices_as_on_one():
  config = tiny_points_gan()
  assert len(jax.devices()) == 8  # tests/conftest.py
  _, _, one, metrics_one = train(config, jax.devices()[:1], 2)
  family, mesh, eight, metrics_eight = train(config, jax.devices(), 2)
  # D judges pack = 2 points side by side: its first layer reads 4 numbers (per maxout piece: 8 units x 2).
  assert one["discriminator"]["params"]["Maxout_0"]["Dense_0"]["kernel"].shape == (4, 16)
  assert np.isfinite(metrics_one["d_loss"]) and int(eight["step"]) == 2
  leaves = jax.tree.flatten_with_path(one)[0]
  for (path, x), y in zip(leaves, jax.tree.leaves(eight)):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-6, err_msg=jax.tree_util.keystr(path))
  for k in metrics_one:
    np.testing.assert_allclose(metrics_one[k], metrics_eight[k], rtol=2e-4, atol=2e-6)
  # Samples are 2-D points under the medium's key (traced, not compiled: the step above is the costly part).
  ids = parallel.shard_batch(np.arange(8, dtype=np.int32), mesh)
  samples = jax.eval_shape(parallel.data_parallel_map(family.sample, mesh), eight, jax.random.key(0), ids)
  assert set(samples) == {"points"} and samples["points"].shape == (8, 2)


def test_packing_groups_consecutive_points_and_must_divide_the_per_device_batch():
  batch = iterator(batch=6).batch_at(0)["points"]
  np.testing.assert_array_equal(gan_lib.pack(batch, 2), np.concatenate([batch[0::2], batch[1::2]], axis=1))
  np.testing.assert_array_equal(gan_lib.pack(batch, 3)[1], batch[3:6].reshape(-1))
  # 16 points over 8 devices: 2 per device, fewer than a pack of 4 (traced only: the check precedes any work).
  family = get_family(tiny_points_gan("ring_pac4", batch=16))
  local = iterator(batch=2).batch_at(0)
  state = jax.eval_shape(family.init, jax.random.key(0), local)
  with pytest.raises(UserError, match="model.pack=4 does not divide the per-device batch of 2"):
    jax.eval_shape(family.train_step, state, local, jax.random.key(1))


def test_points_need_a_points_arch_and_images_an_image_arch():
  config = tiny_points_gan()
  config.model.arch = "mlp"
  config.model.g_hidden, config.model.d_hidden = (1200, 1200), (240, 240)
  with pytest.raises(UserError, match="model.arch='mlp' does not make points .* use model.arch points_mlp"):
    get_family(config)
  config = load_experiment(os.path.join(ROOT, "experiments", "gan.py"), "cpu")
  config.model.arch = "points_mlp"
  with pytest.raises(UserError, match="does not make images .*use model.arch dcgan or mlp"):
    get_family(config)
