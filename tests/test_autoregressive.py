"""The autoregressive family: causal mask, KV cache, tokenisers, learning, data parallelism, bad input."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from aigc_jax import data as data_lib
from aigc_jax import media, parallel, trainer
from aigc_jax.configs import load_experiment, override
from aigc_jax.data import text
from aigc_jax.errors import UserError
from aigc_jax.families import autoregressive as ar
from aigc_jax.media.text import TEXT_SEPARATOR
from aigc_jax.models import transformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATTERN = "abcdefgh\n" * 400


def gpt_config(path, **overrides):
  c = load_experiment(os.path.join(ROOT, "experiments", "gpt.py"), "cpu")
  c.data.name, c.data.path = "text_file", str(path)
  c.batch_size, c.model.block_size, c.model.num_layers, c.model.num_heads, c.model.width = 8, 16, 2, 2, 32
  c.sample.num, c.sample.max_new_tokens = 2, 24
  c.optimizer.warmup_steps, c.optimizer.decay_steps = 10, 300
  return override(c, overrides)


@pytest.fixture(scope="module")
def pattern_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("text") / "pattern.txt"
  path.write_text(PATTERN)
  return path


@pytest.fixture(scope="module")
def random_model(pattern_file):
  """(built, sharpened random params, jitted apply): compiled whole, not dispatched op by op (~6 CPU-s less)."""
  built = ar.build(gpt_config(pattern_file))
  params = jax.jit(built.model.init)(jax.random.key(1), jnp.zeros((1, 16), jnp.int32))["params"]
  # Sharpen the random init so logits differ visibly between tokens.
  params = jax.tree.map(lambda p: p * 4.0 if p.ndim >= 2 else p, params)
  apply = jax.jit(lambda params, tokens, cache=None, cache_pos=0: built.model.apply(
      {"params": params}, tokens, cache=cache, cache_pos=cache_pos))
  return built, params, apply


def test_changing_token_t_never_changes_earlier_logits(random_model):
  built, params, apply = random_model
  tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, built.tokenizer.vocab_size)
  t = 9
  changed = tokens.at[:, t].set((tokens[:, t] + 1) % built.tokenizer.vocab_size)
  a = apply(params, tokens)
  b = apply(params, changed)
  np.testing.assert_array_equal(a[:, :t], b[:, :t])
  assert np.abs(a[:, t:] - b[:, t:]).max() > 1e-3


def test_cached_logits_equal_uncached(random_model):
  built, params, apply = random_model
  model = built.model
  tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, built.tokenizer.vocab_size)
  full = apply(params, tokens)
  cache = model.empty_cache(2)
  prefill, cache = apply(params, tokens[:, :5], cache, 0)
  steps = [prefill]
  for i in range(5, 16):  # the position is traced: one compiled program for every cached step
    logits, cache = apply(params, tokens[:, i:i + 1], cache, i)
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=2e-5, rtol=1e-5)


def test_cached_generation_matches_recomputation(pattern_file, random_model):
  _, params, _ = random_model
  # 40 new tokens > context 16: also crosses the cache restarts.
  for overrides in ({"sample.temperature": 0.0}, {"sample.temperature": 1.0, "sample.top_k": 5, "sample.top_p": 0.9}):
    built = ar.build(gpt_config(pattern_file, **{"sample.prompt": "abc", **overrides}))
    keys = parallel.keys_for_ids(jax.random.key(3), jnp.arange(3))
    gen = jax.jit(built.generate, static_argnums=(3, 4))
    cached, uncached = gen(params, built.prompt, keys, 40, True), gen(params, built.prompt, keys, 40, False)
    np.testing.assert_array_equal(cached, uncached)
    assert cached.shape == (3, 43) and built.tokenizer.decode(cached[0, :3]) == "abc"


def test_top_k_1_and_tiny_top_p_are_greedy():
  logits = jax.random.normal(jax.random.key(0), (4, 30)) * 3
  for k, p in ((1, 1.0), (0, 1e-6)):
    kept = ar.filter_logits(logits, 1.0, k, p)
    assert np.all(np.isfinite(kept).sum(-1) == 1)
    np.testing.assert_array_equal(jnp.argmax(kept, -1), jnp.argmax(logits, -1))


def test_tokenizer_round_trip_and_table_decoding():
  sample = "To be, or not to be — ünïcödé 🎭\n"
  char = text.Tokenizer("char", "".join(sorted(set(sample))))
  for tok in (char, text.Tokenizer("byte")):
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample
    assert text.decode_with_table(ids, tok.table()) == sample
  assert text.Tokenizer("byte").vocab_size == 256 and len(text.Tokenizer("byte").encode("🎭")) == 4


def test_windows_are_deterministic_resumable_and_split_across_hosts():
  tokens = np.arange(1000, dtype=np.int32)
  it = text.TextBatchIterator(tokens, 16, 8, seed=5)
  batches = [next(it)["tokens"] for _ in range(4)]
  assert it.batches_consumed == 4
  resumed = text.TextBatchIterator(tokens, 16, 8, seed=5, start_batch=2)
  np.testing.assert_array_equal(next(resumed)["tokens"], batches[2])
  hosts = [text.TextBatchIterator(tokens, 16, 8, seed=5, process_index=h, process_count=2).batch_at(3)["tokens"]
           for h in range(2)]
  np.testing.assert_array_equal(np.concatenate(hosts), batches[3])
  assert batches[0].shape == (8, 17) and np.all(np.diff(batches[0], axis=1) == 1)  # contiguous windows


def test_loss_on_repeated_pattern_falls_near_zero(pattern_file):
  config = gpt_config(pattern_file)
  family = ar.make_family(config)
  mesh = Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))
  state = jax.jit(family.init)(jax.random.key(0), data_lib.example_batch(config))
  step = parallel.data_parallel(family.train_step, mesh)
  iterator = data_lib.make_train_iterator(config)
  losses = []
  for i in range(250):
    state, metrics = step(state, parallel.shard_batch(next(iterator), mesh), jax.random.key(i))
    losses.append(float(metrics["loss"]))
  assert losses[0] > 1.5 and np.mean(losses[-10:]) < 0.1, (losses[0], losses[-10:])
  val = ar.evaluate_split(config, family, state, mesh, num_batches=2)
  assert val["loss"] < 0.1 and val["perplexity"] < 1.11
  np.testing.assert_allclose(val["bits_per_char"], val["loss"] / np.log(2))


def test_eight_device_step_equals_one_device_step(pattern_file):
  assert jax.device_count() == 8
  # Dropout (attention probabilities too): masks from global example indices must not depend on the devices.
  config = gpt_config(pattern_file, **{"model.dropout": 0.3, "model.attention_dropout": 0.2})
  family = ar.make_family(config)
  state = jax.jit(family.init)(jax.random.key(0), data_lib.example_batch(config))
  batch = data_lib.make_train_iterator(config).batch_at(0)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = Mesh(np.asarray(devices), (parallel.DATA_AXIS,))
    step = parallel.data_parallel(family.train_step, mesh, donate_state=False)
    results.append(jax.device_get(step(parallel.replicate(state, mesh), parallel.shard_batch(batch, mesh),
                                       jax.random.key(7))))
  (one, m1), (eight, m8) = results
  np.testing.assert_allclose(m1["loss"], m8["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4), one["params"], eight["params"])


def test_explicit_attention_equals_dot_product_attention_and_dropout_rows_are_per_example():
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 5, 2, 4))
  for causal in (True, False):
    expected = jax.nn.dot_product_attention(q, k, v, is_causal=causal)
    np.testing.assert_allclose(transformer.explicit_attention(q, k, v, causal, lambda p: p), expected, atol=1e-5)
  model = transformer.GPT(vocab_size=7, block_size=6, num_layers=1, num_heads=2, width=8, dropout=0.3,
                          attention_dropout=0.3)
  tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 7)
  params = jax.jit(model.init)(jax.random.key(2), tokens)["params"]
  apply = jax.jit(lambda t, ids: model.apply({"params": params}, t, train=True, rngs={"dropout": jax.random.key(3)},
                                             example_ids_B=jnp.asarray(ids)))
  both = apply(tokens, [4, 9])
  np.testing.assert_allclose(apply(tokens[::-1], [9, 4])[::-1], both, atol=1e-5)  # masks follow the index
  other = apply(tokens, [5, 10])  # other indices, other masks: dropout acted
  assert not np.allclose(other[0], both[0], atol=1e-3) and not np.allclose(other[1], both[1], atol=1e-3)


def test_train_then_sample_writes_text_with_the_checkpoint_vocab(pattern_file, tmp_path, capsys):
  config = gpt_config(pattern_file, **{"num_train_steps": 3, "sample_every_steps": 3, "log_every_steps": 3})
  trainer.train_and_evaluate(config, str(tmp_path))
  assert (tmp_path / "samples" / "3.txt").exists()
  config.sample.prompt = "abc"
  samples = trainer.sample(config, str(tmp_path))
  written = (tmp_path / "samples" / "3.txt").read_text()
  assert written.startswith("abc") and written.count(TEXT_SEPARATOR) == 1
  assert samples["text"].shape == (2, 27) and "abc" in capsys.readouterr().out


def test_bad_input_raises_one_line_user_errors(pattern_file, tmp_path):
  cases = [
      ({"sample.prompt": "xyz"}, "not in the"),
      ({"sample.prompt": "abc" * 10}, "longer than the model's context"),
      ({"sample.top_p": 0.0}, "top_p"),
      ({"sample.top_p": 1.5}, "top_p"),
      ({"model.attention_dropout": 1.0}, "model.attention_dropout must be in"),
  ]
  for overrides, message in cases:
    with pytest.raises(UserError, match=message) as e:
      ar.build(gpt_config(pattern_file, **overrides))
    assert "\n" not in str(e.value)
  ar.build(gpt_config(pattern_file, **{"data.tokenizer": "byte", "sample.prompt": "xyz ünï"}))  # never fails
  empty = tmp_path / "empty.txt"
  empty.write_text("  \n")
  with pytest.raises(UserError, match="is empty"):
    ar.build(gpt_config(empty))
  with pytest.raises(UserError, match="not found"):
    ar.build(gpt_config(tmp_path / "missing.txt"))
