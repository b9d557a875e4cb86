"""The KL-regularised autoencoder of latent diffusion ("LDM-KL"; Rombach, Blattmann, Lorenz, Esser & Ommer, CVPR
2022, Section 3.1): VQGAN's autoencoder recipe (Esser, Rombach & Ommer 2021) with a diagonal-Gaussian
bottleneck in place of the codebook, trained as its own run; latent diffusion then works on its latents
(`load_autoencoder` below is the contract the diffusion family reads).

Loss per example, then averaged over the batch, as the paper's code (ldm/modules/losses/contperceptual.py)
sums it:  H W C (mean |x - x_hat| + perceptual_weight * LPIPS(x, x_hat)) + kl_weight * KL(q(z|x) || N(0, I))
[+ lambda * L_GAN]. x_hat decodes one reparameterised sample z = mean + sigma * eps; the KL is in closed form,
summed over the h x w x c latent. kl_weight = 1e-6 in every LDM-KL config; because the reconstruction term is a
sum over pixels, that weight is relative to it. The code's learned output log-variance (`logvar`, initialised
to 0) is not in its optimiser, so it stays 0 and is left out here. The perceptual term is the project's own
LPIPS-style distance (vqgan_lib, on the dataset classifier; no VGG weights) and the optional PatchGAN
(`model.use_discriminator`) the VQGAN family's, with its adaptive weight and disc_start (vqgan_lib.Adversary).

The latent scale factor (LDM's `scale_factor` = 1 / std of the latents, so the diffusion model sees unit-variance
inputs): every train step stores the mean and std of the posterior means of its global training batch in
state["latent_stats"], so each checkpoint carries the statistics of the last training batch it saw, saved
atomically with the params they belong to (orbax writes the whole state or nothing) and restored with them;
nothing recomputes it later or with other data. The paper's code computes the same std on one batch (the first
batch of diffusion training, from posterior samples); here it is the posterior means, which is what
`load_autoencoder().encode` returns, taken with the encoder as it was at the start of the checkpoint's last step
(one optimiser step before the saved params). The trainer has no per-checkpoint hook a family could use to write
a side file, and a file next to the checkpoint could drift from it (copied, moved or deleted separately).

Samples: the first half of the grid (rounded to pairs) shows test images next to their reconstructions (from
the posterior mean), the rest decodes of z ~ N(0, I) / scale_factor, i.e. of unit-variance draws in the scaled
space the diffusion model samples in (blurry or odd: the KL weight is far too small for a usable prior).
Evaluation (eval_step over eval.reference_split): reconstruction MSE, PSNR and SSIM (>= 11 px) from the
posterior mean, the KL per latent dimension (nats) and the latents' std; `rfid` through encode/decode.
"""
import functools
import hashlib
import math
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from aigc_jax import configs, optim
from aigc_jax.checkpointing import Checkpointer
from aigc_jax.errors import UserError
from aigc_jax.evaluation.image_quality import psnr, ssim
from aigc_jax.families import Family, check_sample_label, vqgan_lib
from aigc_jax.families.vae import gaussian_kl
from aigc_jax.models.autoencoder_kl import AutoencoderKL, last_layer
from aigc_jax.models.patch_discriminator import patch_grid_size
from aigc_jax.parallel import DATA_AXIS, example_keys, keys_for_ids, masked_mean


