"""Data parallelism: a step on 8 (forced CPU) devices equals the step on 1 device for the same global batch,
and a fixed seed gives bit-identical params."""
import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from aigc_jax import parallel, trainer
from aigc_jax.configs import load_experiment
from aigc_jax.families import get_family

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiment_config(name, preset="cpu"):
  return load_experiment(os.path.join(ROOT, "experiments", f"{name}.py"), preset)


def tiny_dcgan():
  c = experiment_config("dcgan")
  c.model.g_width = 8
  c.model.d_width = 8
  c.model.z_dim = 16
  c.data.image_size = 8
  c.batch_size = 8
  return c


def tiny_mlp_gan():
  c = experiment_config("gan")
  c.model.g_hidden = (32, 32)
  c.model.d_hidden = (16, 16)
  c.model.d_pieces = 2
  c.model.z_dim = 16
  c.model.d_input_dropout = 0.2
  c.model.d_hidden_dropout = 0.5
  c.data.image_size = 8
  c.batch_size = 8
  return c


def tiny_mlp_wgan_gp_packed():
  """The zoo's per-example paths together: WGAN-GP's interpolates and input gradients, PacGAN packing, dropout.

  It is also the dropout MLP's case: the plain MLP (tiny_mlp_gan, the standard loss) ran as a fourth case, but its
  per-example paths (dropout keys by global example index, the maxout D, the pmean) are this case's with pack=1,
  and the standard loss's 8 == 1 is dcgan's; it cost 13 CPU-s."""
  c = tiny_mlp_gan()
  c.model.loss = "wasserstein"
  c.model.gradient_penalty = "wgan_gp"
  c.model.pack = 2
  c.model.d_steps = 2
  c.batch_size = 16  # 2 per device on 8: whole packs on every device
  return c


def tiny_conditional_sngan():
  """Conditional SN-GAN: conditional batch norm in G, spectral norm (power-iteration state) and the projection
  head in D, hinge loss, uniform random fake classes."""
  c = experiment_config("cgan_projection")
  c.model.g_width = 4
  c.model.d_width = 4
  c.model.z_dim = 8
  c.data.image_size = 8
  c.batch_size = 8
  return c


def real_batch(config, step):
  rng = np.random.default_rng(step)
  d = config.data
  k = config.model.d_steps
  shape = (config.batch_size,) + ((k,) if k > 1 else ()) + (d.image_size, d.image_size, d.channels)
  image = rng.uniform(-1, 1, shape).astype(np.float32)
  return {"image": image, "label": rng.integers(0, 10, shape[:len(shape) - 3]).astype(np.int32)}


_COMPILED = {}


def compiled(config, devices):
  """(family, mesh, step_fn), built once per architecture and device count: the seed only enters through
  the keys passed in, so reruns reuse the compiled step."""
  key = (config.model.to_json(), config.batch_size, len(devices))
  if key not in _COMPILED:
    family = get_family(config)
    mesh = Mesh(np.asarray(devices), (parallel.DATA_AXIS,))
    _COMPILED[key] = family, mesh, parallel.data_parallel(family.train_step, mesh), jax.jit(family.init)
  return _COMPILED[key]


def run_steps(config, devices, num_steps):
  """Params after `num_steps` data-parallel train steps on a mesh over `devices` (host numpy)."""
  assert len(jax.devices()) == 8, "conftest forces 8 CPU devices"
  family, mesh, step_fn, init = compiled(config, devices)
  example = real_batch(config, 0)
  if family.batches_per_step > 1:  # init sees one batch; train steps see d_steps of them stacked
    example = {k: v[:, 0] for k, v in example.items()}
  state = parallel.replicate(init(trainer.run_keys(config)[0], example), mesh)
  metrics = None
  for step in range(num_steps):
    batch = parallel.shard_batch(real_batch(config, step), mesh)
    state, metrics = step_fn(state, batch, trainer.step_rng(config, step))
    jax.block_until_ready(metrics)  # ARCHITECTURE.md: queued collectives deadlock XLA:CPU with forced devices
  return jax.device_get(state), jax.device_get(metrics)


