"""The DALL-E-style prior over VQ codes (autoregressive family, data.name=codes): causal mask over the class
prefix and the codes, cached == uncached generation, the guidance formula, codes -> images through the recorded
VQ checkpoint, bits per code, and one-line errors."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from aigc_jax import data as data_lib
from aigc_jax import encoding, parallel, runtime
from aigc_jax.checkpointing import Checkpointer
from aigc_jax.configs import load_experiment, override
from aigc_jax.errors import UserError
from aigc_jax.families import code_prior_ar_lib, code_prior_lib, get_family

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def vq_workdir(tmp_path_factory):
  """An initialised (untrained: the prior needs codes and a decoder, not a good VQ) 16-code VQ-VAE over the
  16x16 digits, saved as step 1, with its train and test codes."""
  workdir = str(tmp_path_factory.mktemp("vq"))
  config = load_experiment(os.path.join(ROOT, "experiments", "vqvae.py"), "cpu", {
      "model.hidden": 16, "model.residual_hidden": 8, "model.num_codes": 16, "model.code_dim": 4,
      "batch_size": 64})
  family = get_family(config)
  state = runtime.init_state(family, config, parallel.make_mesh(config))
  ckpt = Checkpointer(workdir)
  ckpt.save(1, state, {"batches_consumed": 0}, config.to_dict(), force=True)
  ckpt.wait()
  ckpt.close()
  for split in ("train", "test"):
    config.data.split = split
    encoding.encode(config, workdir)
  return workdir


def prior_config(vq_workdir, **overrides):
  c = load_experiment(os.path.join(ROOT, "experiments", "dalle.py"), "cpu")
  c.data.vq_workdir, c.data.num_codes = vq_workdir, 16
  c.model.num_layers, c.model.num_heads, c.model.width = 2, 2, 32
  c.batch_size, c.sample.num = 16, 4
  c.optimizer.warmup_steps = 5
  return override(c, overrides)


@pytest.fixture(scope="module")
def random_prior(vq_workdir):
  """Init and logits jitted (compiled once), not dispatched op by op: the same functions, seconds cheaper."""
  built = code_prior_ar_lib.build(prior_config(vq_workdir))
  params = jax.jit(built.model.init)(jax.random.key(1), jnp.zeros((1, 64), jnp.int32))["params"]
  params = jax.tree.map(lambda p: p * 4.0 if p.ndim >= 2 else p, params)  # logits that differ visibly
  return built, params


def test_code_logits_see_the_prefix_and_earlier_codes_only(random_prior):
  built, params = random_prior
  code_logits = jax.jit(built.code_logits)
  codes = jax.random.randint(jax.random.key(0), (2, 64), 0, 16)
  prefix = built.prefix_tokens(jnp.array([3, 7]))
  a = code_logits(params, codes, prefix)
  assert a.shape == (2, 64, 16)
  t = 20
  b = code_logits(params, codes.at[:, t].set((codes[:, t] + 1) % 16), prefix)
  np.testing.assert_array_equal(a[:, :t + 1], b[:, :t + 1])  # logits of codes 0..t never see code t
  assert np.abs(a[:, t + 1:] - b[:, t + 1:]).max() > 1e-3
  c = code_logits(params, codes, built.prefix_tokens(jnp.array([4, 8])))
  assert np.abs(a - c).min(axis=-1).max() > 0 and np.abs(a[:, 0] - c[:, 0]).max() > 1e-3  # the class matters


def test_guidance_formula_and_greedy_first_code(vq_workdir, random_prior):
  _, params = random_prior
  cond, uncond = jnp.array([[1.0, 3.0]]), jnp.array([[2.0, 0.0]])
  np.testing.assert_allclose(code_prior_ar_lib.guided_logits(cond, uncond, 3.0), [[-1.0, 9.0]])
  np.testing.assert_allclose(code_prior_ar_lib.guided_logits(cond, uncond, 1.0), cond)
  built = code_prior_ar_lib.build(prior_config(vq_workdir, **{"sample.temperature": 0.0,
                                                               "sample.guidance_scale": 3.0}))
  prefix = built.prefix_tokens(jnp.arange(4))
  codes = jax.jit(built.generate, static_argnums=3)(params, prefix, jax.random.split(jax.random.key(0), 4), True)
  zeros = jnp.zeros((4, 64), jnp.int32)
  code_logits = jax.jit(built.code_logits)
  first_cond = code_logits(params, zeros, prefix)[:, 0]
  first_uncond = code_logits(params, zeros, jnp.full((4,), 16 + 10))[:, 0]
  np.testing.assert_array_equal(codes[:, 0], jnp.argmax(first_uncond + 3.0 * (first_cond - first_uncond), -1))


@pytest.mark.parametrize("overrides", [{"sample.top_k": 5, "sample.top_p": 0.9},
                                       {"sample.guidance_scale": 2.0, "sample.temperature": 0.7}])
def test_cached_generation_equals_uncached(vq_workdir, random_prior, overrides):
  _, params = random_prior
  built = code_prior_ar_lib.build(prior_config(vq_workdir, **overrides))
  gen = jax.jit(built.generate, static_argnums=3)
  prefix, keys = built.prefix_tokens(jnp.array([0, 5, 9])), jax.random.split(jax.random.key(3), 3)
  cached, uncached = gen(params, prefix, keys, True), gen(params, prefix, keys, False)
  np.testing.assert_array_equal(cached, uncached)
  assert cached.shape == (3, 64) and len(np.unique(cached)) > 3  # sampled, not a constant


def test_training_lowers_bits_per_code_and_samples_decode_through_the_vq(vq_workdir):
  config = prior_config(vq_workdir, **{"sample.label": 2})
  family = get_family(config)
  mesh = Mesh(np.asarray(jax.devices()[:2]), (parallel.DATA_AXIS,))
  state = parallel.replicate(jax.jit(family.init)(jax.random.key(0), data_lib.example_batch(config)), mesh)
  before = family.evaluate_split(state, mesh, "test")
  assert before["num_examples"] == 297 and before["bits_per_code"] > 3.0  # ~log2(16) = 4 at init
  step = parallel.data_parallel(family.train_step, mesh)
  iterator = data_lib.make_train_iterator(config)
  for i in range(30):
    state, metrics = step(state, parallel.shard_batch(next(iterator), mesh), jax.random.key(i))
  after = family.evaluate_split(state, mesh, "test")
  assert after["bits_per_code"] < before["bits_per_code"] - 0.5, (before, after)
  np.testing.assert_allclose(after["bits_per_code"], after["loss"] / np.log(2), rtol=1e-6)
  out = runtime.make_sampler(family, mesh)(state, jax.random.key(0), 4)
  assert out["images"].shape == (4, 16, 16, 1) and list(out["labels"]) == [2, 2, 2, 2]
  # The images are the recorded VQ checkpoint's decoding of the sampled codes.
  built = code_prior_ar_lib.build(config)
  codes = jax.jit(built.generate, static_argnums=3)(jax.device_get(state["params"]), built.prefix_tokens(
      jnp.full((4,), 2)), parallel.keys_for_ids(jax.random.key(0), jnp.arange(4)), True)
  decode, info = code_prior_lib.load_vq_decoder(vq_workdir, 1)
  assert info["step"] == 1 and info["grid"] == (8, 8)
  np.testing.assert_allclose(out["images"], decode(codes.reshape(4, 8, 8)), atol=1e-5)


def one_line_error(match, config):
  with pytest.raises(UserError, match=match) as e:
    get_family(config)
  assert "\n" not in str(e.value)


def test_bad_priors_are_one_line_errors(vq_workdir, tmp_path):
  one_line_error("sample.label=10 is out of range", prior_config(vq_workdir, **{"sample.label": 10}))
  one_line_error("data.num_codes=64 .*16-code", prior_config(vq_workdir, **{"data.num_codes": 64}))
  one_line_error("data.grid_size=4 .*8x8", prior_config(vq_workdir, **{"data.grid_size": 4, "model.block_size": 16}))
  one_line_error("model.block_size=32", prior_config(vq_workdir, **{"model.block_size": 32}))
  one_line_error("model.num_classes=3 .*labels up to 9", prior_config(vq_workdir, **{"model.num_classes": 3}))
  one_line_error("sample.guidance_scale=2.0 needs", prior_config(vq_workdir, **{
      "model.label_dropout": 0.0, "sample.guidance_scale": 2.0}))
  one_line_error("sample.prompt", prior_config(vq_workdir, **{"sample.prompt": "abc"}))
  one_line_error("sample.max_new_tokens=100 is for text.*64 codes", prior_config(vq_workdir, **{
      "sample.max_new_tokens": 100}))
  moved = tmp_path / "codes_only"  # the codes without the VQ checkpoint that wrote them
  shutil.copytree(os.path.join(vq_workdir, "codes"), moved / "codes")
  one_line_error("data.vq_workdir=.*checkpoint 1, which wrote", prior_config(str(moved)))
  one_line_error("no codes of split 'train' .*data.vq_workdir", prior_config(str(tmp_path / "nothing")))
  text = load_experiment(os.path.join(ROOT, "experiments", "gpt.py"), "cpu", {"model.num_classes": 10})
  one_line_error("model.num_classes=10 applies to priors over VQ codes", text)
