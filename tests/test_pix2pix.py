"""pix2pix: the paired sources (offline tasks, pix2pix folders), the U-Net, and the family's train step
(8 devices == 1), sample strips, eval metrics and figures for a folder of inputs. Tiny shapes: 8x8 digits,
widths 4."""
import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from PIL import Image

from aigc_jax import data as data_lib
from aigc_jax import parallel, runtime
from aigc_jax.configs import load_experiment
from aigc_jax.data import paired
from aigc_jax.errors import UserError
from aigc_jax.evaluation import runner
from aigc_jax.families import get_family
from aigc_jax.families import pix2pix as pix2pix_family
from aigc_jax.models.pix2pix import dropout, unet_depth

EXPERIMENT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "pix2pix.py")
TINY = {"data.base": "digits", "data.image_size": 8, "data.mask_size": 4, "model.g_width": 4, "model.d_width": 4,
        "model.d_layers": 1, "model.num_downsamples": 2, "model.dropout_layers": 1, "batch_size": 8,
        "sample.num": 8}


def tiny(**overrides):
  return load_experiment(EXPERIMENT, "cpu", {**TINY, **overrides})


def assert_batches_equal(a, b):
  assert sorted(a) == sorted(b) == ["input", "label", "target"]
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_inpaint_pairs_are_resumable_and_masked_only_inside_the_square():
  c = tiny()
  batch = data_lib.make_train_iterator(c).batch_at(3)
  resumed = data_lib.make_train_iterator(c, start_batch=3)
  assert_batches_equal(next(resumed), batch)
  assert_batches_equal(resumed.batch_at(3), batch)
  assert batch["input"].shape == batch["target"].shape == (8, 8, 8, 1)

  p = data_lib.load_split(c.data, "train")
  arrays = paired.to_arrays(p, np.arange(len(p)))
  corners = paired.mask_corners(np.arange(len(p)), 8, 4)
  inside = np.zeros((len(p), 8, 8, 1), bool)
  for i, (top, left) in enumerate(corners):
    inside[i, top:top + 4, left:left + 4] = True
  assert np.all(arrays["input"][inside] == 0.0)  # the hole is exactly mid-grey
  np.testing.assert_array_equal(arrays["input"][~inside], arrays["target"][~inside])  # untouched elsewhere
  assert len({tuple(c) for c in corners}) == 25  # every one of the 5x5 positions is used
  np.testing.assert_array_equal(paired.mask_corners(np.arange(len(p)), 8, 4), corners)

  # Flips and jitter crops move input, target and hole together, seeded by stream position.
  jittered = paired.PairedBatches(p, 16, 0, random_flip=True, jitter_scale=1.5)
  b = jittered.batch_at(5)
  assert_batches_equal(b, paired.PairedBatches(p, 16, 0, random_flip=True, jitter_scale=1.5).batch_at(5))
  assert b["input"].shape == (16, 8, 8, 1)
  hole = b["input"] == 0.0
  assert hole.any() and not hole.all()
  np.testing.assert_array_equal(b["input"][~hole], b["target"][~hole])


