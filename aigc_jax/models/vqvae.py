"""VQ-VAE networks (van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation Learning", 2017).

Encoder: `num_downsamples` 4x4 stride-2 convolutions, a 3x3 convolution, a stack of residual blocks
(ReLU, 3x3 conv, ReLU, 1x1 conv, as in the paper's Section 4.1), then a 1x1 projection to the code dimension D.
The decoder mirrors it with 4x4 stride-2 transposed convolutions. The conv VAE in models/vae.py reuses both.

`VectorQuantizer` holds K codes of dimension D and returns the nearest code per position; the straight-through
estimator and the losses live in the family, which also owns the EMA codebook update (the paper's Appendix A).
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
      # nn.ConvTranspose's function and params, fast on CPU (models/layers.py); its auto-name kept.
      h = UpConv4x4(width, dtype=self.dtype, name=f"ConvTranspose_{i}")(h)
      if not last:
        h = nn.relu(h)
    if self.num_upsamples == 0:
      h = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype)(h)
    return h.astype(jnp.float32)


def nearest_codes(z_NxD, codebook_KxD):
  """Index of the nearest code (squared Euclidean) for each row."""
  dist_NxK = (jnp.sum(z_NxD ** 2, axis=1, keepdims=True) - 2.0 * z_NxD @ codebook_KxD.T
              + jnp.sum(codebook_KxD ** 2, axis=1)[None])
  return jnp.argmin(dist_NxK, axis=1)


class VectorQuantizer(nn.Module):
  """K codes of dimension D. With `ema=True` the codebook is a non-trainable variable in the 'codebook'
  collection (with its EMA statistics) so the optimiser never touches it; otherwise it is a parameter trained
  by the codebook loss."""
  num_codes: int
  code_dim: int
  ema: bool = False

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
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.encoder = ConvEncoder(self.code_dim, self.hidden, self.residual_hidden, self.num_residual_blocks,
                               self.num_downsamples, dtype=self.dtype)
    self.quantizer = VectorQuantizer(self.num_codes, self.code_dim, ema=self.ema)
    self.decoder = ConvDecoder(self.channels, self.hidden, self.residual_hidden, self.num_residual_blocks,
                               self.num_downsamples, dtype=self.dtype)

  def encode(self, x_BxHxWxC):
    return self.encoder(x_BxHxWxC)

  def quantize(self, z_BxhxwxD):
    return self.quantizer(z_BxhxwxD)

  def decode(self, q_BxhxwxD):
    return self.decoder(q_BxhxwxD)

  def decode_codes(self, idx_Bxhxw):
    codebook = (self.quantizer.variables["codebook"]["embedding"] if self.ema
                else self.quantizer.variables["params"]["embedding"])
    return self.decoder(codebook[idx_Bxhxw])

  def __call__(self, x_BxHxWxC):
    """Reconstruction with straight-through gradients, plus what the losses need."""
    z = self.encode(x_BxHxWxC)
    q, idx = self.quantize(z)
    q_st = z + jax.lax.stop_gradient(q - z)
    return self.decode(q_st), z, q, idx