def default_config() -> ConfigDict:
  """`configs.base_config()` plus every key this family reads (LDM's KL f=8 autoencoder at the paper's width);
  experiments/autoencoder_kl.py overrides it."""
  c = configs.base_config()
  c.family = "autoencoder_kl"
  m = c.model
  m.ch = 128                       # channels of the first level
  m.ch_mult = (1, 2, 4, 4)         # per level; the latent side is image_size / 2^(len(ch_mult) - 1)
  m.num_res_blocks = 2             # ResnetBlocks per level (decoder: one more)
  m.attn_resolutions = ()          # feature-map sides with self-attention after each block (LDM-KL: none)
  m.mid_attention = True           # self-attention between the two middle blocks (always, in the paper's code)
  m.latent_channels = 4            # c of the h x w x c latent
  m.kl_weight = 1e-6               # on the summed KL, against the summed reconstruction loss (LDM-KL configs)
  m.pixel_loss = "l1"              # l1 (LDM) | mse
  m.perceptual_weight = 0.0        # LPIPS-style loss on the data.name classifier (vqgan_lib); LDM: 1.0; 0 = off
  m.use_discriminator = False      # the PatchGAN with the adaptive weight (vqgan_lib.Adversary)
  m.disc_weight = 0.5              # factor on the adaptive adversarial weight (LDM-KL configs)
  m.disc_start = 0                 # first step with the adversarial loss and discriminator updates
  m.disc_loss = "hinge"            # hinge | vanilla
  m.disc_layers = 3                # stride-2 convolutions of the PatchGAN discriminator
  m.disc_width = 64                # channels of its first layer
  m.disc_norm = "batch"            # batch (the paper's code) | none
  c.optimizer = optim.optimizer_config(learning_rate=1e-4, b1=0.5, b2=0.9)  # the paper's Adam betas
  c.sample.num = 64                # 16 input/reconstruction pairs, then 32 decodes of prior draws
  c.sample.split = "test"          # split whose first images are reconstructed
  c.sample.use_ema = False         # no parameter EMA in this family
  c.eval.metrics = ("eval_step", "rfid")  # reconstruction MSE / PSNR / SSIM, KL per dim; reconstruction FID
  c.eval.reference_split = "test"
  return c


def latent_shape(config: ConfigDict):
  """(h, w, c) of the latent of one data.image_size image."""
  side = config.data.image_size // 2 ** (len(config.model.ch_mult) - 1)
  return side, side, config.model.latent_channels


def check_config(config: ConfigDict):
  """One-line UserErrors for values the family cannot use or would ignore, before any data is read."""
  m, size = config.model, config.data.image_size
  if not m.ch_mult or any(not isinstance(k, int) or k < 1 for k in m.ch_mult):
    raise UserError(f"model.ch_mult must be positive integers, one per level, got {m.ch_mult!r}; e.g. \"(1, 2, 4)\"")
  factor = 2 ** (len(m.ch_mult) - 1)
  if size % factor:
    raise UserError(f"data.image_size={size} is not divisible by 2^(len(model.ch_mult) - 1) = {factor}; change "
                    "one of them")
  sides = [size // 2 ** i for i in range(len(m.ch_mult))]
  unused = [r for r in m.attn_resolutions if r not in sides]
  if unused:
    raise UserError(f"model.attn_resolutions has {unused[0]}, which no level has (the sides are {sides}); "
                    "list sides from those, or () for none")
  if m.kl_weight < 0:
    raise UserError(f"model.kl_weight={m.kl_weight} must be >= 0 (LDM-KL: 1e-6)")
  if m.pixel_loss not in vqgan_lib.PIXEL_LOSSES:
    raise UserError(f"unknown model.pixel_loss {m.pixel_loss!r}; use one of {vqgan_lib.PIXEL_LOSSES}")
  if m.perceptual_weight < 0:
    raise UserError(f"model.perceptual_weight={m.perceptual_weight} must be >= 0 (0 turns it off)")
  if config.sample.use_ema:
    raise UserError("sample.use_ema=True but the autoencoder_kl family keeps no EMA; set "
                    "--config.sample.use_ema=false")
  vqgan_lib.check_adversary_config(config, default_config(), patch_grid_size(size, m.disc_layers),
                                   m.use_discriminator, on="model.use_discriminator=true",
                                   off="model.use_discriminator=false")
  check_sample_label(config, 0)


def build_model(config: ConfigDict) -> AutoencoderKL:
  m = config.model
  return AutoencoderKL(latent_channels=m.latent_channels, ch=m.ch, ch_mult=tuple(m.ch_mult),
                       num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions),
                       mid_attention=m.mid_attention, dtype=optim.compute_dtype(config.dtype),
                       channels=config.data.channels)


