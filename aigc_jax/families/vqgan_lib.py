"""The pieces VQGAN (Esser, Rombach & Ommer, "Taming Transformers", CVPR 2021) adds to the VQ-VAE family, and
the codebook options it shares with it (families/vqvae.py wires them into one train step).

- Discriminator losses (hinge, as the authors' code defaults to, or the vanilla softplus form) and the
  generator's adversarial loss -E[D(x_hat)].
- The adaptive weight lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + delta) (the paper's eq. 7), G_L
  the decoder's last layer, clipped to [0, 1e4] as the authors' code does. Gradients are averaged over the
  data axis first, so the weight is that of the global batch on any device count.
- An LPIPS-style perceptual distance on a network the project trains itself: the dataset classifier of
  aigc_jax/evaluation/classifier.py (trained on data.name's train split once, then cached). Its three conv
  activations are unit-normalised over channels, squared differences summed over channels, averaged over
  positions and summed over layers (LPIPS with unit channel weights; no VGG/LPIPS weights are read).
- Dead-code restarts: a code unused for `restart_dead_after` steps is replaced by an encoder output of the
  current global batch (all-gathered, picked by a permutation from the step key), so the result does not
  depend on how the batch is split.
- `Adversary`: the whole PatchGAN game (discriminator state, the adaptive-weighted generator term, the
  discriminator update, disc_start), and `reconstruction_loss` (pixel + perceptual), which the VQGAN variant of
  the vqvae family and the KL autoencoder (families/autoencoder_kl.py, Rombach et al. 2022, whose loss is VQGAN's
  with a KL bottleneck) share, as they share the sample figure of inputs next to their reconstructions.
"""
import functools
import json
import os

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from aigc_jax import optim
from aigc_jax.errors import UserError
from aigc_jax.models.patch_discriminator import NORMS, PatchDiscriminator
from aigc_jax.models.vqvae import l2_normalize
from aigc_jax.parallel import DATA_AXIS

DISC_LOSSES = ("hinge", "vanilla")
ADAPTIVE_DELTA = 1e-6  # the paper's delta (the authors' code adds 1e-4)
ADAPTIVE_MAX = 1e4     # the authors' code clamps lambda to [0, 1e4]
PERCEPTUAL_LAYERS = ("conv0", "conv1", "conv2")
PIXEL_LOSSES = ("mse", "l1")
ADVERSARY_KEYS = ("disc_weight", "disc_start", "disc_loss", "disc_layers", "disc_width", "disc_norm")


def discriminator_loss(kind: str, real_logits, fake_logits):
  """Hinge: E[relu(1 - D(x))] + E[relu(1 + D(x_hat))]; vanilla: E[softplus(-D(x))] + E[softplus(D(x_hat))]
  (half of each, as the authors' code, so both sit near the same scale)."""
  if kind == "hinge":
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits)))
  return 0.5 * (jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits)))


def generator_adversarial_loss(fake_logits):
  return -jnp.mean(fake_logits)


def adaptive_weight(rec_loss_of_kernel, gan_loss_of_kernel, kernel, axis_name=DATA_AXIS):
  """lambda = ||grad L_rec|| / (||grad L_GAN|| + delta), clipped to [0, ADAPTIVE_MAX], no gradient through it.

  `*_loss_of_kernel(kernel)`: the loss as a function of the last layer's kernel alone (its input held fixed),
  so only that layer and what lies after it (perceptual net, discriminator) are differentiated. With
  `axis_name`, each gradient is averaged over that axis before its norm (the global batch's gradient)."""
  kernel = jax.lax.stop_gradient(kernel)
  grads = [jax.grad(f)(kernel) for f in (rec_loss_of_kernel, gan_loss_of_kernel)]
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  rec_norm, gan_norm = (jnp.sqrt(jnp.sum(g.astype(jnp.float32) ** 2)) for g in grads)
  weight = jnp.clip(rec_norm / (gan_norm + ADAPTIVE_DELTA), 0.0, ADAPTIVE_MAX)
  return jax.lax.stop_gradient(weight), rec_norm, gan_norm


def perceptual_cache_dir(config: ConfigDict) -> str:
  """Where the perceptual classifier is cached: eval.cache_dir when set (share it with the metrics), else the
  user cache (a family does not know its --workdir, so <workdir>/eval/cache is not available here)."""
  if config.eval.cache_dir:
    return config.eval.cache_dir
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "aigc_jax", "perceptual")


def load_perceptual_net(config: ConfigDict, log=print):
  """(classifier module, its variables as numpy): trained on data.name's train split on first use, cached.

  Called while the train step is traced (so sampling, eval and encode never train it); the training runs
  eagerly, outside the trace, and the weights enter the step as constants."""
  from aigc_jax.evaluation import classifier  # function level: only a run with a perceptual loss needs it
  with jax.ensure_compile_time_eval():
    model, variables, info = classifier.load_or_train(config, perceptual_cache_dir(config), log)
  log(f"perceptual loss: {config.data.name} classifier from {info['cache_path']} "
      f"(test accuracy {info.get('test_accuracy', float('nan')):.3f})")
  return model, jax.device_get(variables)


