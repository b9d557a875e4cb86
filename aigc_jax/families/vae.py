"""Variational autoencoders (Kingma & Welling 2014) with the importance-weighted bound of Burda et al. 2016.

Training maximises the ELBO  E_q[log p(x|z)] - KL(q(z|x) || N(0, I))  with one reparameterised sample and
the KL in closed form. `eval_step` reports, per example and in nats, the negative ELBO and the negative
k-sample importance-weighted bound  -log (1/k) sum_i p(x, z_i) / q(z_i|x)  (an upper bound on -log p(x) that
tightens as k grows), plus both in bits/dim.

Likelihoods: `bernoulli` on binary pixels (binarised dynamically, i.e. resampled every time an image is seen,
or by a fixed threshold), and `logistic` / `gaussian` discretised to the 256 levels of 8-bit data, so their
bits/dim are proper discrete code lengths comparable with the literature.
"""
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import log_ndtr
from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax import configs, optim
from aigc_jax.errors import UserError
from aigc_jax.families import Family, check_sample_label
from aigc_jax.media import images as image_media
from aigc_jax.models.vae import ConvVAE, MLPVAE
from aigc_jax.parallel import DATA_AXIS, example_keys, keys_for_ids, masked_mean

LIKELIHOODS = ("bernoulli", "logistic", "gaussian")
BINARIZE = ("dynamic", "threshold", "none")
BIN = 1.0 / 255.0  # half the width of one 8-bit level on the [-1, 1] scale


def default_config() -> ConfigDict:
  """`configs.base_config()` plus every key this family reads (Burda et al.'s one-layer MLP VAE);
  experiments/vae.py overrides it."""
  c = configs.base_config()
  c.family = "vae"
  m = c.model
  m.arch = "mlp"                   # mlp | conv (van den Oord et al. 2017's encoder/decoder)
  m.hidden = (200, 200)            # mlp: tanh layers of the encoder (mirrored in the decoder)
  m.latent_dim = 50                # mlp: Gaussian latents; conv: channels of the latent grid
  m.likelihood = "bernoulli"       # bernoulli | logistic | gaussian (the last two discretised to 8 bits)
  m.binarize = "dynamic"           # dynamic | threshold | none (bernoulli only; none needs binary data)
  m.conv_hidden = 256              # conv: channels
  m.num_residual_blocks = 2        # conv: residual blocks after the downsampling convolutions
  m.num_downsamples = 2            # conv: 4x4 stride-2 convolutions (latent grid = image / 2^this)

  c.optimizer = optim.optimizer_config(eps=1e-4)
  c.optimizer.steps_per_epoch = 0  # schedule 'burda' (3^i epochs at lr * 10^(-i/7)) counts epochs in steps

  c.sample.mode = "mean"           # mean of p(x|z) (the usual figure) | sample (a draw from it)
  c.sample.use_ema = False         # the family keeps no EMA
  c.eval.metrics = ("eval_step",)  # negative ELBO and IWAE bound, nats and bits/dim
  c.eval.reference_split = "test"
  c.eval.iwae_k = 5000             # importance samples of the IWAE bound
  c.eval.iwae_chunk = 500          # samples per decoder pass; memory ~ batch x chunk x pixels
  return c


def gaussian_kl(mean, logvar):
  """KL(N(mean, e^logvar) || N(0, 1)) summed over all but the batch axis, in nats."""
  kl = 0.5 * (jnp.exp(logvar) + mean ** 2 - 1.0 - logvar)
  return jnp.sum(kl.reshape(kl.shape[0], -1), axis=1)


def gaussian_log_density(z, mean, logvar):
  """log N(z; mean, e^logvar) summed over all but the leading axis."""
  lp = -0.5 * (math.log(2 * math.pi) + logvar + (z - mean) ** 2 * jnp.exp(-logvar))
  return jnp.sum(lp.reshape(lp.shape[0], -1), axis=1)


def bernoulli_log_prob(x01, logits):
  return x01 * logits - jax.nn.softplus(logits)


def discretized_logistic_log_prob(x, loc, log_scale):
  """log P(x) of 8-bit x in [-1, 1] under a logistic integrated over x's bin; edge bins reach +-infinity."""
  log_scale = jnp.maximum(log_scale, -7.0)
  inv_s = jnp.exp(-log_scale)
  upper, lower = inv_s * (x - loc + BIN), inv_s * (x - loc - BIN)
  log_cdf_upper = upper - jax.nn.softplus(upper)
  log_sf_lower = -jax.nn.softplus(lower)
  delta = jax.nn.sigmoid(upper) - jax.nn.sigmoid(lower)
  # Where the CDF difference underflows, the density at the bin centre times the bin width is accurate.
  mid = inv_s * (x - loc)
  log_mid = mid - log_scale - 2.0 * jax.nn.softplus(mid) + math.log(2 * BIN)
  log_delta = jnp.where(delta > 1e-5, jnp.log(jnp.maximum(delta, 1e-12)), log_mid)
  return jnp.where(x < -0.999, log_cdf_upper, jnp.where(x > 0.999, log_sf_lower, log_delta))


