"""CLIP's two encoders (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision", Section 2.4) and the learned temperature, at any width.

Image encoder: a Vision Transformer (Dosovitskiy et al. 2021) as CLIP's ViTs are: non-overlapping patches
embedded by one linear map (a stride-p convolution without bias), a learned class token in front, learned
positions, an extra LayerNorm before the blocks (CLIP's one change to the ViT), pre-LN blocks, LayerNorm of the
class token's output, then a linear projection without bias to the shared embedding dimension.

Text encoder: a GPT-2-style transformer (the blocks of aigc_jax.models.transformer), causal as CLIP's is, over
[BOS] ids [EOS] PAD.. (aigc_jax.data.caption_tokenizer); the feature is the final LayerNorm's output at the
[EOS] position (the caption's last real token, index sum(mask) - 1), linearly projected. Causal attention means
no token sees the PAD after EOS, so no padding mask is needed: a caption's embedding does not depend on the
caption length L it was padded to (beyond L itself fitting it).

`logit_scale` is the log-parameterised inverse temperature, initialised to log(1 / 0.07) (the paper's
initialisation, after Wu et al. 2018); the family clips it at log(100) after every update, as the paper does.

Both `encode_*` methods return L2-normalised embeddings, so a logit is logit_scale.exp() times a cosine.
Names carry shapes: B batch, H W C image, P patches, L caption tokens, D width, E embedding dimension.
"""
import math
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from aigc_jax.models.layers import Embed
from aigc_jax.models.transformer import INIT_STD, Block

INIT_TEMPERATURE = 0.07


def l2_normalize(x_BxE, eps: float = 1e-12):
  return x_BxE / jnp.sqrt(jnp.maximum(jnp.sum(x_BxE * x_BxE, axis=-1, keepdims=True), eps))


class VisionTransformer(nn.Module):
  patch_size: int
  width: int
  num_layers: int
  num_heads: int
  embed_dim: int
  dtype: jnp.dtype = jnp.float32
  attention_impl: Optional[str] = None

  @nn.compact
  def __call__(self, images_BxHxWxC):
    """Unnormalised image features [B, E] in float32."""
    p, d = self.patch_size, self.width
    x_Bxhxwxd = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=self.dtype,
                        name="patch_embed")(images_BxHxWxC.astype(self.dtype))
    b = x_Bxhxwxd.shape[0]
    x_BxPxD = x_Bxhxwxd.reshape(b, -1, d)
    scale = d ** -0.5  # CLIP's class token and position initialisation
    cls_D = self.param("class_token", nn.initializers.normal(scale), (d,))
    pos_P1xD = self.param("pos_embed", nn.initializers.normal(scale), (x_BxPxD.shape[1] + 1, d))
    x_BxP1xD = jnp.concatenate([jnp.broadcast_to(cls_D.astype(self.dtype), (b, 1, d)), x_BxPxD], axis=1)
    x_BxP1xD = x_BxP1xD + pos_P1xD.astype(self.dtype)[None]
    x_BxP1xD = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="ln_pre")(x_BxP1xD)
    for i in range(self.num_layers):
      x_BxP1xD, _ = Block(self.num_heads, 0.0, True, self.num_layers, self.dtype, self.attention_impl,
                          causal=False, name=f"h_{i}")(x_BxP1xD, False)
    cls_BxD = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="ln_post")(x_BxP1xD[:, 0])
    return nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype,
                    kernel_init=nn.initializers.normal(d ** -0.5), name="proj")(cls_BxD).astype(jnp.float32)


class TextTransformer(nn.Module):
  vocab_size: int
  context_length: int
  width: int
  num_layers: int
  num_heads: int
  embed_dim: int
  dtype: jnp.dtype = jnp.float32
  attention_impl: Optional[str] = None
  token_states: bool = False  # True: return every token's final state [B, L, width] (a diffusion model's context)

  @nn.compact
  def __call__(self, tokens_BxL, mask_BxL):
    """Unnormalised text features [B, E] in float32, read at each caption's EOS (its last unmasked token); with
    token_states, the final layer-normed states of all tokens [B, L, width] instead (same params, no `proj`)."""
    b, length = tokens_BxL.shape
    init = nn.initializers.normal(INIT_STD)
    x_BxLxD = Embed(self.vocab_size, self.width, dtype=self.dtype, embedding_init=init, name="wte")(tokens_BxL)
    pos_LxD = self.param("pos_embed", nn.initializers.normal(0.01), (self.context_length, self.width))
    x_BxLxD = x_BxLxD + pos_LxD[:length].astype(self.dtype)[None]
    for i in range(self.num_layers):
      x_BxLxD, _ = Block(self.num_heads, 0.0, True, self.num_layers, self.dtype, self.attention_impl,
                         causal=True, name=f"h_{i}")(x_BxLxD, False)
    x_BxLxD = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="ln_final")(x_BxLxD)
    if self.token_states:
      return x_BxLxD.astype(jnp.float32)
    eos_B = jnp.clip(jnp.sum(mask_BxL.astype(jnp.int32), axis=-1) - 1, 0, length - 1)
    h_BxD = x_BxLxD[jnp.arange(b), eos_B]
    return nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype,
                    kernel_init=nn.initializers.normal(self.width ** -0.5), name="proj")(h_BxD).astype(jnp.float32)


class CLIP(nn.Module):
  """`encode_image` / `encode_text` give unit-norm embeddings [B, E]; `__call__` gives both and the logit scale
  (log-parameterised; the caller clips and exponentiates it)."""
  vocab_size: int
  context_length: int
  embed_dim: int = 128
  patch_size: int = 4
  vision_width: int = 128
  vision_layers: int = 4
  vision_heads: int = 4
  text_width: int = 128
  text_layers: int = 4
  text_heads: int = 4
  init_temperature: float = INIT_TEMPERATURE
  dtype: jnp.dtype = jnp.float32
  attention_impl: Optional[str] = None

  def setup(self):
    self.visual = VisionTransformer(self.patch_size, self.vision_width, self.vision_layers, self.vision_heads,
                                    self.embed_dim, self.dtype, self.attention_impl)
    self.text = TextTransformer(self.vocab_size, self.context_length, self.text_width, self.text_layers,
                                self.text_heads, self.embed_dim, self.dtype, self.attention_impl)
    log_scale = math.log(1.0 / self.init_temperature)
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(log_scale), ())

  def encode_image(self, images_BxHxWxC):
    return l2_normalize(self.visual(images_BxHxWxC))

  def encode_text(self, tokens_BxL, mask_BxL):
    return l2_normalize(self.text(tokens_BxL, mask_BxL))

  def __call__(self, images_BxHxWxC, tokens_BxL, mask_BxL):
    """(image embeddings [B, E], text embeddings [B, E], log logit scale [])."""
    return self.encode_image(images_BxHxWxC), self.encode_text(tokens_BxL, mask_BxL), self.logit_scale