def feature_maps(model, variables, x_BxHxWxC):
  """The classifier's conv activations (post-ReLU, as its next layer sees them)."""
  _, captured = model.apply(variables, x_BxHxWxC, capture_intermediates=lambda m, _: m.name in PERCEPTUAL_LAYERS,
                            mutable=["intermediates"])
  return [jax.nn.relu(captured["intermediates"][name]["__call__"][0]) for name in PERCEPTUAL_LAYERS]


def perceptual_distance(model, variables, x_BxHxWxC, y_BxHxWxC):
  """Per-example LPIPS-style distance [B]: unit-normalised channels, squared difference summed over
  channels, mean over positions, sum over layers."""
  total_B = 0.0
  for fx, fy in zip(feature_maps(model, variables, x_BxHxWxC), feature_maps(model, variables, y_BxHxWxC)):
    diff = (l2_normalize(fx, eps=1e-10) - l2_normalize(fy, eps=1e-10)) ** 2
    total_B = total_B + jnp.mean(jnp.sum(diff, axis=-1), axis=(1, 2))
  return total_B


def restart_dead_codes(embedding_KxD, age_K, counts_K, z_local_NxD, key, restart_after: int):
  """Ages codes (steps since last use, from this step's global `counts_K`) and replaces those unused for
  `restart_after` steps by encoder outputs of the global batch. Returns (embedding, age, restarted mask).

  The global batch is all-gathered in global example order and the i-th dead code (by index) takes row
  perm[i] of a permutation drawn from `key`, so 1 and 8 devices restart the same codes with the same rows."""
  age_K = jnp.where(counts_K > 0, 0, age_K + 1)
  dead_K = age_K >= restart_after
  z_all_MxD = jax.lax.all_gather(z_local_NxD, DATA_AXIS, tiled=True)
  perm_M = jax.random.permutation(key, z_all_MxD.shape[0])
  rank_K = (jnp.cumsum(dead_K) - 1) % z_all_MxD.shape[0]
  fresh_KxD = z_all_MxD[perm_M[rank_K]].astype(embedding_KxD.dtype)
  embedding_KxD = jnp.where(dead_K[:, None], fresh_KxD, embedding_KxD)
  return embedding_KxD, jnp.where(dead_K, 0, age_K), dead_K


def check_vqgan_config(config: ConfigDict, defaults: ConfigDict, grid_size: int):
  """One-line errors for VQGAN keys: bad values, and VQGAN-only keys set for the plain VQ-VAE."""
  check_adversary_config(config, defaults, grid_size, config.model.variant == "vqgan",
                         on="model.variant=vqgan", off="model.variant=vqvae")


def check_adversary_config(config: ConfigDict, defaults: ConfigDict, grid_size: int, enabled: bool, on: str,
                           off: str):
  """One-line errors for the discriminator keys (ADVERSARY_KEYS): bad values when `enabled`, and any of them
  changed from `defaults` when not (it would be ignored). `on` / `off`: the setting that turns it on / off."""
  m = config.model
  if not enabled:
    changed = [k for k in ADVERSARY_KEYS if m[k] != defaults.model[k]]
    if changed:
      raise UserError(f"model.{changed[0]} only applies with the discriminator ({on}), which this run has not; "
                      f"set --config.{on} or leave model.{changed[0]} at its default")
    return
  if m.disc_norm not in NORMS:
    raise UserError(f"unknown model.disc_norm {m.disc_norm!r}; use one of {NORMS}")
  if m.disc_loss not in DISC_LOSSES:
    raise UserError(f"unknown model.disc_loss {m.disc_loss!r}; use one of {DISC_LOSSES}")
  if m.disc_weight <= 0:
    raise UserError(f"model.disc_weight={m.disc_weight} must be > 0 with the discriminator (it scales the adaptive "
                    f"adversarial weight); use {off} for no adversarial loss")
  if m.disc_start >= config.num_train_steps:
    raise UserError(f"model.disc_start={m.disc_start} is not before num_train_steps={config.num_train_steps}, so "
                    "the discriminator would never train; lower --config.model.disc_start")
  if grid_size < 1:
    raise UserError(f"model.disc_layers={m.disc_layers} halves data.image_size={config.data.image_size} too often "
                    "for a 4x4 patch discriminator (no logits left); lower --config.model.disc_layers")


def reconstruction_loss(recon, x, pixel_loss: str, perceptual_weight: float, perceptual_net=None):
  """VQGAN's L_rec: the mean pixel loss (mse | l1) plus perceptual_weight x the mean perceptual distance
  (`perceptual_net` = load_perceptual_net's (model, variables))."""
  pixel = jnp.abs(recon - x) if pixel_loss == "l1" else (recon - x) ** 2
  rec = jnp.mean(pixel)
  if perceptual_weight > 0:
    p_model, p_vars = perceptual_net
    rec = rec + perceptual_weight * jnp.mean(perceptual_distance(p_model, p_vars, x, recon))
  return rec