def discretized_gaussian_log_prob(x, mean, log_scale):
  log_scale = jnp.maximum(log_scale, -7.0)
  inv_s = jnp.exp(-log_scale)
  upper, lower = inv_s * (x - mean + BIN), inv_s * (x - mean - BIN)
  log_cdf_upper, log_sf_lower = log_ndtr(upper), log_ndtr(-lower)
  # log(Phi(u) - Phi(l)) = log Phi(u) + log1p(-Phi(l)/Phi(u)); stable unless the bin is deep in a tail
  ratio = jnp.exp(log_ndtr(lower) - log_cdf_upper)
  log_delta = log_cdf_upper + jnp.log1p(-jnp.minimum(ratio, 1.0 - 1e-6))
  return jnp.where(x < -0.999, log_cdf_upper, jnp.where(x > 0.999, log_sf_lower, log_delta))


def log_likelihood(kind, x, params_BxHxWxCxP):
  """log p(x|z) per example, summed over pixels. `x` is {0,1} for Bernoulli, [-1, 1] otherwise."""
  if kind == "bernoulli":
    lp = bernoulli_log_prob(x, params_BxHxWxCxP[..., 0])
  elif kind == "logistic":
    lp = discretized_logistic_log_prob(x, params_BxHxWxCxP[..., 0], params_BxHxWxCxP[..., 1])
  else:
    lp = discretized_gaussian_log_prob(x, params_BxHxWxCxP[..., 0], params_BxHxWxCxP[..., 1])
  return jnp.sum(lp.reshape(lp.shape[0], -1), axis=1)


def likelihood_mean(kind, params_BxHxWxCxP):
  """E[x|z] on the [-1, 1] image scale."""
  if kind == "bernoulli":
    return 2.0 * jax.nn.sigmoid(params_BxHxWxCxP[..., 0]) - 1.0
  return jnp.clip(params_BxHxWxCxP[..., 0], -1.0, 1.0)


def burda_schedule(lr, steps_per_epoch, num_stages=8):
  """Burda et al. 2016 (Section 5): 3^i epochs at lr * 10^(-i/7) for i = 0..7 (3,280 epochs in all)."""
  boundaries, epochs = {}, 0
  for i in range(num_stages - 1):
    epochs += 3 ** i
    boundaries[epochs * steps_per_epoch] = 10.0 ** (-1.0 / 7.0)
  return optax.piecewise_constant_schedule(lr, boundaries)


def make_optimizer(opt: ConfigDict):
  if opt.schedule == "burda":
    if opt.steps_per_epoch < 1:
      raise UserError("optimizer.schedule='burda' counts epochs: set --config.optimizer.steps_per_epoch to the "
                      "training-set size / batch_size")
    # optim.make_schedule has no piecewise schedule, so this one is built here.
    schedule = burda_schedule(opt.learning_rate, opt.steps_per_epoch)
    return optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps), schedule
  return optim.make_optimizer(opt)


def check_binary_data(config: ConfigDict):
  """Bernoulli without binarisation is only a likelihood if every pixel is 0 or 255."""
  from aigc_jax import data as data_lib
  images = data_lib.load_image_set(config.data).images
  levels = np.unique(images[: 10_000])
  if not np.all(np.isin(levels, (0, 255))):
    raise UserError(
        f"model.likelihood='bernoulli' needs binary pixels but {config.data.name} has {len(levels)} grey "
        "levels; set --config.model.binarize=dynamic (or threshold), or use a logistic/gaussian likelihood")


def build_model(config: ConfigDict):
  m, d = config.model, config.data
  image_shape = (d.image_size, d.image_size, d.channels)
  num_params = 1 if m.likelihood == "bernoulli" else 2
  dtype = optim.compute_dtype(config.dtype)
  if m.arch == "mlp":
    return MLPVAE(image_shape, tuple(m.hidden), m.latent_dim, num_params, dtype=dtype)
  if m.arch == "conv":
    return ConvVAE(image_shape, m.latent_dim, m.conv_hidden, m.conv_hidden, m.num_residual_blocks,
                   m.num_downsamples, num_params, dtype=dtype)
  raise UserError(f"unknown model.arch {m.arch!r} for the vae family; use 'mlp' or 'conv'")


