"""The autoregressive family on `data.name=codes`: a DALL-E-style (Ramesh et al. 2021) transformer prior over a
VQ run's code grids, decoded to images by that run's decoder.

Sequence: [prefix, c_0, ..., c_{L-1}], the codes in raster order (L = data.grid_size ** 2). The prefix is the
class token K + y (K = data.num_codes) or the null token K + num_classes (always, for an unconditional prior;
with probability model.label_dropout in training, for classifier-free guidance). One shared vocabulary of
K + num_classes + 1 embeddings and one transformer; the model reads L tokens (the prefix and every code but
the last), so model.block_size = L. The loss is the cross-entropy of the codes only, over the K code logits:
the prefix is given, never predicted (DALL-E weights its text loss 1/8 and image loss 7/8; a class label is
one given token, so here the image loss is all of it). eval_step: bits per code on eval.reference_split.

Sampling is one compiled `lax.scan` over the L codes with a key/value cache (the prefix prefilled), or the
uncached reference (`cached=False`), which recomputes every step and draws the same codes. With
sample.guidance_scale = s != 1 the batch runs twice, with the class and with the null prefix, and each code
is drawn from logits_uncond + s (logits_cond - logits_uncond). Output: {"images": the VQ decoder's images,
"labels"} (labels only for a class-conditional prior), so the images medium and FID/IS apply.
"""
import math
import types

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from aigc_jax import optim
from aigc_jax.data.sources import codes as codes_source
from aigc_jax.errors import UserError
from aigc_jax.families import Family, check_sample_label, code_prior_lib, sample_labels
from aigc_jax.families.gpt_lib import build_gpt
from aigc_jax.families.token_sampling_lib import TEXT_MAX_NEW_TOKENS, check_sampling, guided_logits, pick_tokens
from aigc_jax.parallel import DATA_AXIS, example_ids, example_keys, keys_for_ids, masked_mean


def check_config(config: ConfigDict):
  m, s, d = config.model, config.sample, config.data
  check_sampling(s)
  if s.prompt:
    raise UserError("sample.prompt is text; a prior over codes (data.name=codes) starts from its class token; "
                    "leave sample.prompt empty and choose the class with --config.sample.label")
  if s.max_new_tokens != TEXT_MAX_NEW_TOKENS:  # the text default: set, it would be silently ignored
    raise UserError(f"sample.max_new_tokens={s.max_new_tokens} is for text; a prior over codes always draws the "
                    f"{d.grid_size ** 2} codes of a {d.grid_size}x{d.grid_size} grid; leave sample.max_new_tokens unset")
  if m.block_size != d.grid_size ** 2:
    raise UserError(f"model.block_size={m.block_size} but a prior over {d.grid_size}x{d.grid_size} code grids reads "
                    f"{d.grid_size ** 2} tokens (class token + all codes but the last); set "
                    f"--config.model.block_size={d.grid_size ** 2}")
  if not 0.0 <= m.label_dropout < 1.0:
    raise UserError(f"model.label_dropout must be in [0, 1), got {m.label_dropout}")
  if m.label_dropout and not m.num_classes:
    raise UserError(f"model.label_dropout={m.label_dropout} needs class labels (model.num_classes > 0); an "
                    "unconditional prior always sees the null token; set it to 0")
  if s.guidance_scale != 1.0 and not (m.num_classes and m.label_dropout):
    raise UserError(f"sample.guidance_scale={s.guidance_scale} needs a class-conditional prior trained with "
                    "model.label_dropout > 0 (the null token's logits); set --config.sample.guidance_scale=1.0")
  check_sample_label(config, m.num_classes)