class Adversary:
  """The PatchGAN half of VQGAN's objective, from the config's model.disc_* keys (ADVERSARY_KEYS).

  init(rng, x)         the discriminator's train state {params, opt_state, batch_stats}
  generator_term(...)  on(step) * disc_weight * lambda * L_GAN(recon) for the autoencoder's loss, lambda the
                       adaptive weight (eq. 7) on the decoder's last layer; on = step >= disc_start
  update(...)          one discriminator step on real images and (stopped) reconstructions, kept from disc_start
                       on; before it the params, optimiser state and batch stats stay at their initial values
  Batch norm uses the statistics of the global batch (axis DATA_AXIS), so the step is the same on any device
  count."""

  def __init__(self, config: ConfigDict, tx):
    m = config.model
    dtype = optim.compute_dtype(config.dtype)
    self.tx, self.weight, self.start, self.loss = tx, m.disc_weight, m.disc_start, m.disc_loss
    self.net = PatchDiscriminator(m.disc_width, m.disc_layers, m.disc_norm, axis_name=DATA_AXIS, dtype=dtype)
    self._init_net = PatchDiscriminator(m.disc_width, m.disc_layers, m.disc_norm, axis_name=None, dtype=dtype)

  def init(self, rng, x_BxHxWxC):
    d_vars = self._init_net.init(rng, x_BxHxWxC, train=False)
    return optim.init_train_state(d_vars["params"], self.tx, ema=False, batch_stats=d_vars.get("batch_stats", {}))

  def logits(self, d_state, params, x_BxHxWxC):
    """Patch logits with batch statistics (global over the data axis), and the updated running stats."""
    logits, updates = self.net.apply({"params": params, "batch_stats": d_state["batch_stats"]}, x_BxHxWxC,
                                     train=True, mutable=["batch_stats"])
    return logits, updates.get("batch_stats", {})

  def generator_term(self, d_state, step, recon, rec_loss_of, last_layer, last_params, h):
    """(weighted adversarial loss, metrics). `rec_loss_of(recon)`: the reconstruction loss lambda balances;
    `last_layer` applied to `h` with `last_params` recomputes `recon`, so the adaptive weight differentiates
    that layer's kernel alone (its input held fixed)."""
    g_adv = generator_adversarial_loss(self.logits(d_state, d_state["params"], recon)[0])
    h = jax.lax.stop_gradient(h)
    last_params = jax.lax.stop_gradient(last_params)
    recon_of = lambda kernel: last_layer.apply({"params": {**last_params, "kernel": kernel}}, h).astype(jnp.float32)
    weight, rec_norm, gan_norm = adaptive_weight(
        lambda k: rec_loss_of(recon_of(k)),
        lambda k: generator_adversarial_loss(self.logits(d_state, d_state["params"], recon_of(k))[0]),
        last_params["kernel"])
    adv_weight = (step >= self.start).astype(jnp.float32) * self.weight * weight
    return adv_weight * g_adv, {"g_adv": g_adv, "adaptive_weight": adv_weight, "rec_grad_norm": rec_norm,
                                "gan_grad_norm": gan_norm}

  def update(self, d_state, step, x_BxHxWxC, fake_BxHxWxC):
    """(new discriminator state, metrics): one update on real images and this step's reconstructions."""

    def d_loss_fn(params):
      real_logits, stats = self.logits(d_state, params, x_BxHxWxC)
      fake_logits, stats = self.logits({**d_state, "batch_stats": stats}, params, fake_BxHxWxC)
      return discriminator_loss(self.loss, real_logits, fake_logits), (stats, real_logits, fake_logits)

    (d_loss, (stats, real_logits, fake_logits)), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
        d_state["params"])
    new_d, _ = optim.apply_gradients(d_state, grads, self.tx, step)
    new_d["batch_stats"] = stats
    on = step >= self.start
    new_d = jax.tree.map(lambda new, old: jnp.where(on, new, old), new_d, d_state)
    return new_d, {"d_loss": d_loss, "logits_real": jnp.mean(real_logits), "logits_fake": jnp.mean(fake_logits)}


@functools.lru_cache(maxsize=4)
def _display_images(data_cfg_json: str, num: int):
  """The first `num` images of the display split, in [-1, 1] (loaded once, on first sample)."""
  from aigc_jax import data as data_lib  # function level: only sampling reads data
  data_cfg = ConfigDict(json.loads(data_cfg_json))
  images = data_lib.load_image_set(data_cfg, data_cfg.display_split).images[:num]
  return data_lib.to_model_range(images)


def inputs_and_reconstructions(config: ConfigDict, ids_B, reconstruct, num_pairs: int):
  """The sample figure of an autoencoder: even ids the first `num_pairs` images of sample.split, odd ids their
  `reconstruct(x_BxHxWxC)`, so a grid shows input/reconstruction pairs side by side."""
  data_cfg = config.data.to_dict()
  data_cfg["display_split"] = config.sample.split
  shown = jnp.asarray(_display_images(json.dumps(data_cfg, sort_keys=True), num_pairs))
  x = shown[(ids_B // 2) % shown.shape[0]]
  return jnp.where((ids_B % 2 == 1)[:, None, None, None], reconstruct(x), x)