def make_family(config: ConfigDict) -> Family:
  m = config.model
  check_sample_label(config, 0)
  if m.likelihood not in LIKELIHOODS:
    raise UserError(f"unknown model.likelihood {m.likelihood!r}; use one of {LIKELIHOODS}")
  if m.binarize not in BINARIZE:
    raise UserError(f"unknown model.binarize {m.binarize!r}; use one of {BINARIZE}")
  if m.likelihood != "bernoulli" and m.binarize != "none":
    raise UserError(f"model.binarize={m.binarize!r} only applies to the bernoulli likelihood; set "
                    "--config.model.binarize=none")
  if m.likelihood == "bernoulli" and m.binarize == "none":
    check_binary_data(config)
  k, chunk = config.eval.iwae_k, min(config.eval.iwae_chunk, config.eval.iwae_k)
  if k < 1 or k % chunk:
    raise UserError(f"eval.iwae_k={k} must be >= 1 and a multiple of eval.iwae_chunk={chunk}")
  model = build_model(config)
  tx, schedule = make_optimizer(config.optimizer)
  num_dims = config.data.image_size ** 2 * config.data.channels
  latent_shape = model.latent_shape()

  def prepare(x, keys_Bx2):
    """Model input and likelihood target: binary {0, 1} for Bernoulli, the [-1, 1] image otherwise."""
    if m.likelihood != "bernoulli":
      return x
    p = (x + 1.0) / 2.0
    if m.binarize == "dynamic":
      return jax.vmap(lambda k, p1: jax.random.bernoulli(k, p1).astype(jnp.float32))(keys_Bx2, p)
    if m.binarize == "threshold":
      return (p > 0.5).astype(jnp.float32)
    return jnp.round(p)

  def noise(keys_Bx2):
    return jax.vmap(lambda k: jax.random.normal(k, latent_shape))(keys_Bx2)

  def fold(keys_Bx2, purpose):
    return jax.vmap(lambda k: jax.random.fold_in(k, purpose))(keys_Bx2)

  def init(rng, example_batch):
    x = example_batch["image"]
    z = jnp.zeros((x.shape[0], *latent_shape))
    params = model.init(rng, x, z)["params"]
    return {"step": jnp.zeros((), jnp.int32), **optim.init_train_state(params, tx, ema=False)}

  def elbo_terms(params, x, keys_Bx2):
    mean, logvar = model.apply({"params": params}, x, method=model.encode)
    z = mean + jnp.exp(0.5 * logvar) * noise(keys_Bx2)
    recon = log_likelihood(m.likelihood, x, model.apply({"params": params}, z, method=model.decode))
    return recon, gaussian_kl(mean, logvar)

  def train_step(state, batch, rng):
    keys = example_keys(rng, batch["image"].shape[0])
    x = prepare(batch["image"], fold(keys, 0))

    def loss_fn(params):
      recon, kl = elbo_terms(params, x, fold(keys, 1))
      return jnp.mean(kl - recon), (recon, kl)

    (loss, (recon, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    new_state, _ = optim.apply_gradients(state, grads, tx, state["step"])
    new_state["step"] = state["step"] + 1
    metrics = {"neg_elbo": loss, "recon_nll": -jnp.mean(recon), "kl": jnp.mean(kl),
               "bits_per_dim": loss / (num_dims * math.log(2)), "learning_rate": schedule(state["step"])}
    return new_state, jax.lax.pmean(metrics, DATA_AXIS)

  def log_weights(params, x, keys_Bx2):
    """[B, k] importance log-weights log p(x|z) + log p(z) - log q(z|x), z ~ q, plus the analytic KL [B]."""
    mean, logvar = model.apply({"params": params}, x, method=model.encode)

    def one_chunk(_, c):
      eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, c), (chunk, *latent_shape)))(keys_Bx2)
      z = mean[:, None] + jnp.exp(0.5 * logvar)[:, None] * eps  # [B, chunk, ...]
      z_flat = z.reshape(-1, *latent_shape)
      x_rep = jnp.repeat(x, chunk, axis=0)
      lpx = log_likelihood(m.likelihood, x_rep, model.apply({"params": params}, z_flat, method=model.decode))
      lpz = gaussian_log_density(z_flat, jnp.zeros_like(z_flat), jnp.zeros_like(z_flat))
      lqz = gaussian_log_density(z_flat, jnp.repeat(mean, chunk, 0), jnp.repeat(logvar, chunk, 0))
      return None, (lpx.reshape(-1, chunk), (lpz - lqz).reshape(-1, chunk))

    _, (lpx, lratio) = jax.lax.scan(one_chunk, None, jnp.arange(k // chunk))  # [n, B, chunk]
    to_bk = lambda a: jnp.moveaxis(a, 0, 1).reshape(a.shape[1], -1)
    return to_bk(lpx), to_bk(lratio), gaussian_kl(mean, logvar)

  def eval_step(state, batch, rng):
    """Means over the global batch (rows with batch['mask'] == 0 are padding and ignored)."""
    keys = example_keys(rng, batch["image"].shape[0])
    x = prepare(batch["image"], fold(keys, 0))
    lpx, lratio, kl = log_weights(state["params"], x, fold(keys, 1))
    neg_elbo = kl - jnp.mean(lpx, axis=1)  # analytic KL, reconstruction averaged over the k samples
    iwae_nll = -(jax.nn.logsumexp(lpx + lratio, axis=1) - math.log(k))
    per_example = {"neg_elbo": neg_elbo, "iwae_nll": iwae_nll, "kl": kl}
    metrics = masked_mean(per_example, batch, x.shape[0])
    metrics["neg_elbo_bits_per_dim"] = metrics["neg_elbo"] / (num_dims * math.log(2))
    metrics["iwae_nll_bits_per_dim"] = metrics["iwae_nll"] / (num_dims * math.log(2))
    return metrics

  def sample(state, rng, ids_B):
    """Images from the prior: the likelihood's mean (sample.mode='mean') or a draw from it ('sample')."""
    keys = keys_for_ids(rng, ids_B)
    z = noise(keys)
    out = model.apply({"params": state["params"]}, z, method=model.decode)
    if config.sample.mode == "mean":
      return {"images": likelihood_mean(m.likelihood, out)}
    draw_keys = fold(keys, 1)
    if m.likelihood == "bernoulli":
      bits = jax.vmap(lambda k, l: jax.random.bernoulli(k, jax.nn.sigmoid(l)))(draw_keys, out[..., 0])
      return {"images": 2.0 * bits.astype(jnp.float32) - 1.0}
    u = jax.vmap(lambda k: jax.random.uniform(k, out.shape[1:-1], minval=1e-5, maxval=1 - 1e-5))(draw_keys)
    spread = jnp.log(u) - jnp.log1p(-u) if m.likelihood == "logistic" else jax.scipy.special.ndtri(u)
    x = out[..., 0] + jnp.exp(out[..., 1]) * spread
    return {"images": jnp.clip(jnp.round((x + 1) * 127.5) / 127.5 - 1.0, -1.0, 1.0)}

  return Family(init=init, train_step=train_step, sample=sample, eval_step=eval_step,
                write_figures=functools.partial(write_figures, config))


def _deterministic_input(config: ConfigDict, x):
  """Encoder input without sampling: thresholded pixels for Bernoulli models, the image otherwise."""
  return ((x + 1.0) / 2.0 > 0.5).astype(jnp.float32) if config.model.likelihood == "bernoulli" else x


def reconstruct(config: ConfigDict, state, images_NxHxWxC):
  """Reconstructions (likelihood means at the posterior mean) of [-1, 1] images, for grids and checks."""
  model, params = build_model(config), state["params"]
  mean, _ = model.apply({"params": params}, _deterministic_input(config, images_NxHxWxC), method=model.encode)
  return likelihood_mean(config.model.likelihood, model.apply({"params": params}, mean, method=model.decode))


def interpolate(config: ConfigDict, state, images_a, images_b, num_steps: int):
  """[N * num_steps] images decoded along straight lines between the posterior means of a and b."""
  model, params = build_model(config), state["params"]
  za, _ = model.apply({"params": params}, _deterministic_input(config, images_a), method=model.encode)
  zb, _ = model.apply({"params": params}, _deterministic_input(config, images_b), method=model.encode)
  t = jnp.linspace(0.0, 1.0, num_steps).reshape((1, num_steps) + (1,) * (za.ndim - 1))
  z = (za[:, None] * (1 - t) + zb[:, None] * t).reshape((-1, *za.shape[1:]))
  return likelihood_mean(config.model.likelihood, model.apply({"params": params}, z, method=model.decode))


def write_figures(config: ConfigDict, state, directory: str, step: int, num: int = 10, num_steps: int = 10):
  """Writes <step>_reconstructions.png (rows of input/reconstruction pairs of test images) and
  <step>_interpolations.png (one row per pair of test images, `num_steps` points between them)."""
  images = data_lib.to_model_range(data_lib.load_image_set(config.data, "test").images[:3 * num])
  state = jax.device_get(state)
  recon = np.asarray(reconstruct(config, state, images[:num * num_steps // 2]))
  pairs = np.stack([images[:len(recon)], recon], axis=1).reshape(-1, *recon.shape[1:])
  lines = np.asarray(interpolate(config, state, images[num:2 * num], images[2 * num:3 * num], num_steps))
  os.makedirs(directory, exist_ok=True)
  paths = []
  for name, grid in (("reconstructions", pairs), ("interpolations", lines)):
    path = os.path.join(directory, f"{step}_{name}.png")
    image_media.save_png(path, image_media.image_grid(image_media.to_uint8(grid), num_steps))
    paths.append(path)
  return paths
