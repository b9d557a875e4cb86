"""MaskGIT's bidirectional transformer (Chang et al., CVPR 2022): code tokens in, logits over the codebook out.

The sequence is one class token followed by the N = h * w codes of a grid in raster order. Code ids are
0..num_codes-1 and `num_codes` is the [MASK] token; class ids are 0..num_classes-1 and `num_classes` is the
null class (unconditional model, or a dropped label for classifier-free guidance). Positions are learned.
The blocks are the GPT's (aigc_jax.models.transformer: pre-LayerNorm, GELU MLP) with causal masking off;
the released MaskGIT is BERT-style post-LayerNorm, a difference kept for one shared, tested block. The head
follows BERT's masked-LM layer as the released model does: dense + GELU + LayerNorm, then logits tied to the
code embedding plus a bias. Logits cover the codes only: [MASK] is never a prediction.

Names carry shapes: B batch, N codes, D width, K codebook size.
"""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from aigc_jax.models.layers import Embed
from aigc_jax.models.transformer import INIT_STD, Block


class MaskGITTransformer(nn.Module):
  num_codes: int
  num_classes: int          # 0 = unconditional (only the null class exists)
  seq_len: int              # N, codes per grid
  num_layers: int = 4
  num_heads: int = 4
  width: int = 128
  dropout: float = 0.0
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32
  attention_impl: Optional[str] = None

  @property
  def mask_id(self) -> int:
    return self.num_codes

  @property
  def null_label(self) -> int:
    return self.num_classes

  @nn.compact
  def __call__(self, tokens_BxN, labels_B, train: bool = False):
    """Logits [B, N, K] in float32 for every position (the caller picks the masked ones)."""
    init = nn.initializers.normal(INIT_STD)
    codes = Embed(self.num_codes + 1, self.width, dtype=self.dtype, embedding_init=init, name="code_embed")
    classes = Embed(self.num_classes + 1, self.width, dtype=self.dtype, embedding_init=init, name="class_embed")
    pos_1xN1xD = self.param("pos_embed", init, (1, self.seq_len + 1, self.width))
    x_BxN1xD = jnp.concatenate([classes(labels_B)[:, None], codes(tokens_BxN)], axis=1)
    x_BxN1xD = x_BxN1xD + pos_1xN1xD.astype(self.dtype)
    x_BxN1xD = nn.Dropout(self.dropout)(x_BxN1xD, deterministic=not train)
    for i in range(self.num_layers):
      x_BxN1xD, _ = Block(self.num_heads, self.dropout, self.use_bias, self.num_layers, self.dtype,
                          self.attention_impl, causal=False, name=f"h_{i}")(x_BxN1xD, train)
    x_BxNxD = nn.LayerNorm(epsilon=1e-5, use_bias=self.use_bias, dtype=self.dtype, name="ln_f")(x_BxN1xD[:, 1:])
    h_BxNxD = nn.gelu(nn.Dense(self.width, dtype=self.dtype, kernel_init=init, name="head_dense")(x_BxNxD))
    h_BxNxD = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="head_ln")(h_BxNxD)
    table_KxD = codes.embedding[:self.num_codes].astype(self.dtype)
    bias_K = self.param("head_bias", nn.initializers.zeros, (self.num_codes,))
    return (h_BxNxD @ table_KxD.T).astype(jnp.float32) + bias_K
