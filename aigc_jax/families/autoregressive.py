"""Autoregressive text: a GPT trained on next-token cross-entropy, sampled with a key/value cache.

State: {step, params, opt_state, vocab_table}. `vocab_table` (int32 [V], see data.text.Tokenizer.table) rides
in the checkpoint so samples decode exactly as the model was trained, and every sample carries it to
`aigc_jax.media`, which writes the text. Optimiser: AdamW, warm-up + cosine decay, weight decay on matrices
only, gradient clipping (aigc_jax.optim).

Generation is one compiled `lax.scan`: the prompt is prefilled into the cache, then each step feeds one
token. When the context is full the cache restarts from the last block_size // 2 tokens (learned absolute
positions cannot slide), and the uncached reference (`cached=False`) recomputes exactly those contexts, so
the two agree token for token.
"""
import dataclasses
import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from aigc_jax import configs, optim, parallel
from aigc_jax.data import text
from aigc_jax.errors import UserError
from aigc_jax.families import Family, check_sample_label
from aigc_jax.families.gpt_lib import build_gpt
from aigc_jax.families.token_sampling_lib import (TEXT_MAX_NEW_TOKENS, check_sampling, filter_logits,  # noqa: F401
                                                 pick_tokens)
from aigc_jax.models.transformer import GPT
from aigc_jax.parallel import DATA_AXIS, example_ids, keys_for_ids, masked_mean


def default_config() -> ConfigDict:
  """`configs.base_config()` plus every key this family reads (nanoGPT's Shakespeare-char GPT and AdamW, on
  offline text); experiments/gpt.py overrides it."""
  c = configs.base_config()
  c.family = "autoregressive"
  c.num_train_steps = 5000
  c.data.name = "python_stdlib"    # tiny_shakespeare (TFDS) | text_file (data.path) | python_stdlib (offline)
  c.data.tokenizer = "char"        # char | byte
  c.data.vocab = ""                # char vocabulary; "" = every character of the text
  m = c.model
  m.block_size = 256               # context length in tokens
  m.num_layers = 6
  m.num_heads = 6
  m.width = 384                    # residual stream width, divisible by num_heads
  m.dropout = 0.2                  # embeddings, attention output, MLP output
  m.attention_dropout = 0.0        # attention probabilities (nanoGPT's attn_dropout); > 0 trains without flash
  m.use_bias = False               # biases in linear layers and layer norms
  m.attention_impl = ""            # "" = explicit einsums | xla | cudnn (flash attention on NVIDIA GPUs)
  # data.name = "codes": a DALL-E-style prior over a VQ run's code grids (families/code_prior_ar_lib.py).
  c.data.vq_workdir = "runs/vqgan_cpu"  # the VQ run whose --mode=encode codes the prior models
  c.data.num_codes = 512           # its codebook size (checked against the code file)
  c.data.grid_size = 16            # side of its code grids (checked); model.block_size = grid_size ** 2
  m.num_classes = 0                # codes: > 0 = a class token before the codes; 0 = unconditional
  m.label_dropout = 0.0            # codes: probability of training with the null token (classifier-free guidance)

  c.optimizer = optim.optimizer_config(
      name="adamw", learning_rate=1e-3, min_learning_rate=1e-4, b2=0.99, weight_decay=0.1, schedule="cosine",
      warmup_steps=100, decay_steps=5000, grad_clip_norm=1.0)

  c.sample.num = 2
  c.sample.use_ema = False         # no EMA in this family
  c.sample.prompt = ""             # "" = start from a newline
  c.sample.max_new_tokens = TEXT_MAX_NEW_TOKENS
  c.sample.temperature = 0.8       # 0 = greedy
  c.sample.top_k = 200             # 0 = off
  c.sample.top_p = 1.0             # 1 = off
  c.sample.guidance_scale = 1.0    # codes: uncond + scale (cond - uncond); != 1 needs model.label_dropout > 0
  c.eval.metrics = ("eval_step",)  # loss, perplexity, bits/char on the validation split
  c.eval.reference_split = "validation"
  c.eval.text_batches = 200        # validation windows of batch_size per evaluation (nanoGPT's eval_iters)
  return c