def assert_trees_close(a, b, **tol):
  leaves_a, tree_a = jax.tree.flatten_with_path(a)
  leaves_b, tree_b = jax.tree.flatten_with_path(b)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path), **tol)


@pytest.mark.parametrize("make_config", [tiny_dcgan, tiny_mlp_wgan_gp_packed, tiny_conditional_sngan],
                         ids=["dcgan", "mlp_wgan_gp_pack2", "conditional_sngan"])
def test_eight_devices_equal_one_device(make_config):
  config = make_config()
  one, metrics_one = run_steps(config, jax.devices()[:1], 2)
  eight, metrics_eight = run_steps(config, jax.devices(), 2)
  # The step changed something (otherwise equality would be vacuous) ...
  init, _ = run_steps(config, jax.devices()[:1], 0)
  for net in ("generator", "discriminator"):
    assert not all(np.allclose(x, y) for x, y in zip(jax.tree.leaves(init[net]["params"]),
                                                      jax.tree.leaves(one[net]["params"])))
  # ... and 8 devices did the same thing: every param, optimiser moment, EMA and batch statistic.
  assert_trees_close(one, eight, rtol=2e-4, atol=2e-6)
  assert_trees_close(metrics_one, metrics_eight, rtol=2e-4, atol=2e-6)
  assert int(eight["step"]) == 2


def test_same_seed_bit_identical_params():
  config = tiny_dcgan()
  a, _ = run_steps(config, jax.devices(), 3)
  b, _ = run_steps(config, jax.devices(), 3)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  config.seed = 1
  c, _ = run_steps(config, jax.devices(), 3)
  assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a["generator"]["params"]),
                                                       jax.tree.leaves(c["generator"]["params"])))


def test_default_host_devices_is_one_per_core_unless_xla_flags_sets_a_count(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  cores = parallel.default_host_devices()
  assert cores >= 1 and os.environ["XLA_FLAGS"] == (
      f"--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count={cores}")
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
  assert parallel.default_host_devices() == 0 and os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=3"


def test_mesh_size_on_cpu_is_the_most_devices_that_divide_the_batch():
  assert jax.device_count() == 8  # tests/conftest.py
  assert [parallel.mesh_size(b) for b in (8, 16, 12, 9, 7, 1)] == [8, 8, 6, 3, 7, 1]
  assert parallel.mesh_size(12, num_devices=4) == 4
  with pytest.raises(trainer.UserError, match="num_devices 9, but there are 8 devices"):
    parallel.mesh_size(8, num_devices=9)


def test_a_batch_the_devices_do_not_divide_trains_as_on_one_device(tmp_path):
  """Batch 12 on 8 CPU devices runs on 6 of them (the automatic rule) and ends where 1 device ends: the same
  per-example keys, only the order of the final float sums differs (allclose, not bit-identical)."""
  final = {}
  for name, num_devices in (("auto", 0), ("one", 1)):
    config = tiny_dcgan()
    config.batch_size, config.num_train_steps, config.num_devices = 12, 3, num_devices
    config.sample_every_steps, config.log_every_steps, config.checkpoint_every_steps = 0, 3, 3
    assert parallel.make_mesh(config).devices.size == (6 if name == "auto" else 1)
    final[name] = jax.device_get(trainer.train_and_evaluate(config, str(tmp_path / name)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), final["auto"], final["one"])


def test_compilation_cache_defaults_to_the_user_cache_dir_unless_the_environment_says(monkeypatch, tmp_path):
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
  assert parallel.enable_compilation_cache() == ""  # empty: off, and the config is left alone
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  before = jax.config.jax_compilation_cache_dir
  try:
    assert parallel.enable_compilation_cache() == str(tmp_path / "aigc_jax" / "xla")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "aigc_jax" / "xla")
    assert (tmp_path / "aigc_jax" / "xla").is_dir()
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
