"""A GPT-2 style decoder-only transformer (Radford et al., 2019), readable top to bottom.

Pre-LayerNorm blocks, learned absolute positions, GELU MLP, input and output embeddings tied, dropout,
optional biases. Training attention is explicit einsums and a float32 softmax (`explicit_attention`) unless an
implementation is named: `attention_impl="cudnn"` (flash attention on NVIDIA GPUs) or "xla" go through
`jax.nn.dot_product_attention`, as decoding with the cache does.

Decoding uses an explicit key/value cache: a list with one `(k_BxSxHxK, v_BxSxHxK)` pair per layer, where
S is the context length. `GPT(tokens_BxT, cache=cache, cache_pos=p)` writes the keys/values of the T new
tokens at positions p..p+T-1 and returns the logits with the updated cache, so prefill (T = prompt length)
and one-token steps (T = 1) are the same code. The cache is a plain pytree so it can ride in a
`lax.scan` carry, which keeps the whole generation loop in one compiled program.

Dropout in training: with `example_ids_B` (each row's index in the global batch) every mask row is drawn from
fold_in(the call site's key, that index), so the masks an example sees do not depend on how the batch is split
over devices, without vmapping the model over examples (which was 2x slower per step on CPU and is the prime
suspect for the GPU gap in bench/RESULTS.md). Without it, masks are drawn for the whole array at once.
`attention_dropout` drops attention probabilities, as GPT-2 and nanoGPT do (`attn_dropout`); it makes training
take the explicit softmax path even when an implementation is named (`jax.nn.dot_product_attention` has no
dropout).

`causal=False` on `CausalSelfAttention` / `Block` lets every token attend to every other (the bidirectional
encoder of aigc_jax.models.maskgit reuses these blocks); the GPT is always causal.

Names carry shapes: B batch, T new tokens, S cached context, D width, H heads, K head size, V vocabulary.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from aigc_jax.models.layers import Dense, Embed
from aigc_jax.models.layers import example_dropout as dropout

# GPT-2's initialisation: N(0, 0.02) everywhere, residual projections further scaled by 1/sqrt(2 * layers)
# so the residual stream's variance does not grow with depth.
INIT_STD = 0.02


def explicit_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, causal: bool, drop):
  """softmax(q k^T / sqrt(K)) v with `drop` applied to the probabilities [B, H, T, S] (computed in float32)."""
  k_size = q_BxTxHxK.shape[-1]
  logits_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK).astype(jnp.float32) / k_size ** 0.5
  if causal:
    t, s = logits_BxHxTxS.shape[-2:]
    logits_BxHxTxS = jnp.where(jnp.tril(jnp.ones((t, s), bool)), logits_BxHxTxS, jnp.finfo(jnp.float32).min)
  probs_BxHxTxS = drop(jax.nn.softmax(logits_BxHxTxS, axis=-1)).astype(v_BxSxHxK.dtype)
  return jnp.einsum("bhts,bshk->bthk", probs_BxHxTxS, v_BxSxHxK)


class CausalSelfAttention(nn.Module):
  num_heads: int
  dropout: float = 0.0
  use_bias: bool = False
  num_layers: int = 1
  dtype: jnp.dtype = jnp.float32
  attention_impl: Optional[str] = None
  causal: bool = True
  attention_dropout: float = 0.0

  @nn.compact
  def __call__(self, x_BxTxD, train: bool, cache=None, cache_pos=None, example_ids_B=None):
    b, t, d = x_BxTxD.shape
    h = self.num_heads
    dense = lambda features, std, name: Dense(
        features, use_bias=self.use_bias, dtype=self.dtype, kernel_init=nn.initializers.normal(std), name=name)
    qkv_BxTx3D = dense(3 * d, INIT_STD, "qkv")(x_BxTxD)
    q_BxTxD, k_BxTxD, v_BxTxD = jnp.split(qkv_BxTx3D, 3, axis=-1)
    q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = (a.reshape(b, t, h, d // h) for a in (q_BxTxD, k_BxTxD, v_BxTxD))

    if cache is None and (self.attention_impl is None or (train and self.attention_dropout > 0)):
      # Without a named implementation, the explicit einsums: jax.nn.dot_product_attention's own XLA path
      # (the same math, with extra head-group reshapes) made the GPT cpu step 1.07-1.10x slower on XLA:CPU.
      y_BxTxHxK = explicit_attention(
          q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, self.causal,
          lambda p: dropout(self, self.attention_dropout, p, train, example_ids_B)).astype(self.dtype)
      new_cache = None
    elif cache is None:
      y_BxTxHxK = jax.nn.dot_product_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, is_causal=self.causal,
                                               implementation=self.attention_impl)
      new_cache = None
    else:
      k_cache_BxSxHxK, v_cache_BxSxHxK = cache
      k_cache_BxSxHxK = jax.lax.dynamic_update_slice(k_cache_BxSxHxK, k_BxTxHxK.astype(k_cache_BxSxHxK.dtype),
                                                     (0, cache_pos, 0, 0))
      v_cache_BxSxHxK = jax.lax.dynamic_update_slice(v_cache_BxSxHxK, v_BxTxHxK.astype(v_cache_BxSxHxK.dtype),
                                                     (0, cache_pos, 0, 0))
      s = k_cache_BxSxHxK.shape[1]
      # New token i sits at position cache_pos + i and may see cached positions up to and including its own;
      # slots beyond are stale or empty.
      mask_TxS = jnp.arange(s)[None, :] <= (cache_pos + jnp.arange(t))[:, None]
      y_BxTxHxK = jax.nn.dot_product_attention(q_BxTxHxK, k_cache_BxSxHxK.astype(self.dtype),
                                               v_cache_BxSxHxK.astype(self.dtype), mask=mask_TxS[None, None])
      new_cache = (k_cache_BxSxHxK, v_cache_BxSxHxK)

    y_BxTxD = y_BxTxHxK.reshape(b, t, d)
    y_BxTxD = dense(d, INIT_STD / (2 * self.num_layers) ** 0.5, "proj")(y_BxTxD)
    return dropout(self, self.dropout, y_BxTxD, train, example_ids_B), new_cache


class MLP(nn.Module):
  dropout: float = 0.0
  use_bias: bool = False
  num_layers: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD, train: bool, example_ids_B=None):
    d = x_BxTxD.shape[-1]
    h_BxTx4D = Dense(4 * d, use_bias=self.use_bias, dtype=self.dtype,
                        kernel_init=nn.initializers.normal(INIT_STD), name="fc")(x_BxTxD)
    # GPT-2 uses the tanh approximation of GELU.
    h_BxTx4D = nn.gelu(h_BxTx4D, approximate=True)
    y_BxTxD = Dense(d, use_bias=self.use_bias, dtype=self.dtype,
                       kernel_init=nn.initializers.normal(INIT_STD / (2 * self.num_layers) ** 0.5),
                       name="proj")(h_BxTx4D)
    return dropout(self, self.dropout, y_BxTxD, train, example_ids_B)


class Block(nn.Module):
  num_heads: int
  dropout: float = 0.0
  use_bias: bool = False
  num_layers: int = 1
  dtype: jnp.dtype = jnp.float32
  attention_impl: Optional[str] = None
  causal: bool = True
  attention_dropout: float = 0.0

  @nn.compact
  def __call__(self, x_BxTxD, train: bool, cache=None, cache_pos=None, example_ids_B=None):
    norm = lambda name: nn.LayerNorm(epsilon=1e-5, use_bias=self.use_bias, dtype=self.dtype, name=name)
    a_BxTxD, new_cache = CausalSelfAttention(self.num_heads, self.dropout, self.use_bias, self.num_layers,
                                             self.dtype, self.attention_impl, self.causal, self.attention_dropout,
                                             name="attn")(norm("ln_1")(x_BxTxD), train, cache, cache_pos,
                                                          example_ids_B)
    x_BxTxD = x_BxTxD + a_BxTxD
    x_BxTxD = x_BxTxD + MLP(self.dropout, self.use_bias, self.num_layers, self.dtype, name="mlp")(
        norm("ln_2")(x_BxTxD), train, example_ids_B)
    return x_BxTxD, new_cache


class GPT(nn.Module):
  vocab_size: int
  block_size: int
  num_layers: int = 4
  num_heads: int = 4
  width: int = 128
  dropout: float = 0.0
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  attention_impl: Optional[str] = None
  attention_dropout: float = 0.0

  @nn.compact
  def __call__(self, tokens_BxT, train: bool = False, cache=None, cache_pos=0, example_ids_B=None):
    """Logits [B, T, V] in float32 (and the updated cache when one is given); `example_ids_B`: see the module
    docstring (dropout)."""
    t = tokens_BxT.shape[1]
    embed = lambda n, name: Embed(n, self.width, dtype=self.dtype,
                                  embedding_init=nn.initializers.normal(INIT_STD), name=name)
    wte, wpe = embed(self.vocab_size, "wte"), embed(self.block_size, "wpe")
    positions_T = cache_pos + jnp.arange(t)
    x_BxTxD = wte(tokens_BxT) + wpe(positions_T)[None]
    x_BxTxD = dropout(self, self.dropout, x_BxTxD, train, example_ids_B)
    new_cache = []
    for i in range(self.num_layers):
      x_BxTxD, layer_cache = Block(self.num_heads, self.dropout, self.use_bias, self.num_layers, self.dtype,
                                   self.attention_impl, attention_dropout=self.attention_dropout, name=f"h_{i}")(
                                       x_BxTxD, train, None if cache is None else cache[i], cache_pos, example_ids_B)
      new_cache.append(layer_cache)
    x_BxTxD = nn.LayerNorm(epsilon=1e-5, use_bias=self.use_bias, dtype=self.dtype, name="ln_f")(x_BxTxD)
    # Tied output embedding: logits are similarities with the input embedding table.
    logits_BxTxV = wte.attend(x_BxTxD).astype(jnp.float32)
    return logits_BxTxV if cache is None else (logits_BxTxV, new_cache)

  def empty_cache(self, batch_size: int, dtype=None):
    """Zeroed keys/values for every layer, [B, block_size, H, K] each."""
    shape = (batch_size, self.block_size, self.num_heads, self.width // self.num_heads)
    zeros = jnp.zeros(shape, dtype or self.dtype)
    return [(zeros, zeros) for _ in range(self.num_layers)]