def encode_prompt(tokenizer: text.Tokenizer, prompt: str, block_size: int) -> np.ndarray:
  """Prompt ids; an empty prompt starts from a newline (as nanoGPT does) or token 0."""
  if not prompt:
    ids = tokenizer.encode("\n") if tokenizer.kind == "byte" or "\n" in tokenizer.chars else np.zeros(1, np.int32)
  else:
    ids = tokenizer.encode(prompt)
  if len(ids) > block_size:
    raise UserError(f"sample.prompt is {len(ids)} tokens, longer than the model's context of {block_size}; "
                    "shorten the prompt")
  return ids


def make_generate(model: GPT, s: ConfigDict):
  """generate(params, prompt_P, keys_B, max_new_tokens, cached) -> int32 [B, P + max_new_tokens]."""
  block = model.block_size
  keep = max(block // 2, 2)
  pick = lambda logits_BxV, keys_B, n: pick_tokens(logits_BxV, keys_B, n, s)

  def generate(params, prompt_P, keys_B, max_new_tokens: int, cached: bool = True):
    b, p = keys_B.shape[0], len(prompt_P)
    buf_BxN = jnp.zeros((b, p + max_new_tokens + block), jnp.int32)  # + block: room for fixed-size slices
    buf_BxN = buf_BxN.at[:, :p].set(jnp.asarray(prompt_P, jnp.int32)[None])

    def apply_cached(tokens_BxT, cache, pos):
      return model.apply({"params": params}, tokens_BxT, cache=cache, cache_pos=pos)

    if cached:
      # Invariant: the cache holds every context token but the newest, buf[n - 1], at positions < pos.
      cache = model.empty_cache(b)
      if p > 1:
        _, cache = apply_cached(buf_BxN[:, :p - 1], cache, 0)

      def restart(args):
        buf_BxN, n, _, _ = args
        window_BxW = jax.lax.dynamic_slice_in_dim(buf_BxN, n - keep, keep - 1, axis=1)
        _, cache = apply_cached(window_BxW, model.empty_cache(b), 0)
        return cache, jnp.int32(keep - 1)

      def step(carry, _):
        buf_BxN, n, cache, pos = carry
        cache, pos = jax.lax.cond(pos == block, restart, lambda a: (a[2], a[3]), (buf_BxN, n, cache, pos))
        last_Bx1 = jax.lax.dynamic_slice_in_dim(buf_BxN, n - 1, 1, axis=1)
        logits_Bx1xV, cache = apply_cached(last_Bx1, cache, pos)
        next_B = pick(logits_Bx1xV[:, 0], keys_B, n)
        buf_BxN = jax.lax.dynamic_update_slice_in_dim(buf_BxN, next_B[:, None], n, axis=1)
        return (buf_BxN, n + 1, cache, pos + 1), None

      carry = (buf_BxN, jnp.int32(p), cache, jnp.int32(p - 1))
    else:
      def step(carry, _):
        buf_BxN, n, start = carry
        start = jnp.where(n - start > block, n - keep, start)  # the cached path's restart rule
        context_BxS = jax.lax.dynamic_slice_in_dim(buf_BxN, start, block, axis=1)
        logits_BxSxV = model.apply({"params": params}, context_BxS)
        logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxSxV, n - 1 - start, axis=1, keepdims=False)
        next_B = pick(logits_BxV, keys_B, n)
        buf_BxN = jax.lax.dynamic_update_slice_in_dim(buf_BxN, next_B[:, None], n, axis=1)
        return (buf_BxN, n + 1, start), None

      carry = (buf_BxN, jnp.int32(p), jnp.int32(0))
    carry, _ = jax.lax.scan(step, carry, None, length=max_new_tokens)
    return carry[0][:, :p + max_new_tokens]

  return generate