def test_edges_luma_and_colorize_needs_colour():
  square = np.zeros((1, 8, 8, 3), np.uint8)
  square[0, 2:6, 2:6] = 255
  edges = paired.sobel_edges(square)[0, :, :, 0]
  assert edges.dtype == np.uint8 and set(np.unique(edges)) == {0, 255}
  assert edges[0, 0] == 255 and edges[7, 7] == 255  # flat background: no edge
  assert edges[2, 3] == 0 and edges[1, 3] == 0  # both sides of the square's top border
  assert paired.luma(np.array([[[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]], np.uint8))[0, 0, :, 0].tolist() == \
      [76, 150, 29]
  p = data_lib.load_split(tiny(**{"data.task": "edges"}).data, "test")
  assert p.inputs.shape[-1] == 1 and set(np.unique(p.inputs)) <= {0, 255} and p.targets.shape[-1] == 1
  with pytest.raises(UserError, match=r"colorize.*data\.channels=1.*data\.base='digits'"):
    get_family(tiny(**{"data.task": "colorize"}))


def _png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _folder_config(path, **overrides):
  return load_experiment(EXPERIMENT, "paper", {"data.path": str(path), "data.image_size": 8, **overrides}).data


def test_paired_folder_layouts_directions_and_shape_errors(tmp_path):
  red, blue = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)
  red[..., 0], blue[..., 2] = 200, 100
  _png(str(tmp_path / "ab" / "train" / "x.png"), np.concatenate([red, blue], axis=1))  # A|B side by side
  _png(str(tmp_path / "split" / "A" / "train" / "x.png"), red)
  _png(str(tmp_path / "split" / "B" / "train" / "x.png"), blue)
  for layout in ("ab", "split"):
    a_to_b = data_lib.load_split(_folder_config(tmp_path / layout, **{"data.direction": "AtoB"}), "train")
    np.testing.assert_array_equal(a_to_b.inputs[0], red)
    np.testing.assert_array_equal(a_to_b.targets[0], blue)
    b_to_a = data_lib.load_split(_folder_config(tmp_path / layout), "train")  # the paper preset: BtoA
    np.testing.assert_array_equal(b_to_a.inputs[0], blue)
  _png(str(tmp_path / "bad" / "A" / "train" / "x.png"), red)
  _png(str(tmp_path / "bad" / "B" / "train" / "x.png"), blue[:6, :6])
  with pytest.raises(UserError, match="same size"):
    data_lib.load_split(_folder_config(tmp_path / "bad"), "train")
  _png(str(tmp_path / "odd" / "train" / "x.png"), np.zeros((8, 15, 3), np.uint8))
  with pytest.raises(UserError, match="odd width"):
    data_lib.load_split(_folder_config(tmp_path / "odd"), "train")
  with pytest.raises(UserError, match="differ"):
    paired.PairedSet(np.zeros((2, 8, 8, 1), np.uint8), np.zeros((2, 8, 6, 1), np.uint8))


def test_unet_depth_size_errors_and_per_example_dropout():
  assert unet_depth(256) == 8 and unet_depth(12, 2) == 2
  for size, downs in ((12, 0), (12, 3)):
    with pytest.raises(ValueError):
      unet_depth(size, downs)
  with pytest.raises(UserError, match=r"data\.image_size=12.*model\.num_downsamples=0"):
    get_family(tiny(**{"data.image_size": 12, "model.num_downsamples": 0}))
  h = np.ones((3, 4, 4, 8), np.float32)
  keys = jax.random.split(jax.random.key(1), 3)
  out = np.asarray(dropout(h, keys, 0, 0.5))
  assert set(np.unique(out)) == {0.0, 2.0} and 0.3 < np.mean(out == 0) < 0.7  # inverted dropout at rate 0.5
  np.testing.assert_array_equal(np.asarray(dropout(h[1:], keys[1:], 0, 0.5)), out[1:])  # per-example masks
  assert not np.array_equal(np.asarray(dropout(h, keys, 1, 0.5)), out)  # each layer its own mask


_COMPILED = {}


def compiled(num_devices):
  """(family, mesh, jitted init, data-parallel step), built once per device count."""
  if num_devices not in _COMPILED:
    family = get_family(tiny())
    mesh = Mesh(np.asarray(jax.devices()[:num_devices]), (parallel.DATA_AXIS,))
    _COMPILED[num_devices] = family, mesh, jax.jit(family.init), parallel.data_parallel(family.train_step, mesh)
  return _COMPILED[num_devices]


def run_steps(num_devices, num_steps=2):
  """(family, mesh, state, metrics) after `num_steps` train steps on fixed random pairs (host arrays)."""
  family, mesh, init, step_fn = compiled(num_devices)
  state = parallel.replicate(init(jax.random.key(0), data_lib.example_batch(tiny())), mesh)
  metrics = None
  for i in range(num_steps):
    rng = np.random.default_rng(i)
    batch = {"input": rng.uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32),
             "target": rng.uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32), "label": np.zeros(8, np.int32)}
    state, metrics = step_fn(state, parallel.shard_batch(batch, mesh), jax.random.key(100 + i))
    jax.block_until_ready(metrics)
  return family, mesh, jax.device_get(state), jax.device_get(metrics)


