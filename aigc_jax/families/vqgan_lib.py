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
"""
import os

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from aigc_jax.errors import UserError
from aigc_jax.models.patch_discriminator import NORMS
from aigc_jax.models.vqvae import l2_normalize
from aigc_jax.parallel import DATA_AXIS

DISC_LOSSES = ("hinge", "vanilla")
ADAPTIVE_DELTA = 1e-6  # the paper's delta (the authors' code adds 1e-4)
ADAPTIVE_MAX = 1e4     # the authors' code clamps lambda to [0, 1e4]
PERCEPTUAL_LAYERS = ("conv0", "conv1", "conv2")


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
  m = config.model
  vqgan_keys = ("disc_weight", "disc_start", "disc_loss", "disc_layers", "disc_width", "disc_norm")
  if m.variant == "vqvae":
    changed = [k for k in vqgan_keys if m[k] != defaults.model[k]]
    if changed:
      raise UserError(f"model.{changed[0]} only applies to model.variant='vqgan' (a VQ-VAE has no discriminator); "
                      f"set --config.model.variant=vqgan or leave model.{changed[0]} at its default")
    return
  if m.disc_norm not in NORMS:
    raise UserError(f"unknown model.disc_norm {m.disc_norm!r}; use one of {NORMS}")
  if m.disc_loss not in DISC_LOSSES:
    raise UserError(f"unknown model.disc_loss {m.disc_loss!r}; use one of {DISC_LOSSES}")
  if m.disc_weight <= 0:
    raise UserError(f"model.disc_weight={m.disc_weight} must be > 0 for the vqgan variant (it scales the adaptive "
                    "adversarial weight); use model.variant=vqvae for no adversarial loss")
  if m.disc_start >= config.num_train_steps:
    raise UserError(f"model.disc_start={m.disc_start} is not before num_train_steps={config.num_train_steps}, so "
                    "the discriminator would never train; lower --config.model.disc_start")
  if grid_size < 1:
    raise UserError(f"model.disc_layers={m.disc_layers} halves data.image_size={config.data.image_size} too often "
                    "for a 4x4 patch discriminator (no logits left); lower --config.model.disc_layers")