def build(config: ConfigDict):
  """The family plus the pieces tests and bench/ reach for (model, tokenizer, generate, encoded prompt)."""
  m, s = config.model, config.sample
  check_sampling(s)
  check_sample_label(config, 0)
  for key, value, off in (("model.num_classes", m.num_classes, 0), ("model.label_dropout", m.label_dropout, 0.0),
                          ("sample.guidance_scale", s.guidance_scale, 1.0)):
    if value != off:
      raise UserError(f"{key}={value} applies to priors over VQ codes (data.name=codes), not to text; set "
                      f"--config.{key}={off}")
  tokenizer = text.make_tokenizer(config.data)
  vocab_table = tokenizer.table()
  model = build_gpt(config, tokenizer.vocab_size)
  prompt_P = encode_prompt(tokenizer, s.prompt, m.block_size)
  tx, schedule = optim.make_optimizer(config.optimizer)
  generate = make_generate(model, s)
  unit = "bits_per_char" if tokenizer.kind == "char" else "bits_per_byte"

  def token_losses(params, tokens_BxT1, train=False, rng=None):
    """Per-token cross-entropy [B, T] in nats."""
    inputs_BxT, targets_BxT = tokens_BxT1[:, :-1], tokens_BxT1[:, 1:]
    if train and (m.dropout > 0 or m.attention_dropout > 0):
      # Masks from (rng, call site, global example index): they do not depend on the device split.
      logits_BxTxV = model.apply({"params": params}, inputs_BxT, train=True, rngs={"dropout": rng},
                                 example_ids_B=example_ids(inputs_BxT.shape[0]))
    else:
      logits_BxTxV = model.apply({"params": params}, inputs_BxT)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)

  def init(rng, example_batch):
    params = model.init(rng, example_batch["tokens"][:, :-1])["params"]
    return {"step": jnp.zeros((), jnp.int32), **optim.init_train_state(params, tx, ema=False),
            "vocab_table": jnp.asarray(vocab_table)}

  def train_step(state, batch, rng):
    tokens = batch["tokens"]
    loss_fn = lambda params: jnp.mean(token_losses(params, tokens, train=True, rng=rng))
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    new_state, grad_norm = optim.apply_gradients(state, grads, tx, state["step"])
    new_state["step"] = state["step"] + 1
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state["step"])}
    return new_state, jax.lax.pmean(metrics, DATA_AXIS)

  def eval_step(state, batch, rng):
    """Mean next-token loss (nats), perplexity and bits per char/byte; `batch['mask']` marks real rows."""
    del rng
    losses_B = jnp.mean(token_losses(state["params"], batch["tokens"]), axis=-1)
    loss = masked_mean(losses_B, batch, losses_B.shape[0])
    return {"loss": loss, "perplexity": jnp.exp(loss), unit: loss / math.log(2)}

  def sample(state, rng, ids_B, cached=True):
    tokens_BxN = generate(state["params"], prompt_P, keys_for_ids(rng, ids_B), s.max_new_tokens, cached)
    return {"text": tokens_BxN, "text_vocab": jnp.broadcast_to(state["vocab_table"],
                                                               (len(ids_B),) + state["vocab_table"].shape)}

  family = Family(init=init, train_step=train_step, sample=sample, eval_step=eval_step)
  family = dataclasses.replace(family, evaluate_split=lambda state, mesh, split: evaluate_split(
      config, family, state, mesh, split))
  return types.SimpleNamespace(family=family, model=model, tokenizer=tokenizer, generate=generate,
                               prompt=prompt_P, token_losses=token_losses)


def make_family(config: ConfigDict) -> Family:
  if config.data.name == "codes":
    from aigc_jax.families import code_prior_ar_lib
    return code_prior_ar_lib.build(config).family
  return build(config).family


@functools.lru_cache(maxsize=8)
def _sharded_eval_step(eval_step, mesh):
  """One jitted function per (family, mesh), so evaluating every eval.every_steps compiles once, not each time."""
  return jax.jit(jax.shard_map(eval_step, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=P(),
                               check_vma=False))


def evaluate_split(config: ConfigDict, family: Family, state, mesh, split: str = "validation",
                   num_batches: int = None) -> dict:
  """Mean loss / perplexity / bits over `num_batches` random windows of `split` (nanoGPT's estimate_loss),
  deterministic given eval.seed."""
  n_dev = mesh.devices.size
  bs = -(-config.batch_size // n_dev) * n_dev
  it = text.TextBatchIterator(text.load_tokens(config.data, split), config.model.block_size, bs,
                              config.eval.seed + 1_000_003)
  step_fn = _sharded_eval_step(family.eval_step, mesh)
  losses = [float(jax.device_get(step_fn(state, parallel.shard_batch(next(it), mesh), jax.random.key(0)))["loss"])
            for _ in range(num_batches or config.eval.text_batches)]
  loss = float(np.mean(losses))
  unit = "bits_per_char" if config.data.tokenizer == "char" else "bits_per_byte"
  return {"loss": loss, "perplexity": math.exp(loss), unit: loss / math.log(2), "num_batches": len(losses)}