def latent_moments(mean_Bxhxwxc):
  """{"mean", "std"} of every element of the global batch's posterior means (pooled over the data axis)."""
  first = jax.lax.pmean(jnp.mean(mean_Bxhxwxc), DATA_AXIS)
  second = jax.lax.pmean(jnp.mean(mean_Bxhxwxc ** 2), DATA_AXIS)
  return {"mean": first, "std": jnp.sqrt(jnp.maximum(second - first ** 2, 0.0))}


def build(config: ConfigDict):
  """The family plus what `load_autoencoder` and the tests reach for (model, init, encode/decode)."""
  check_config(config)
  m = config.model
  model = build_model(config)
  tx, schedule = optim.make_optimizer(config.optimizer)
  adversary = vqgan_lib.Adversary(config, tx) if m.use_discriminator else None
  hwc = latent_shape(config)
  pixels = config.data.image_size ** 2 * config.data.channels
  perceptual = {}  # the classifier, loaded when the train step is first traced
  conv_out = last_layer(config.data.channels, model.dtype)

  def init(rng, example_batch):
    x = example_batch["image"]
    params = model.init(rng, x, jnp.zeros((x.shape[0], *hwc), jnp.float32))["params"]
    state = {"step": jnp.zeros((), jnp.int32), **optim.init_train_state(params, tx, ema=False),
             "latent_stats": {"mean": jnp.zeros((), jnp.float32), "std": jnp.ones((), jnp.float32)}}
    if adversary is not None:
      state["discriminator"] = adversary.init(jax.random.fold_in(rng, 1), x)
    return state

  def nll(recon, x):
    """The reconstruction term summed over pixels (mean over the batch), as the paper's code sums it."""
    return pixels * vqgan_lib.reconstruction_loss(recon, x, m.pixel_loss, m.perceptual_weight, perceptual.get("net"))

  def losses(state, params, x, eps):
    (recon, _, mean, logvar), inter = model.apply({"params": params}, x, eps, mutable=["intermediates"])
    rec = nll(recon, x)
    kl = jnp.mean(gaussian_kl(mean, logvar))
    loss = rec + m.kl_weight * kl
    aux = {"recon": recon, "mean": mean, "rec_loss": rec, "kl": kl, "logvar": jnp.mean(logvar)}
    if adversary is not None:
      adv, adv_aux = adversary.generator_term(
          state["discriminator"], state["step"], recon, lambda r: nll(r, x), conv_out, params["decoder"]["conv_out"],
          inter["intermediates"]["decoder"]["last_layer_input"][0])
      loss = loss + adv
      aux.update(adv_aux)
    return loss, aux

  def latent_noise(keys_B):
    """eps ~ N(0, I) of the latent's shape, one draw per key."""
    return jax.vmap(lambda k: jax.random.normal(k, hwc))(keys_B)

  def train_step(state, batch, rng):
    x = batch["image"]
    if m.perceptual_weight > 0 and "net" not in perceptual:
      perceptual["net"] = vqgan_lib.load_perceptual_net(config)
    eps = latent_noise(example_keys(rng, x.shape[0]))  # each example its own draw, whatever the device count
    (loss, aux), grads = jax.value_and_grad(lambda p: losses(state, p, x, eps), has_aux=True)(state["params"])
    new_state, grad_norm = optim.apply_gradients(state, grads, tx, state["step"])
    new_state["step"] = state["step"] + 1
    new_state["latent_stats"] = latent_moments(jax.lax.stop_gradient(aux["mean"]))
    recon = jax.lax.stop_gradient(aux["recon"])
    metrics = {"loss": loss, "rec_loss": aux["rec_loss"], "kl": aux["kl"], "kl_per_dim": aux["kl"] / math.prod(hwc),
               "posterior_logvar": aux["logvar"], "psnr": jnp.mean(psnr(jnp.clip(recon, -1, 1), x)),
               "grad_norm": grad_norm, "learning_rate": schedule(state["step"])}
    metrics.update({k: aux[k] for k in ("g_adv", "adaptive_weight", "rec_grad_norm", "gan_grad_norm") if k in aux})
    if adversary is not None:
      new_state["discriminator"], d_metrics = adversary.update(state["discriminator"], state["step"], x, recon)
      metrics.update(d_metrics)
    metrics = jax.lax.pmean(metrics, DATA_AXIS)
    metrics["latent_std"] = new_state["latent_stats"]["std"]
    return new_state, metrics

  def encode_params(params, x_BxHxWxC):
    return model.apply({"params": params}, x_BxHxWxC, method=AutoencoderKL.encode)

  def decode_params(params, z_Bxhxwxc):
    """Latents (unscaled) -> images clipped to [-1, 1]."""
    return jnp.clip(model.apply({"params": params}, z_Bxhxwxc, method=AutoencoderKL.decode), -1.0, 1.0)

  def eval_step(state, batch, rng):
    """Per-example MSE, PSNR, SSIM of the posterior-mean reconstructions and KL per latent dim (masked means)."""
    del rng
    x = batch["image"]
    mean, logvar = encode_params(state["params"], x)
    recon = decode_params(state["params"], mean)
    per_example = {"mse": jnp.mean((recon - x) ** 2, axis=(1, 2, 3)), "psnr": psnr(recon, x),
                   "kl_per_dim": gaussian_kl(mean, logvar) / math.prod(hwc),
                   "latent_std": jnp.std(mean.reshape(mean.shape[0], -1), axis=1)}
    if min(x.shape[1:3]) >= 11:  # SSIM's 11x11 window must fit
      per_example["ssim"] = ssim(recon, x)
    return masked_mean(per_example, batch, x.shape[0])

  def encode(state, batch, rng):
    """Posterior means (unscaled), for `rfid`; not discrete codes, so --mode=encode does not apply."""
    del rng
    return {"codes": encode_params(state["params"], batch["image"])[0]}

  def decode(state, latents_Bxhxwxc):
    return decode_params(state["params"], latents_Bxhxwxc)

  def sample(state, rng, ids_B):
    """First 2 ceil(num / 4) ids: inputs and reconstructions; the rest: decodes of N(0, I) / scale_factor."""
    pairs = -(-config.sample.num // 4)
    shown = vqgan_lib.inputs_and_reconstructions(
        config, ids_B, lambda x: decode_params(state["params"], encode_params(state["params"], x)[0]), pairs)
    z = latent_noise(keys_for_ids(rng, ids_B))
    drawn = decode_params(state["params"], z * state["latent_stats"]["std"])
    return {"images": jnp.where((ids_B < 2 * pairs)[:, None, None, None], shown, drawn)}

  family = Family(init=init, train_step=train_step, sample=sample, eval_step=eval_step, encode=encode,
                  decode=decode, samples_are_generated=False)
  return types.SimpleNamespace(family=family, model=model, init=init, losses=losses, latent_noise=latent_noise,
                               encode_params=encode_params, decode_params=decode_params, latent_shape=hwc)


def make_family(config: ConfigDict) -> Family:
  return build(config).family


def load_autoencoder(workdir_or_checkpoint: str, step: int = None, key: str = "model.autoencoder",
                     expect_image_shape=None):
  """A trained autoencoder_kl run, frozen, restored with the run's own saved config (no data read):
  namespace(encode(images_NxHxWxC in [-1, 1]) -> posterior means * scale_factor [N, h, w, c],
  decode(latents [N, h, w, c], already times scale_factor) -> images in [-1, 1], jax_encode(params, x) /
  jax_decode(params, z) (the same, jittable and pure), params, latent_shape (h, w, c), image_shape (H, W, C),
  scale_factor, latent_mean, step, checkpoint, fingerprint (sha256 of the params, 16 hex), config, model).
  encode/decode take and give numpy. `workdir_or_checkpoint` is a run's workdir (newest step, or `step`) or one
  of its checkpoints/<step> directories; `key` names the config key that pointed here in every error;
  `expect_image_shape` (H, W, C), when given, must be the autoencoder's (the caller's data)."""
  path = os.path.abspath(workdir_or_checkpoint)
  if os.path.basename(os.path.dirname(path)) == "checkpoints" and os.path.basename(path).isdigit():
    path, step = os.path.dirname(os.path.dirname(path)), int(os.path.basename(path))
  if not os.path.isdir(os.path.join(path, "checkpoints")):
    raise UserError(f"{key}={path} has no checkpoints/; train the autoencoder there first "
                    f"(experiments/autoencoder_kl.py), or point {key} at an autoencoder_kl run's workdir")
  ckpt = Checkpointer(path, create=False)
  try:
    steps = sorted(ckpt.all_steps())
  finally:
    ckpt.close()
  if not steps:
    raise UserError(f"{key}={path} has no saved checkpoint yet; let its training save one (checkpoint_every_steps)")
  step = steps[-1] if step is None else int(step)
  if step not in steps:
    raise UserError(f"{key}={path} has no checkpoint of step {step} (it has {steps})")
  loaded = _load(path, step, key)
  if expect_image_shape is not None and tuple(expect_image_shape) != loaded.image_shape:
    raise UserError(f"{key}={path} encodes {'x'.join(map(str, loaded.image_shape))} images but the data are "
                    f"{'x'.join(map(str, expect_image_shape))}; point {key} at an autoencoder trained on this "
                    "data's data.image_size and data.channels")
  return loaded


@functools.lru_cache(maxsize=4)
def _load(workdir: str, step: int, key: str):
  ckpt = Checkpointer(workdir, create=False)
  try:
    config = ConfigDict(ckpt.saved_config(step))
    if config.get("family") != "autoencoder_kl":
      raise UserError(f"{key}={workdir} is a {config.get('family')!r} run, not an autoencoder_kl run; point it at a "
                      "run of experiments/autoencoder_kl.py")
    built = build(config)
    d = config.data
    example = {"image": np.zeros((2, d.image_size, d.image_size, d.channels), np.float32)}
    abstract = jax.eval_shape(built.init, jax.random.key(0), example)
    state, _, _ = ckpt.restore(step, abstract, Mesh(np.asarray(jax.devices()[:1]), (DATA_AXIS,)))
  finally:
    ckpt.close()
  state = jax.device_get(state)
  params, stats = state["params"], state["latent_stats"]
  scale = float(1.0 / stats["std"])
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    digest.update(np.ascontiguousarray(leaf).tobytes())

  def jax_encode(params_, x_NxHxWxC):
    return built.encode_params(params_, x_NxHxWxC)[0] * scale

  def jax_decode(params_, z_Nxhxwxc):
    return built.decode_params(params_, z_Nxhxwxc / scale)

  jit_encode, jit_decode = jax.jit(jax_encode), jax.jit(jax_decode)

  def chunked(fn, rows, chunk=256):
    """fn over `rows` in chunks of at most `chunk` (one compile per distinct chunk size), as numpy."""
    rows = np.asarray(rows, np.float32)
    return np.concatenate([np.asarray(fn(params, jnp.asarray(rows[i:i + chunk])))
                           for i in range(0, max(len(rows), 1), chunk)])[:len(rows)]

  return types.SimpleNamespace(
      encode=lambda images: chunked(jit_encode, images), decode=lambda latents: chunked(jit_decode, latents),
      jax_encode=jax_encode, jax_decode=jax_decode, params=params, latent_shape=tuple(built.latent_shape),
      image_shape=(d.image_size, d.image_size, d.channels), scale_factor=scale,
      latent_mean=float(stats["mean"]), step=int(step), checkpoint=ckpt.path(step),
      fingerprint=digest.hexdigest()[:16], config=config, model=built.model)
