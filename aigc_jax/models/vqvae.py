"""VQ-VAE networks (van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation Learning", 2017).

Encoder: `num_downsamples` 4x4 stride-2 convolutions, a 3x3 convolution, a stack of residual blocks
(ReLU, 3x3 conv, ReLU, 1x1 conv, as in the paper's Section 4.1), then a 1x1 projection to the code dimension D.
The decoder mirrors it with 4x4 stride-2 transposed convolutions. The conv VAE in models/vae.py reuses both.

`VectorQuantizer` holds K codes of dimension D and returns the nearest code per position (or, with `l2`, the
code of largest cosine similarity, both sides unit-normalised as in ViT-VQGAN, Yu et al. 2022); the
straight-through estimator and the losses live in the family, which also owns the EMA codebook update (the
paper's Appendix A) and dead-code restarts.

The decoder sows the input of its last layer ("intermediates"/"last_layer_input"): VQGAN's adaptive weight
needs gradients with respect to that layer's kernel alone, which a re-application of the layer gives cheaply.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from aigc_jax.models.layers import UpConv4x4


class ResidualBlock(nn.Module):
  channels: int
  hidden: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC):
    h = nn.Conv(self.hidden, (3, 3), dtype=self.dtype)(nn.relu(x_BxHxWxC))
    h = nn.Conv(self.channels, (1, 1), dtype=self.dtype)(nn.relu(h))
    return x_BxHxWxC + h


class ConvEncoder(nn.Module):
  out_channels: int
  hidden: int = 256
  residual_hidden: int = 256
  num_residual_blocks: int = 2
  num_downsamples: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC):
    h = x_BxHxWxC.astype(self.dtype)
    for i in range(self.num_downsamples):
      # Halve the width below the last downsampling, as the authors' released example does.
      width = self.hidden if i == self.num_downsamples - 1 else self.hidden // 2
      h = nn.relu(nn.Conv(width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype)(h))
    h = nn.Conv(self.hidden, (3, 3), dtype=self.dtype)(h)
    for _ in range(self.num_residual_blocks):
      h = ResidualBlock(self.hidden, self.residual_hidden, dtype=self.dtype)(h)
    h = nn.relu(h)
    return nn.Conv(self.out_channels, (1, 1), dtype=self.dtype)(h).astype(jnp.float32)


class ConvDecoder(nn.Module):
  out_channels: int
  hidden: int = 256
  residual_hidden: int = 256
  num_residual_blocks: int = 2
  num_upsamples: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z_BxhxwxD):
    h = nn.Conv(self.hidden, (3, 3), dtype=self.dtype)(z_BxhxwxD.astype(self.dtype))
    for _ in range(self.num_residual_blocks):
      h = ResidualBlock(self.hidden, self.residual_hidden, dtype=self.dtype)(h)
    h = nn.relu(h)
    for i in range(self.num_upsamples):
      last = i == self.num_upsamples - 1
      width = self.out_channels if last else self.hidden // 2
      if last:
        self.sow("intermediates", "last_layer_input", h)
      # nn.ConvTranspose's function and params, fast on CPU (models/layers.py); its auto-name kept.
      h = UpConv4x4(width, dtype=self.dtype, name=f"ConvTranspose_{i}")(h)
      if not last:
        h = nn.relu(h)
    if self.num_upsamples == 0:
      self.sow("intermediates", "last_layer_input", h)
      h = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype)(h)
    return h.astype(jnp.float32)


def last_decoder_layer(out_channels: int, num_upsamples: int, dtype=jnp.float32):
  """(name of a ConvDecoder's last layer in its params, a standalone module computing that layer)."""
  if num_upsamples:
    return f"ConvTranspose_{num_upsamples - 1}", UpConv4x4(out_channels, dtype=dtype)
  return "Conv_1", nn.Conv(out_channels, (1, 1), dtype=dtype)


def l2_normalize(x, axis=-1, eps=1e-6):
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x ** 2, axis=axis, keepdims=True), eps ** 2))


