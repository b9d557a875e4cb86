"""Full-reference image quality for reconstructions: PSNR and SSIM (Wang et al. 2004), batched in JAX.

SSIM uses the paper's setting: an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population
(not sample) variances, the mean taken over "valid" window positions only, per channel then averaged. These
are exactly scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=...)`, which the tests compare against.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np


def psnr(a_NxHxWxC, b_NxHxWxC, data_range: float = 2.0):
  """Per-image PSNR in dB; data_range is max - min of the pixel scale (2 for [-1, 1], 255 for uint8)."""
  a, b = jnp.asarray(a_NxHxWxC, jnp.float32), jnp.asarray(b_NxHxWxC, jnp.float32)
  mse = jnp.mean((a - b) ** 2, axis=(1, 2, 3))
  return 10.0 * jnp.log10(data_range ** 2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  g = np.exp(-x ** 2 / (2 * sigma ** 2))
  return (g / g.sum()).astype(np.float32)


def _filter_valid(x_NxHxWxC, window_K):
  """Separable Gaussian filter over H and W, each channel alone, keeping only full-window positions."""
  n, h, w, c = x_NxHxWxC.shape
  x = jnp.transpose(x_NxHxWxC, (0, 3, 1, 2)).reshape(n * c, h, w, 1)
  k = window_K.shape[0]
  rows = jax.lax.conv_general_dilated(x, window_K.reshape(k, 1, 1, 1), (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision=jax.lax.Precision.HIGHEST)
  both = jax.lax.conv_general_dilated(rows, window_K.reshape(1, k, 1, 1), (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision=jax.lax.Precision.HIGHEST)
  return both.reshape(n, c, h - k + 1, w - k + 1)


@functools.partial(jax.jit, static_argnames=("window_size", "sigma"))
def ssim(a_NxHxWxC, b_NxHxWxC, data_range: float = 2.0, window_size: int = 11, sigma: float = 1.5):
  """Per-image mean SSIM (averaged over channels); images must be at least window_size on each side."""
  a, b = jnp.asarray(a_NxHxWxC, jnp.float32), jnp.asarray(b_NxHxWxC, jnp.float32)
  window = jnp.asarray(gaussian_window(window_size, sigma))
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  mu_a, mu_b = _filter_valid(a, window), _filter_valid(b, window)
  var_a = _filter_valid(a * a, window) - mu_a ** 2
  var_b = _filter_valid(b * b, window) - mu_b ** 2
  cov = _filter_valid(a * b, window) - mu_a * mu_b
  ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
  return jnp.mean(ssim_map, axis=(1, 2, 3))
