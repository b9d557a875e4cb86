"""Sampling one token from logits, shared by the autoregressive families (text, VQ codes, mu-law audio):
temperature, top-k, nucleus (top-p) filtering, classifier-free guidance on logits, and the per-sequence keys
fold_in(key, position)."""
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from aigc_jax.errors import UserError

# sample.max_new_tokens of the text family's default_config; a prior over codes rejects any other value.
TEXT_MAX_NEW_TOKENS = 500


def check_sampling(s: ConfigDict):
  if not 0.0 < s.top_p <= 1.0:
    raise UserError(f"sample.top_p must be in (0, 1], got {s.top_p}; use 1.0 to turn nucleus sampling off")
  if s.temperature < 0:
    raise UserError(f"sample.temperature must be >= 0 (0 = greedy), got {s.temperature}")
  if s.top_k < 0 or s.max_new_tokens < 1:
    raise UserError(f"sample.top_k must be >= 0 and sample.max_new_tokens >= 1, got {s.top_k}, {s.max_new_tokens}")


def guided_logits(cond_BxV, uncond_BxV, scale: float):
  """Classifier-free guidance (Ho & Salimans 2022) on logits: uncond + scale * (cond - uncond)."""
  return uncond_BxV + scale * (cond_BxV - uncond_BxV)


def filter_logits(logits_BxV, temperature: float, top_k: int, top_p: float):
  """Temperature, then top-k, then nucleus (top-p) filtering; removed tokens get -inf."""
  logits_BxV = logits_BxV / temperature
  if top_k and top_k < logits_BxV.shape[-1]:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  if top_p < 1.0:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p.
    keep_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV < top_p
    cutoff_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)
  return logits_BxV


def pick_tokens(logits_BxV, keys_B, n, s: ConfigDict):
  """Token n of each sequence: greedy at temperature 0, else drawn from the filtered logits with fold_in(key, n)."""
  if s.temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = filter_logits(logits_BxV, s.temperature, s.top_k, s.top_p)
  step_keys = jax.vmap(lambda k: jax.random.fold_in(k, n))(keys_B)
  return jax.vmap(jax.random.categorical)(step_keys, logits_BxV).astype(jnp.int32)