def nearest_codes(z_NxD, codebook_KxD):
  """Index of the nearest code (squared Euclidean) for each row. For unit rows this is also the code of
  largest cosine similarity, which is how the `l2` lookup uses it."""
  dist_NxK = (jnp.sum(z_NxD ** 2, axis=1, keepdims=True) - 2.0 * z_NxD @ codebook_KxD.T
              + jnp.sum(codebook_KxD ** 2, axis=1)[None])
  return jnp.argmin(dist_NxK, axis=1)


class VectorQuantizer(nn.Module):
  """K codes of dimension D. With `ema=True` the codebook is a non-trainable variable in the 'codebook'
  collection (with its EMA statistics) so the optimiser never touches it; otherwise it is a parameter trained
  by the codebook loss. With `l2`, inputs and codes are unit-normalised before the lookup and the returned
  code is the normalised one (the family then also works with normalised encoder outputs)."""
  num_codes: int
  code_dim: int
  ema: bool = False
  l2: bool = False

  @nn.compact
  def __call__(self, z_BxhxwxD):
    init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
    if self.ema:
      codebook = self.variable("codebook", "embedding",
                               lambda: init(self.make_rng("params"), (self.num_codes, self.code_dim))).value
      # Laplace-smoothed EMA statistics; start as if each code had seen itself once.
      self.variable("codebook", "cluster_size", lambda: jnp.ones((self.num_codes,), jnp.float32))
      self.variable("codebook", "embed_sum", lambda: codebook)
    else:
      codebook = self.param("embedding", init, (self.num_codes, self.code_dim))
    flat_NxD = z_BxhxwxD.reshape(-1, self.code_dim).astype(jnp.float32)
    if self.l2:
      flat_NxD, codebook = l2_normalize(flat_NxD), l2_normalize(codebook)
    idx_N = nearest_codes(flat_NxD, codebook)
    quantized = codebook[idx_N].reshape(z_BxhxwxD.shape)
    return quantized, idx_N.reshape(z_BxhxwxD.shape[:-1])


class VQVAE(nn.Module):
  channels: int
  num_codes: int = 512
  code_dim: int = 64
  hidden: int = 256
  residual_hidden: int = 256
  num_residual_blocks: int = 2
  num_downsamples: int = 2
  ema: bool = False
  l2_codes: bool = False
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.encoder = ConvEncoder(self.code_dim, self.hidden, self.residual_hidden, self.num_residual_blocks,
                               self.num_downsamples, dtype=self.dtype)
    self.quantizer = VectorQuantizer(self.num_codes, self.code_dim, ema=self.ema, l2=self.l2_codes)
    self.decoder = ConvDecoder(self.channels, self.hidden, self.residual_hidden, self.num_residual_blocks,
                               self.num_downsamples, dtype=self.dtype)

  def encode(self, x_BxHxWxC):
    """Encoder outputs; unit-normalised with `l2_codes`, so the losses compare like with like."""
    z = self.encoder(x_BxHxWxC)
    return l2_normalize(z) if self.l2_codes else z

  def quantize(self, z_BxhxwxD):
    return self.quantizer(z_BxhxwxD)

  def decode(self, q_BxhxwxD):
    return self.decoder(q_BxhxwxD)

  def decode_codes(self, idx_Bxhxw):
    codebook = (self.quantizer.variables["codebook"]["embedding"] if self.ema
                else self.quantizer.variables["params"]["embedding"])
    if self.l2_codes:
      codebook = l2_normalize(codebook)
    return self.decoder(codebook[idx_Bxhxw])

  def __call__(self, x_BxHxWxC):
    """Reconstruction with straight-through gradients, plus what the losses need."""
    z = self.encode(x_BxHxWxC)
    q, idx = self.quantize(z)
    q_st = z + jax.lax.stop_gradient(q - z)
    return self.decode(q_st), z, q, idx