def test_train_step_on_8_devices_equals_1_device():
  _, _, init, _ = run_steps(1, 0)
  _, _, one, metrics_one = run_steps(1)
  _, _, eight, metrics_eight = run_steps(8)
  assert sorted(metrics_one) == ["d_loss", "g_adv", "g_loss", "l1", "learning_rate", "logits_fake", "logits_real",
                                 "psnr"]
  for net in ("generator", "discriminator"):
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(init[net]["params"]),
                                                      jax.tree.leaves(one[net]["params"])))
  for a, b in zip(jax.tree.leaves((one, metrics_one)), jax.tree.leaves((eight, metrics_eight))):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  assert int(eight["step"]) == 2


def test_sample_strips_eval_metrics_and_refused_sample_metrics():
  family, mesh, state, _ = run_steps(8)
  config = tiny()
  strips = runtime.make_sampler(family, mesh)(parallel.replicate(state, mesh), jax.random.key(0), 8)["images"]
  assert strips.shape == (8, 8, 24, 1)
  test = paired.to_arrays(data_lib.load_split(config.data, "test"), np.arange(8))
  np.testing.assert_array_equal(strips[..., :8, :], test["input"])   # masked input | output | target
  np.testing.assert_array_equal(strips[..., 16:, :], test["target"])
  assert np.all(np.abs(strips[..., 8:16, :]) <= 1)

  values = family.evaluate_split(parallel.replicate(state, mesh), mesh, "test")
  assert {"l1", "psnr", "input_l1", "input_psnr", "num_examples"} <= set(values) and values["num_examples"] == 297
  everything = paired.to_arrays(data_lib.load_split(config.data, "test"), np.arange(297))
  error = np.abs(everything["input"] - everything["target"])
  assert values["input_l1"] == pytest.approx(error.mean(), rel=1e-5)  # every test pair counted once
  assert values["input_psnr"] == pytest.approx(np.mean(10 * np.log10(4 / (error ** 2).mean(axis=(1, 2, 3)))),
                                               rel=1e-5)
  runner.check_eval_config(config, family)
  config.eval.metrics = ("fid",)
  with pytest.raises(UserError, match="score generated samples"):
    runner.check_eval_config(config, family)


def test_write_figures_translates_a_folder_of_inputs(tmp_path):
  state = run_steps(8)[2]
  rng = np.random.default_rng(0)
  for name in ("a.png", "b.png"):
    _png(str(tmp_path / "pairs" / name), rng.integers(0, 255, (8, 16), dtype=np.uint8))  # A|B: 2:1
    _png(str(tmp_path / "plain" / name), rng.integers(0, 255, (8, 8), dtype=np.uint8))
  paths = get_family(tiny(**{"sample.input_dir": str(tmp_path / "pairs")})).write_figures(state, str(tmp_path), 2)
  grid = np.asarray(Image.open(paths[0]))
  assert grid.shape == (2 * 10 + 2, 3 * 8 + 4)  # one input | output | target strip per row
  assert [os.path.basename(p) for p in paths[1:]] == ["a.png", "b.png"]
  assert np.asarray(Image.open(paths[1])).shape == (8, 8)
  plain = paired.read_folder_pairs(str(tmp_path / "plain"), None, "AtoB", 8, 1, 1, allow_unpaired=True)
  assert plain.inputs.shape == (2, 8, 8, 1) and plain.targets.shape == (2, 8, 8, 0)  # inputs without targets
  _png(str(tmp_path / "plain" / "c.png"), rng.integers(0, 255, (8, 16), dtype=np.uint8))
  with pytest.raises(UserError, match="mixes"):
    paired.read_folder_pairs(str(tmp_path / "plain"), None, "AtoB", 8, 1, 1, allow_unpaired=True)


def test_config_errors_are_one_line():
  for overrides, message in (({"data.name": "digits"}, "input/target pairs"),
                             ({"sample.use_ema": True}, "model.ema_decay=0"),
                             ({"model.d_layers": 3}, "no patch"),
                             ({"model.dropout_layers": 2}, "at most 1"),
                             ({"data.mask_size": 9}, "data.mask_size=9"),
                             ({"model.gan_loss": "wgan"}, "model.gan_loss")):
    with pytest.raises(UserError, match=message) as info:
      get_family(tiny(**overrides))
    assert "\n" not in str(info.value)
  assert pix2pix_family.default_config().family == "pix2pix"