def build(config: ConfigDict):
  """The family plus what tests reach for (model, generate, code_logits)."""
  m, s, d = config.model, config.sample, config.data
  check_config(config)
  code_set = code_prior_lib.check_prior(config)  # file vs config, labels vs num_classes, VQ checkpoint present
  num_codes, num_classes, length = d.num_codes, m.num_classes, d.grid_size ** 2
  null = num_codes + num_classes
  model = build_gpt(config, num_codes + num_classes + 1)  # check_config: model.block_size = grid_size ** 2
  tx, schedule = optim.make_optimizer(config.optimizer)
  columns = math.ceil(math.sqrt(s.num))  # media.images.image_grid's layout: one class per grid row

  def prefix_tokens(labels_B):
    return num_codes + labels_B if num_classes else jnp.full(labels_B.shape, null, jnp.int32)

  def code_logits(params, codes_BxL, prefix_B, train=False, dropout_rng=None):
    """Logits [B, L, K] of every code given the prefix and the codes before it."""
    tokens_BxL = jnp.concatenate([prefix_B[:, None], codes_BxL[:, :-1]], axis=1).astype(jnp.int32)
    if train and (m.dropout > 0 or m.attention_dropout > 0):  # masks independent of the device split
      logits_BxLxV = model.apply({"params": params}, tokens_BxL, train=True, rngs={"dropout": dropout_rng},
                                 example_ids_B=example_ids(tokens_BxL.shape[0]))
    else:
      logits_BxLxV = model.apply({"params": params}, tokens_BxL)
    return logits_BxLxV[..., :num_codes]  # class and null tokens are given, never drawn

  def code_nll_B(params, batch, prefix_B, **kw):
    codes_BxL = batch["codes"].reshape(batch["codes"].shape[0], -1)
    losses = optax.softmax_cross_entropy_with_integer_labels(code_logits(params, codes_BxL, prefix_B, **kw),
                                                             codes_BxL)
    return jnp.mean(losses, axis=-1)

  def init(rng, example_batch):
    params = model.init(rng, jnp.zeros((1, length), jnp.int32))["params"]
    return {"step": jnp.zeros((), jnp.int32), **optim.init_train_state(params, tx, ema=False)}

  def train_step(state, batch, rng):
    keys_B = example_keys(rng, batch["codes"].shape[0])
    drop_B = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, 1), m.label_dropout))(keys_B)
    prefix_B = jnp.where(drop_B, null, prefix_tokens(batch["label"]))
    dropout_rng = jax.random.fold_in(rng, 0)
    loss_fn = lambda p: jnp.mean(code_nll_B(p, batch, prefix_B, train=True, dropout_rng=dropout_rng))
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    new_state, grad_norm = optim.apply_gradients(state, grads, tx, state["step"])
    new_state["step"] = state["step"] + 1
    metrics = {"loss": loss, "bits_per_code": loss / math.log(2), "grad_norm": grad_norm,
               "learning_rate": schedule(state["step"])}
    return new_state, jax.lax.pmean(metrics, DATA_AXIS)

  def eval_step(state, batch, rng):
    """Test-set NLL of the codes given the true class: nats and bits per code (masked mean over rows)."""
    del rng
    nll_B = code_nll_B(state["params"], batch, prefix_tokens(batch["label"]))
    loss = masked_mean(nll_B, batch, nll_B.shape[0])
    return {"loss": loss, "bits_per_code": loss / math.log(2), "perplexity": jnp.exp(loss)}

  def logits_fn(logits_NxV, b):
    """The K code logits of the b rows to draw from; with guidance N = 2b (conditional rows, then null rows)."""
    logits_NxV = logits_NxV[:, :num_codes]
    if s.guidance_scale == 1.0:
      return logits_NxV
    return guided_logits(logits_NxV[:b], logits_NxV[b:], s.guidance_scale)

  def generate(params, prefix_B, keys_B, cached: bool = True):
    """Codes int32 [B, L] drawn one at a time; the same codes with and without the cache."""
    b = prefix_B.shape[0]
    prefix_N = prefix_B if s.guidance_scale == 1.0 else jnp.concatenate([prefix_B, jnp.full_like(prefix_B, null)])
    n = prefix_N.shape[0]
    codes_BxL = jnp.zeros((b, length), jnp.int32)
    if cached:
      apply = lambda tok_Nx1, cache, pos: model.apply({"params": params}, tok_Nx1, cache=cache, cache_pos=pos)
      logits_Nx1xV, cache = apply(prefix_N[:, None], model.empty_cache(n), 0)

      def step(carry, i):  # draw code i, then feed it at position i + 1
        codes_BxL, logits_NxV, cache = carry
        code_B = pick_tokens(logits_fn(logits_NxV, b), keys_B, i, s)
        codes_BxL = codes_BxL.at[:, i].set(code_B)
        feed_N = jnp.concatenate([code_B] * (n // b))
        logits_Nx1xV, cache = apply(feed_N[:, None], cache, i + 1)
        return (codes_BxL, logits_Nx1xV[:, 0], cache), None

      carry = (codes_BxL, logits_Nx1xV[:, 0], cache)
      (codes_BxL, logits_NxV, _), _ = jax.lax.scan(step, carry, jnp.arange(length - 1))
      last_B = pick_tokens(logits_fn(logits_NxV, b), keys_B, length - 1, s)
      return codes_BxL.at[:, length - 1].set(last_B)

    def step(codes_BxL, i):  # recompute the whole sequence; codes after i are zeros the mask hides
      codes_NxL = jnp.concatenate([codes_BxL] * (n // b))
      tokens_NxL = jnp.concatenate([prefix_N[:, None], codes_NxL[:, :-1]], axis=1)
      logits_NxV = jax.lax.dynamic_index_in_dim(model.apply({"params": params}, tokens_NxL), i, 1, keepdims=False)
      return codes_BxL.at[:, i].set(pick_tokens(logits_fn(logits_NxV, b), keys_B, i, s)), None

    codes_BxL, _ = jax.lax.scan(step, codes_BxL, jnp.arange(length))
    return codes_BxL

  # Restored now, not while `sample` is traced (orbax cannot restore inside a trace); cached per (workdir, step).
  decode, _ = code_prior_lib.load_vq_decoder(d.vq_workdir, code_set.step)

  def sample(state, rng, ids_B, cached=True):
    labels_B = sample_labels(config, ids_B, num_classes, columns)
    codes_BxL = generate(state["params"], prefix_tokens(labels_B), keys_for_ids(rng, ids_B), cached)
    images = decode(codes_BxL.reshape(-1, d.grid_size, d.grid_size))
    return {"images": images, "labels": labels_B} if num_classes else {"images": images}

  family = Family(init=init, train_step=train_step, sample=sample, eval_step=eval_step, media=("images",),
                  evaluate_split=lambda state, mesh, split: evaluate_split(config, eval_step, state, mesh, split))
  return types.SimpleNamespace(family=family, model=model, generate=generate, code_logits=code_logits,
                               prefix_tokens=prefix_tokens, code_set=code_set, decode=decode)


def evaluate_split(config: ConfigDict, eval_step, state, mesh, split: str) -> dict:
  """eval_step over every code grid of `split` once (the last batch padded and masked): per-grid means."""
  code_set = codes_source.load_codes(config.data, split)
  result = code_prior_lib.evaluate_codes(eval_step, state, mesh, code_set.codes, code_set.labels, config.batch_size,
                                         config.eval.seed)
  result["perplexity"] = math.exp(result["loss"])  # of the mean NLL, not the mean of per-batch perplexities
  return result
