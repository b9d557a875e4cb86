"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017): a deterministic autoencoder with a discrete bottleneck.

Loss = ||x - D(z_q)||^2 + ||sg(z_e) - e||^2 + beta ||z_e - sg(e)||^2 (the paper's eq. 3, with a fixed-variance
Gaussian decoder, i.e. MSE). Gradients pass the quantiser straight through (z_e + sg(z_q - z_e)). With
`model.codebook_update='ema'` the codebook term is dropped and each code becomes an exponential moving average
of the encoder outputs assigned to it (Appendix A), with counts and sums summed over every device so the
update does not depend on how the batch is split.

`model.variant='vqgan'` turns it into VQGAN (Esser, Rombach & Ommer, CVPR 2021): a PatchGAN discriminator
(state["discriminator"], updated in the same step on this step's reconstructions) whose adversarial loss
enters with the adaptive weight of the paper's eq. 7 from `model.disc_start` on; before that step the
adversarial term is multiplied by 0 and the discriminator's update is discarded (its params, optimiser state
and batch stats stay at their initial values). Options for either variant: an L1 pixel loss, an LPIPS-style
perceptual loss on the project's own dataset classifier, unit-normalised codes (cosine lookup) and
dead-code restarts (families/vqgan_lib.py).

`sample` reconstructs data (there is no prior over codes here): even ids are inputs, odd ids their
reconstructions, so a grid shows input/reconstruction pairs side by side. `encode` gives the code grid of
each image (for `--mode=encode`, and to train a prior over codes later).
"""
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from aigc_jax import configs, optim
from aigc_jax.errors import UserError
from aigc_jax.evaluation.image_quality import psnr, ssim
from aigc_jax.families import Family, check_sample_label
from aigc_jax.families import vqgan_lib
from aigc_jax.models.patch_discriminator import patch_grid_size
from aigc_jax.models.vqvae import VQVAE, last_decoder_layer
from aigc_jax.parallel import DATA_AXIS, masked_mean

CODEBOOK_UPDATES = ("loss", "ema")
VARIANTS = ("vqvae", "vqgan")
PIXEL_LOSSES = vqgan_lib.PIXEL_LOSSES


def default_config() -> ConfigDict:
  """`configs.base_config()` plus every key this family reads (the paper's CIFAR-10 autoencoder);
  experiments/vqvae.py overrides it."""
  c = configs.base_config()
  c.family = "vqvae"
  m = c.model
  m.num_codes = 512                # K, codebook size
  m.code_dim = 64                  # D, size of each code
  m.hidden = 256                   # channels of the encoder/decoder convolutions
  m.residual_hidden = 256          # channels inside each residual block
  m.num_residual_blocks = 2
  m.num_downsamples = 2            # 4x4 stride-2 convolutions (code grid = image / 2^this)
  m.beta = 0.25                    # commitment cost
  m.codebook_update = "loss"       # loss (eq. 3) | ema (Appendix A)
  m.ema_decay = 0.99               # ema codebook: decay of the code statistics (not a parameter EMA)
  m.ema_epsilon = 1e-5             # ema codebook: Laplace smoothing of the code counts
  m.l2_codes = False               # unit-normalise encoder outputs and codes, look up by cosine (ViT-VQGAN)
  m.restart_dead_after = 0         # replace a code unused this many steps by a batch encoder output; 0 = never
  m.pixel_loss = "mse"             # mse (eq. 3) | l1 (the VQGAN authors' code)
  m.perceptual_weight = 0.0        # LPIPS-style loss on the data.name classifier's features (vqgan_lib); 0 = off
  m.variant = "vqvae"              # vqvae | vqgan (adds the discriminator keys below)
  m.disc_weight = 0.8              # vqgan: factor on the adaptive adversarial weight (authors' ImageNet config)
  m.disc_start = 0                 # vqgan: first step with the adversarial loss and discriminator updates
  m.disc_loss = "hinge"            # vqgan: hinge | vanilla (discriminator loss)
  m.disc_layers = 3                # vqgan: stride-2 convolutions of the PatchGAN discriminator
  m.disc_width = 64                # vqgan: channels of its first layer (doubling per layer, at most 8x)
  m.disc_norm = "batch"            # vqgan: batch (authors' code; global-batch statistics) | none

  c.optimizer = optim.optimizer_config(learning_rate=2e-4)
  c.sample.num = 64                # 32 input/reconstruction pairs
  c.sample.split = "test"          # split whose first images are reconstructed
  c.sample.use_ema = False         # no parameter EMA in this family
  c.eval.metrics = ("eval_step", "rfid")  # reconstruction MSE / PSNR / SSIM, code usage; reconstruction FID
  c.eval.reference_split = "test"
  return c


def build_model(config: ConfigDict):
  m = config.model
  return VQVAE(config.data.channels, m.num_codes, m.code_dim, m.hidden, m.residual_hidden, m.num_residual_blocks,
               m.num_downsamples, ema=m.codebook_update == "ema", l2_codes=m.l2_codes,
               dtype=optim.compute_dtype(config.dtype))


def check_config(config: ConfigDict):
  m = config.model
  if m.num_codes < 2:
    raise UserError(f"model.num_codes={m.num_codes}: a codebook needs at least 2 codes; set --config.model.num_codes")
  if m.codebook_update not in CODEBOOK_UPDATES:
    raise UserError(f"unknown model.codebook_update {m.codebook_update!r}; use one of {CODEBOOK_UPDATES}")
  factor = 2 ** m.num_downsamples
  if config.data.image_size % factor:
    raise UserError(f"data.image_size {config.data.image_size} is not divisible by 2^model.num_downsamples = "
                    f"{factor}; change one of them")
  if m.variant not in VARIANTS:
    raise UserError(f"unknown model.variant {m.variant!r}; use one of {VARIANTS}")
  if m.pixel_loss not in PIXEL_LOSSES:
    raise UserError(f"unknown model.pixel_loss {m.pixel_loss!r}; use one of {PIXEL_LOSSES}")
  if m.perceptual_weight < 0:
    raise UserError(f"model.perceptual_weight={m.perceptual_weight} must be >= 0 (0 turns it off)")
  vqgan_lib.check_vqgan_config(config, default_config(), patch_grid_size(config.data.image_size, m.disc_layers))


def ema_codebook_update(codebook: dict, z_NxD, idx_N, decay: float, epsilon: float):
  """One EMA step of the codebook statistics (Appendix A), with Laplace smoothing of the counts so codes that
  receive nothing do not divide by zero. Counts and sums are summed over the data axis."""
  num_codes = codebook["embedding"].shape[0]
  one_hot_NxK = jax.nn.one_hot(idx_N, num_codes, dtype=jnp.float32)
  counts_K = jax.lax.psum(jnp.sum(one_hot_NxK, axis=0), DATA_AXIS)
  sums_KxD = jax.lax.psum(one_hot_NxK.T @ z_NxD, DATA_AXIS)
  cluster_size = decay * codebook["cluster_size"] + (1 - decay) * counts_K
  embed_sum = decay * codebook["embed_sum"] + (1 - decay) * sums_KxD
  n = jnp.sum(cluster_size)
  smoothed = (cluster_size + epsilon) / (n + num_codes * epsilon) * n
  return {"embedding": embed_sum / smoothed[:, None], "cluster_size": cluster_size, "embed_sum": embed_sum}


def code_usage_stats(counts_K):
  """Perplexity exp(H(usage)) (K when all codes are used equally, 1 when one is) and the share of unused codes."""
  counts_K = jnp.asarray(counts_K, jnp.float32)
  p = counts_K / jnp.maximum(jnp.sum(counts_K), 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return {"perplexity": jnp.exp(entropy), "dead_code_share": jnp.mean((counts_K == 0).astype(jnp.float32))}


def make_family(config: ConfigDict) -> Family:
  check_config(config)
  check_sample_label(config, 0)
  m = config.model
  ema = m.codebook_update == "ema"
  vqgan = m.variant == "vqgan"
  restart = m.restart_dead_after > 0
  model = build_model(config)
  tx, schedule = optim.make_optimizer(config.optimizer)
  adversary = vqgan_lib.Adversary(config, tx)
  last_name, last_layer = last_decoder_layer(config.data.channels, m.num_downsamples, model.dtype)
  perceptual = {}  # the classifier, loaded when the train step is first traced

  def variables(state, params=None):
    v = {"params": state["params"] if params is None else params}
    if ema:
      v["codebook"] = state["codebook"]
    return v

  def init(rng, example_batch):
    x = example_batch["image"]
    v = model.init(rng, x)
    state = {"step": jnp.zeros((), jnp.int32), **optim.init_train_state(v["params"], tx, ema=False),
             "codebook": v.get("codebook", {})}
    if restart:
      state["code_age"] = jnp.zeros((m.num_codes,), jnp.int32)
    if vqgan:
      state["discriminator"] = adversary.init(jax.random.fold_in(rng, 1), x)
    return state

  def reconstruction_loss(recon, x):
    """Mean pixel loss plus the weighted perceptual distance: VQGAN's L_rec (and the VQ-VAE's)."""
    return vqgan_lib.reconstruction_loss(recon, x, m.pixel_loss, m.perceptual_weight, perceptual.get("net"))

  def losses(state, params, x):
    (recon, z, q, idx), inter = model.apply(variables(state, params), x, mutable=["intermediates"])
    mse = jnp.mean((recon - x) ** 2)
    rec = reconstruction_loss(recon, x)
    commitment = jnp.mean((z - jax.lax.stop_gradient(q)) ** 2)
    codebook_loss = 0.0 if ema else jnp.mean((jax.lax.stop_gradient(z) - q) ** 2)
    loss = rec + codebook_loss + m.beta * commitment
    aux = {"recon": recon, "z": z, "idx": idx, "mse": mse, "commitment": commitment}
    if m.pixel_loss != "mse" or m.perceptual_weight > 0:
      aux["rec_loss"] = rec
    if vqgan:
      # Adaptive weight: gradients of L_rec and L_GAN w.r.t. the decoder's last kernel, its input held fixed.
      adv, adv_aux = adversary.generator_term(
          state["discriminator"], state["step"], recon, lambda r: reconstruction_loss(r, x), last_layer,
          params["decoder"][last_name], inter["intermediates"]["decoder"]["last_layer_input"][0])
      loss = loss + adv
      aux.update(adv_aux)
    return loss, aux

  def restart_codes(new_state, aux, counts, rng):
    """Dead-code restart on the updated codebook (EMA statistics reset as if the code had seen itself once)."""
    z_NxD = jax.lax.stop_gradient(aux["z"]).reshape(-1, m.code_dim)
    key = jax.random.fold_in(rng, 0x7E57A27)
    if ema:
      book = new_state["codebook"]["quantizer"]
      emb, age, dead = vqgan_lib.restart_dead_codes(book["embedding"], new_state["code_age"], counts, z_NxD, key,
                                                    m.restart_dead_after)
      new_state["codebook"] = {"quantizer": {"embedding": emb,
                                             "embed_sum": jnp.where(dead[:, None], emb, book["embed_sum"]),
                                             "cluster_size": jnp.where(dead, 1.0, book["cluster_size"])}}
    else:
      params = new_state["params"]
      emb, age, dead = vqgan_lib.restart_dead_codes(params["quantizer"]["embedding"], new_state["code_age"], counts,
                                                    z_NxD, key, m.restart_dead_after)
      new_state["params"] = {**params, "quantizer": {**params["quantizer"], "embedding": emb}}
    new_state["code_age"] = age
    return jnp.sum(dead)

  def train_step(state, batch, rng):
    x = batch["image"]
    if m.perceptual_weight > 0 and "net" not in perceptual:
      perceptual["net"] = vqgan_lib.load_perceptual_net(config)
    (loss, aux), grads = jax.value_and_grad(lambda p: losses(state, p, x), has_aux=True)(state["params"])
    new_state, _ = optim.apply_gradients(state, grads, tx, state["step"])
    new_state["step"] = state["step"] + 1
    if ema:
      new_state["codebook"] = {"quantizer": ema_codebook_update(
          state["codebook"]["quantizer"], aux["z"].reshape(-1, m.code_dim), aux["idx"].reshape(-1), m.ema_decay,
          m.ema_epsilon)}
    counts = jax.lax.psum(jnp.bincount(aux["idx"].reshape(-1), length=m.num_codes), DATA_AXIS)
    metrics = {"loss": loss, "mse": aux["mse"], "commitment": aux["commitment"],
               "psnr": jnp.mean(psnr(aux["recon"], x)), "learning_rate": schedule(state["step"])}
    metrics.update({k: aux[k] for k in ("rec_loss", "g_adv", "adaptive_weight", "rec_grad_norm", "gan_grad_norm")
                    if k in aux})
    if vqgan:
      new_state["discriminator"], d_metrics = adversary.update(state["discriminator"], state["step"], x,
                                                               jax.lax.stop_gradient(aux["recon"]))
      metrics.update(d_metrics)
    metrics = jax.lax.pmean(metrics, DATA_AXIS)
    if restart:
      metrics["restarted_codes"] = restart_codes(new_state, aux, counts, rng).astype(jnp.float32)
    metrics.update(code_usage_stats(counts))  # from global counts: already the same on every device
    return new_state, metrics

  def reconstruct(state, x):
    recon, _, _, idx = model.apply(variables(state), x)
    return jnp.clip(recon, -1.0, 1.0), idx

  def eval_step(state, batch, rng):
    """Per-example MSE, PSNR and SSIM of clipped reconstructions (masked global means), and code usage."""
    del rng
    x = batch["image"]
    recon, idx = reconstruct(state, x)
    per_example = {"mse": jnp.mean((recon - x) ** 2, axis=(1, 2, 3)), "psnr": psnr(recon, x)}
    if min(x.shape[1:3]) >= 11:  # SSIM's 11x11 window must fit
      per_example["ssim"] = ssim(recon, x)
    metrics = masked_mean(per_example, batch, x.shape[0])
    mask = batch.get("mask", jnp.ones(x.shape[0]))
    weights = jnp.broadcast_to(mask[:, None, None], idx.shape).reshape(-1)
    counts = jax.lax.psum(jnp.zeros(m.num_codes).at[idx.reshape(-1)].add(weights), DATA_AXIS)
    metrics.update(code_usage_stats(counts))
    return metrics

  def encode(state, batch, rng):
    del rng
    _, idx = model.apply(variables(state), batch["image"], method=lambda mdl, x: mdl.quantize(mdl.encode(x)))
    return {"codes": idx.astype(jnp.int32)}

  def decode(state, codes_Bxhxw):
    """Code grids -> images, clipped to [-1, 1] like the reconstructions."""
    return jnp.clip(model.apply(variables(state), codes_Bxhxw, method=VQVAE.decode_codes), -1.0, 1.0)

  def sample(state, rng, ids_B):
    del rng
    return {"images": vqgan_lib.inputs_and_reconstructions(config, ids_B, lambda x: reconstruct(state, x)[0],
                                                           -(-config.sample.num // 2))}

  return Family(init=init, train_step=train_step, sample=sample, eval_step=eval_step, encode=encode,
                decode=decode, samples_are_generated=False)
