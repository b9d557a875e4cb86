"""VAE networks: Gaussian encoder q(z|x) and a decoder that outputs the likelihood's parameters.

`MLPVAE` is the one-stochastic-layer model of Burda, Grosse & Salakhutdinov 2016 (Table 1, "VAE" rows):
x -> tanh 200 -> tanh 200 -> (mean, log-variance) of 50 latents, and z -> tanh 200 -> tanh 200 -> pixels.
`ConvVAE` uses the VQ-VAE paper's conv encoder/decoder (models/vqvae.py) with a continuous spatial latent,
the "VAE" row that van den Oord et al. 2017 (Section 4.1) compare against on CIFAR-10.

The decoder returns `num_params` numbers per pixel channel, stacked on the last axis: 1 (Bernoulli logits)
or 2 (location, log-scale for the discretised logistic / Gaussian); the family interprets them.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from aigc_jax.models.vqvae import ConvDecoder, ConvEncoder


class MLPVAE(nn.Module):
  image_shape: Sequence[int]  # (H, W, C)
  hidden: Sequence[int] = (200, 200)
  latent_dim: int = 50
  num_params: int = 1
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.enc_layers = [nn.Dense(w, dtype=self.dtype) for w in self.hidden]
    self.enc_out = nn.Dense(2 * self.latent_dim, dtype=self.dtype)
    self.dec_layers = [nn.Dense(w, dtype=self.dtype) for w in self.hidden]
    size = 1
    for d in self.image_shape:
      size *= d
    self.dec_out = nn.Dense(size * self.num_params, dtype=self.dtype)

  def encode(self, x_BxHxWxC):
    """(mean, log-variance) of q(z|x), each [B, Z]."""
    h = x_BxHxWxC.reshape((x_BxHxWxC.shape[0], -1)).astype(self.dtype)
    for layer in self.enc_layers:
      h = jnp.tanh(layer(h))
    mean, logvar = jnp.split(self.enc_out(h).astype(jnp.float32), 2, axis=-1)
    return mean, logvar

  def decode(self, z_BxZ):
    """Likelihood parameters [B, H, W, C, num_params]."""
    h = z_BxZ.astype(self.dtype)
    for layer in self.dec_layers:
      h = jnp.tanh(layer(h))
    out = self.dec_out(h).astype(jnp.float32)
    return out.reshape((z_BxZ.shape[0], *self.image_shape, self.num_params))

  def latent_shape(self):
    return (self.latent_dim,)

  def __call__(self, x_BxHxWxC, z_BxZ):
    return self.encode(x_BxHxWxC), self.decode(z_BxZ)


class ConvVAE(nn.Module):
  image_shape: Sequence[int]
  latent_channels: int = 64
  hidden: int = 256
  residual_hidden: int = 256
  num_residual_blocks: int = 2
  num_downsamples: int = 2
  num_params: int = 2
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.encoder = ConvEncoder(2 * self.latent_channels, self.hidden, self.residual_hidden,
                               self.num_residual_blocks, self.num_downsamples, dtype=self.dtype)
    self.decoder = ConvDecoder(self.image_shape[-1] * self.num_params, self.hidden, self.residual_hidden,
                               self.num_residual_blocks, self.num_downsamples, dtype=self.dtype)

  def encode(self, x_BxHxWxC):
    mean, logvar = jnp.split(self.encoder(x_BxHxWxC), 2, axis=-1)
    return mean, logvar

  def decode(self, z_BxhxwxZ):
    out = self.decoder(z_BxhxwxZ)
    return out.reshape((*out.shape[:-1], self.image_shape[-1], self.num_params))

  def latent_shape(self):
    h, w, _ = self.image_shape
    f = 2 ** self.num_downsamples
    return (h // f, w // f, self.latent_channels)

  def __call__(self, x_BxHxWxC, z_BxhxwxZ):
    return self.encode(x_BxHxWxC), self.decode(z_BxhxwxZ)
