"""The GPT network (models/transformer.GPT) from `config.model`, shared by the autoregressive families (text,
and the prior over VQ codes), with the one-line errors for its settings."""
from ml_collections import ConfigDict

from aigc_jax import optim
from aigc_jax.errors import UserError
from aigc_jax.models.transformer import GPT


def build_gpt(config: ConfigDict, vocab_size: int) -> GPT:
  m = config.model
  for key in ("dropout", "attention_dropout"):
    if not 0.0 <= m[key] < 1.0:
      raise UserError(f"model.{key} must be in [0, 1), got {m[key]}")
  if m.width % m.num_heads:
    raise UserError(f"model.width {m.width} is not divisible by model.num_heads {m.num_heads}; change one")
  return GPT(vocab_size=vocab_size, block_size=m.block_size, num_layers=m.num_layers, num_heads=m.num_heads,
             width=m.width, dropout=m.dropout, use_bias=m.use_bias, dtype=optim.compute_dtype(config.dtype),
             attention_impl=m.attention_impl or None, attention_dropout=m.attention_dropout)
