"""Generative adversarial networks: Goodfellow et al.'s MLP pair, DCGAN, and the zoo's losses and regularisers.

State: {step, generator, discriminator}, one aigc_jax.optim train state per network ({params, opt_state,
batch_stats}; the generator's also ema_params, used for sampling by default). The discriminator's
"batch_stats" also hold spectral normalisation's power-iteration vectors, so they are checkpointed and resumed
with the run. `model.d_steps` discriminator updates, each on its own real batch, precede every generator update.

What is configurable (gan_lib has the maths):
- `model.loss`: non_saturating | minimax | hinge | wasserstein; `model.gradient_penalty`: none | wgan_gp | r1
  (needs a critic without batch norm); `model.pack` (PacGAN); TTUR through `optimizer.g/d_learning_rate`.
- `model.num_classes` > 0: class-conditional G (conditional batch norm) and D (`model.cond_head`: projection or
  AC-GAN's auxiliary classifier); fake examples draw uniform random classes; `sample.label` picks the class.
- `model.augment`: none | diffaugment | ada (gan_augment_lib): every image D sees, real and fake, in the D steps
  and the G step (and inside a gradient penalty's critic), is augmented with per-example keys; ADA's p and its
  r_t accumulators live in the run state as state["ada"], so they are checkpointed and resume exactly.
"""
import math

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from aigc_jax import configs, optim
from aigc_jax import data as data_lib
from aigc_jax.errors import UserError
from aigc_jax.families import Family, check_sample_label, gan_augment_lib, gan_lib, sample_labels
from aigc_jax.models.dcgan import DCGANDiscriminator, DCGANGenerator, num_resolution_steps
from aigc_jax.models.gan_mlp import BatchNormMLPGenerator, MaxoutDiscriminator, MLPGenerator
from aigc_jax.models.gan_resnet import (POOLS, ResNetDiscriminator, ResNetGenerator, SNGANDiscriminator,
                                        SNGANGenerator, num_up_blocks)
from aigc_jax.parallel import DATA_AXIS, example_keys, keys_for_ids

LOSSES = gan_lib.LOSSES
COND_HEADS = ("projection", "acgan")
# Purposes of the per-example keys sub(j, purpose) that augmentation draws from (real and fake images).
AUGMENT_REAL, AUGMENT_FAKE = 20, 21
# The batch key the family trains on, per medium of the data source.
BATCH_KEYS = {"images": "image", "points": "points"}
# Archs whose generator makes points [B, D] (2-D mixtures); every other arch makes images.
POINT_ARCHS = ("points_mlp",)


def default_config() -> ConfigDict:
  """`configs.base_config()` plus every key this family reads; experiments/gan.py, dcgan.py, ... override it."""
  c = configs.base_config()
  c.family = "gan"
  m = c.model
  m.arch = "dcgan"                 # see ARCHS: dcgan (all-convolutional, batch norm) | mlp (Goodfellow et al.)
                                   # | points_mlp (2-D points: PacGAN's BN generator, maxout D)
  m.z_dim = 100                    # noise dimension
  m.noise = "normal"               # normal | uniform (unit variance, as pylearn2's)
  m.loss = "non_saturating"        # non_saturating (-log D(G(z))) | minimax | hinge | wasserstein
  m.gradient_penalty = "none"      # none | wgan_gp (Gulrajani et al. 2017) | r1 (Mescheder et al. 2018)
  m.gp_weight = 10.0               # wgan_gp: lambda; r1: gamma (the penalty is gamma/2 E||grad D(x)||^2)
  m.pack = 1                       # PacGAN: consecutive examples the discriminator judges together
  m.d_steps = 1                    # discriminator updates, each on its own batch, per generator update
  m.ema_decay = 0.999              # EMA of the generator params, sampled from when sample.use_ema
  m.num_classes = 0                # > 0: class-conditional G and D (archs with conditional support)
  m.cond_head = "projection"       # conditional D: projection (Miyato & Koyama 2018) | acgan (Odena et al. 2017)
  m.acgan_weight = 1.0             # acgan: weight of the auxiliary classification losses
  m.spectral_norm = False          # spectral normalisation of every D layer (Miyato et al. 2018)
  m.g_width = 64                   # convolutional archs: channel width of G (dcgan: ngf) and D (dcgan: ndf)
  m.d_width = 64
  m.d_pool = "sum"                 # resnet: D's global pooling, sum (SNGAN) | mean (WGAN-GP's critic)
  m.g_hidden = (1200, 1200)        # mlp, points_mlp: generator ReLU layers (points_mlp: with batch norm)
  m.d_hidden = (240, 240)          # mlp, points_mlp: discriminator maxout layers
  m.d_pieces = 5                   # mlp, points_mlp: linear pieces per maxout unit
  m.d_input_dropout = 0.0          # mlp: dropout on the discriminator's input
  m.d_hidden_dropout = 0.0         # mlp: dropout on its hidden layers
  m.augment = "none"               # none | diffaugment (Zhao et al. 2020) | ada (Karras et al. 2020), for D's inputs
  m.diffaugment_policy = "color,translation,cutout"  # diffaugment: comma-separated, applied in this order
  m.ada_target = gan_augment_lib.ADA_TARGET  # ada: the r_t = E[sign D(real)] that p steers towards
  m.ada_interval = gan_augment_lib.ADA_INTERVAL  # ada: steps between adjustments of p
  m.ada_speed_images = gan_augment_lib.ADA_SPEED_IMAGES  # ada: real images for p to move by 1
  # data.name=ring | grid (data/sources/gaussian_mixtures.py, with model.arch=points_mlp); 0 = the papers' values
  c.data.num_modes = 0             # ring 8, grid 25 (a square)
  c.data.radius = 0.0              # ring: 1.0
  c.data.spacing = 0.0             # grid: 2.0 between neighbouring centres
  c.data.std = 0.0                 # of every mode: ring 0.01, grid 0.05
  c.optimizer = optim.optimizer_config(learning_rate=2e-4, b1=0.5)  # Radford et al.'s Adam
  c.optimizer.g_learning_rate = 0.0  # per network (TTUR, Heusel et al. 2017); 0 = optimizer.learning_rate
  c.optimizer.d_learning_rate = 0.0
  return c


def _mlp(config, axis_name, dtype):
  m, d = config.model, config.data
  g = MLPGenerator((d.image_size, d.image_size, d.channels), tuple(m.g_hidden), dtype=dtype)
  disc = MaxoutDiscriminator(tuple(m.d_hidden), m.d_pieces, m.d_input_dropout, m.d_hidden_dropout, dtype=dtype)
  return g, disc


def _dcgan(config, axis_name, dtype):
  m, d = config.model, config.data
  try:
    num_resolution_steps(d.image_size)
  except ValueError as e:
    raise UserError(f"{e} (data.image_size); set --config.data.image_size to 8, 16, 32, 64, ...") from None
  g = DCGANGenerator(d.image_size, d.channels, m.g_width, axis_name=axis_name, dtype=dtype)
  disc = DCGANDiscriminator(d.image_size, m.d_width, axis_name=axis_name, dtype=dtype)
  return g, disc


def _conditional_pair(generator_cls, discriminator_cls, **d_kwargs):
  def build(config, axis_name, dtype):
    m, d = config.model, config.data
    try:
      num_up_blocks(d.image_size, 4)
    except ValueError:
      raise UserError(f"model.arch={m.arch!r} needs data.image_size = 4 * 2^k >= 8, got {d.image_size}; set "
                      "--config.data.image_size to 8, 16, 32, 64, ...") from None
    head = m.cond_head if m.num_classes else "plain"
    g = generator_cls(d.image_size, d.channels, m.g_width, m.num_classes, axis_name=axis_name, dtype=dtype)
    disc = discriminator_cls(m.d_width, m.num_classes, head, m.spectral_norm, dtype=dtype,
                             **{k: m[v] for k, v in d_kwargs.items()})
    return g, disc
  return build


def _points_mlp(config, axis_name, dtype):
  """PacGAN's 2-D pair (Lin et al. 2018, reference code): BN-ReLU MLP generator with a linear output, maxout
  discriminator without dropout, weights ~ N(0, 0.02). The output size is the data's point dimension."""
  m = config.model
  point_dim = data_lib.example_batch(config, 1)["points"].shape[-1]
  g = BatchNormMLPGenerator(point_dim, tuple(m.g_hidden), init_std=0.02, axis_name=axis_name, dtype=dtype)
  disc = MaxoutDiscriminator(tuple(m.d_hidden), m.d_pieces, 0.0, 0.0, dtype=dtype, init_std=0.02)
  return g, disc


# arch -> (build(config, axis_name, dtype) -> (G, D), model keys it reads, D has batch norm, conditional models
# (G takes labels, D takes labels and returns (logits, aux logits)), spectral norm option).
ARCHS = {
    "mlp": (_mlp, ("g_hidden", "d_hidden", "d_pieces", "d_input_dropout", "d_hidden_dropout"), False, False, False),
    "dcgan": (_dcgan, ("g_width", "d_width"), True, False, False),
    # Gulrajani et al. 2017 / Miyato et al. 2018 CIFAR-10 ResNets, and SNGAN's standard CNN (Table 3).
    "resnet": (_conditional_pair(ResNetGenerator, ResNetDiscriminator, pool="d_pool"),
               ("g_width", "d_width", "d_pool"), False, True, True),
    "sngan_cnn": (_conditional_pair(SNGANGenerator, SNGANDiscriminator), ("g_width", "d_width"), False, True, True),
    "points_mlp": (_points_mlp, ("g_hidden", "d_hidden", "d_pieces"), False, False, False),
}
_ARCH_KEYS = sorted({k for spec in ARCHS.values() for k in spec[1]})


def build_models(config: ConfigDict, axis_name=DATA_AXIS):
  m = config.model
  if m.arch not in ARCHS:
    raise UserError(f"unknown model.arch {m.arch!r} for the gan family; use one of {sorted(ARCHS)}")
  return ARCHS[m.arch][0](config, axis_name, optim.compute_dtype(config.dtype))


def _changed(config: ConfigDict, keys):
  defaults = default_config().model
  return [k for k in keys if config.model[k] != defaults[k]]


def check_config(config: ConfigDict):
  """One-line errors for bad values and for keys the chosen setting would silently ignore."""
  m = config.model
  if m.arch not in ARCHS:
    raise UserError(f"unknown model.arch {m.arch!r} for the gan family; use one of {sorted(ARCHS)}")
  _, arch_keys, d_batch_norm, conditional_arch, sn_option = ARCHS[m.arch]
  ignored = _changed(config, [k for k in _ARCH_KEYS if k not in arch_keys])
  if ignored:
    raise UserError(f"model.{ignored[0]} is not read by model.arch={m.arch!r}; leave it at its default or pick "
                    "an arch that has it")
  if m.loss not in LOSSES:
    raise UserError(f"unknown model.loss {m.loss!r}; use one of {LOSSES}")
  if m.gradient_penalty not in gan_lib.PENALTIES:
    raise UserError(f"unknown model.gradient_penalty {m.gradient_penalty!r}; use one of {gan_lib.PENALTIES}")
  if m.gradient_penalty == "none" and _changed(config, ["gp_weight"]):
    raise UserError("model.gp_weight needs a gradient penalty; set --config.model.gradient_penalty=wgan_gp or r1")
  if m.gradient_penalty != "none":
    if d_batch_norm:
      raise UserError(f"model.gradient_penalty={m.gradient_penalty} needs a critic without batch norm (it "
                      f"penalises each example's input gradient), but model.arch={m.arch!r} has batch norm in D; "
                      "use an arch without it (e.g. resnet) or model.gradient_penalty=none")
    if m.gp_weight <= 0:
      raise UserError(f"model.gp_weight={m.gp_weight} must be > 0; use model.gradient_penalty=none for none")
  if m.d_pool not in POOLS:
    raise UserError(f"unknown model.d_pool {m.d_pool!r}; use one of {POOLS}")
  if m.d_steps < 1:
    raise UserError(f"model.d_steps must be >= 1, got {m.d_steps}")
  if m.noise not in ("normal", "uniform"):
    raise UserError(f"model.noise must be 'normal' or 'uniform', got {m.noise!r}")
  if m.spectral_norm and not sn_option:
    raise UserError(f"model.spectral_norm is not available for model.arch={m.arch!r}; use an arch with it "
                    f"({sorted(a for a, spec in ARCHS.items() if spec[4])})")
  if m.num_classes < 0:
    raise UserError(f"model.num_classes={m.num_classes} must be >= 0 (0 = unconditional)")
  if m.num_classes == 0 and _changed(config, ["cond_head", "acgan_weight"]):
    key = _changed(config, ["cond_head", "acgan_weight"])[0]
    raise UserError(f"model.{key} only applies to a class-conditional GAN; set --config.model.num_classes or "
                    f"leave model.{key} at its default")
  if m.num_classes:
    if not conditional_arch:
      raise UserError(f"model.num_classes={m.num_classes}: model.arch={m.arch!r} is unconditional; use one of "
                      f"{sorted(a for a, spec in ARCHS.items() if spec[3])}")
    if m.cond_head not in COND_HEADS:
      raise UserError(f"unknown model.cond_head {m.cond_head!r}; use one of {COND_HEADS}")
    if m.cond_head != "acgan" and _changed(config, ["acgan_weight"]):
      raise UserError("model.acgan_weight only applies to model.cond_head=acgan")
    if m.pack > 1:
      raise UserError("model.pack > 1 (PacGAN) packs unlabelled examples; use it with model.num_classes=0")
  if config.batch_size % m.pack:
    raise UserError(f"batch_size={config.batch_size} is not divisible by model.pack={m.pack}; change one of them")
  gan_augment_lib.check_config(config, lambda keys: _changed(config, keys))
  check_sample_label(config, m.num_classes)


def noise(key, z_dim, kind):
  if kind == "normal":
    return jax.random.normal(key, (z_dim,))
  # Goodfellow et al.'s pylearn2 setup draws uniform noise with unit variance.
  return jax.random.uniform(key, (z_dim,), minval=-jnp.sqrt(3.0), maxval=jnp.sqrt(3.0))


def make_family(config: ConfigDict) -> Family:
  m = config.model
  check_config(config)
  medium = data_lib.medium(config)
  if medium not in BATCH_KEYS:
    raise UserError(f"the gan family trains on {sorted(BATCH_KEYS)}, but data.name={config.data.name!r} is "
                    f"{medium}; pick another data.name or family")
  if (medium == "points") != (m.arch in POINT_ARCHS):
    fits = sorted(POINT_ARCHS) if medium == "points" else sorted(set(ARCHS) - set(POINT_ARCHS))
    raise UserError(f"model.arch={m.arch!r} does not make {medium} (data.name={config.data.name!r}); use "
                    f"model.arch {' or '.join(fits)}")
  if medium != "images" and m.augment != "none":
    raise UserError(f"model.augment={m.augment!r} transforms images, but data.name={config.data.name!r} is "
                    f"{medium}; leave model.augment at 'none'")
  batch_key = BATCH_KEYS[medium]
  conditional_arch = ARCHS[m.arch][3]
  num_classes = m.num_classes
  generator, discriminator = build_models(config)
  init_generator, init_discriminator = build_models(config, axis_name=None)  # no collectives outside a mesh
  opt = config.optimizer
  g_tx, g_schedule = optim.make_optimizer(opt, opt.get("g_learning_rate") or opt.learning_rate)
  d_tx, d_schedule = optim.make_optimizer(opt, opt.get("d_learning_rate") or opt.learning_rate,
                                          updates_per_step=m.d_steps)
  uses_dropout = m.arch == "mlp" and (m.d_input_dropout > 0 or m.d_hidden_dropout > 0)
  grid_columns = math.ceil(math.sqrt(config.sample.num))  # media.images.image_grid's default layout
  augmenter = gan_augment_lib.make_augmenter(config, DATA_AXIS)

  def sample_noise(keys_Bx2):
    return jax.vmap(lambda k: noise(k, m.z_dim, m.noise))(keys_Bx2)

  def random_labels(keys_Bx2):
    return jax.vmap(lambda k: jax.random.randint(k, (), 0, max(num_classes, 1)))(keys_Bx2).astype(jnp.int32)

  def generate(g_module, g_vars, z, labels_B, train=True):
    """Samples from the generator; batch norm uses the batch's statistics (as DCGAN samples)."""
    args = (z, labels_B) if conditional_arch else (z,)
    out, updates = g_module.apply(g_vars, *args, train=train, mutable=["batch_stats"])
    return out, updates.get("batch_stats", {})

  def discriminate(d_vars, x, labels_B, dropout_keys_Bx2):
    """(logits, auxiliary class logits or None, new batch stats). Dropout masks come from per-example keys, so
    they do not depend on how the batch is split across devices."""
    x = gan_lib.pack(x, m.pack)
    if uses_dropout:
      def one(x1, k):
        return discriminator.apply(d_vars, x1[None], train=True, rngs={"dropout": k})[0]
      return jax.vmap(one)(x, dropout_keys_Bx2[::m.pack]), None, {}
    if conditional_arch:
      (logits, aux), updates = discriminator.apply(d_vars, x, labels_B, train=True, mutable=["batch_stats"])
    else:
      (logits, updates), aux = discriminator.apply(d_vars, x, train=True, mutable=["batch_stats"]), None
    return logits, aux, updates.get("batch_stats", {})

  def init(rng, example_batch):
    x = example_batch[batch_key]  # one batch (the trainer stacks d_steps of them only for train_step)
    g_key, d_key = jax.random.split(rng)
    z = sample_noise(jax.random.split(g_key, x.shape[0]))
    labels_B = jnp.zeros((x.shape[0],), jnp.int32)
    g_vars = init_generator.init(g_key, *((z, labels_B) if conditional_arch else (z,)), train=False)
    x_packed = gan_lib.pack(jnp.repeat(x, m.pack, axis=0), m.pack)  # D's input shape: pack examples wide
    d_args = (x_packed, labels_B) if conditional_arch else (x_packed,)
    d_vars = init_discriminator.init({"params": d_key, "dropout": d_key}, *d_args, train=False)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "generator": optim.init_train_state(g_vars["params"], g_tx, ema=True,
                                            batch_stats=g_vars.get("batch_stats", {})),
        "discriminator": optim.init_train_state(d_vars["params"], d_tx, ema=False,
                                                batch_stats=d_vars.get("batch_stats", {})),
    }
    if augmenter.init_state() is not None:
      state["ada"] = augmenter.init_state()
    return state

  def adversarial_d_loss(real_logits, fake_logits, real_aux, fake_aux, real_labels, fake_labels):
    loss = gan_lib.discriminator_loss(m.loss, real_logits, fake_logits)
    if num_classes and m.cond_head == "acgan":
      loss += m.acgan_weight * (gan_lib.classification_loss(real_aux, real_labels)
                                + gan_lib.classification_loss(fake_aux, fake_labels))
    return loss

  def train_step(state, batch, rng):
    real = batch[batch_key]
    real_labels_all = batch["label"] if num_classes else None
    if m.d_steps == 1:  # one batch per step arrives unstacked; d_steps batches arrive as [B, d_steps, ...]
      real = real[:, None]
      real_labels_all = real_labels_all[:, None] if num_classes else None
    local_batch = real.shape[0]
    if local_batch % m.pack:
      raise UserError(f"model.pack={m.pack} does not divide the per-device batch of {local_batch}; set "
                      "--config.num_devices or batch_size so that it does")
    keys = example_keys(rng, local_batch)  # [B, 2]
    sub = lambda j, purpose: jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, j), purpose))(keys)
    g_state, d_state = state["generator"], state["discriminator"]
    # Every fake of this step comes from the generator as it was at the start of the step.
    g_vars = {"params": g_state["params"], "batch_stats": g_state["batch_stats"]}
    step = state["step"]
    ada = state.get("ada")
    augment = lambda x, j, purpose: augmenter.apply(x, sub(j, purpose), ada)

    d_metrics = {}
    for j in range(config.model.d_steps):
      fake_labels = random_labels(sub(j, 3)) if num_classes else None
      real_labels = real_labels_all[:, j] if num_classes else None
      fake, _ = generate(generator, g_vars, sample_noise(sub(j, 0)), fake_labels)
      fake = jax.lax.stop_gradient(fake)
      x_real = real[:, j]
      d_stats = d_state["batch_stats"]
      real_in, fake_in = augmenter.apply_both(x_real, sub(j, AUGMENT_REAL), fake, sub(j, AUGMENT_FAKE), ada)

      def d_loss_fn(params):
        real_logits, real_aux, stats = discriminate({"params": params, "batch_stats": d_stats}, real_in,
                                                    real_labels, sub(j, 1))
        fake_logits, fake_aux, stats = discriminate({"params": params, "batch_stats": stats}, fake_in, fake_labels,
                                                    sub(j, 2))
        loss = adversarial_d_loss(real_logits, fake_logits, real_aux, fake_aux, real_labels, fake_labels)
        aux = {}
        if m.gradient_penalty != "none":
          # The penalty's critic: these params and stats; its own updates (power iterations) are dropped. With
          # augmentation it is D(T(x)), the gradient taken through T (as DiffAugment's and ADA's code).
          critic = lambda x_: discriminate({"params": params, "batch_stats": stats},
                                           augment(x_, j, AUGMENT_REAL), real_labels, sub(j, 5))[0]
          if m.gradient_penalty == "wgan_gp":
            eps_B = jax.vmap(lambda k: jax.random.uniform(k, ()))(sub(j, 4))
            penalty = gan_lib.wgan_gp_penalty(critic, x_real, fake, eps_B)
            loss += m.gp_weight * penalty
          else:
            penalty = gan_lib.r1_penalty(critic, x_real)
            loss += 0.5 * m.gp_weight * penalty
          aux["gradient_penalty"] = penalty
        return loss, (stats, real_logits, fake_logits, aux)

      (d_loss, (d_stats, real_logits, fake_logits, aux)), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
          d_state["params"])
      d_state, _ = optim.apply_gradients(d_state, grads, d_tx, step)
      d_state["batch_stats"] = d_stats
      ada = augmenter.observe(ada, real_logits)  # ADA: sign(D(real)) of the global batch
      if m.loss == "wasserstein":  # the critic's estimate of the Wasserstein-1 distance (minus the penalty)
        d_metrics = {"d_loss": d_loss, "wasserstein": jnp.mean(real_logits) - jnp.mean(fake_logits), **aux}
      else:
        d_metrics = {"d_loss": d_loss, "d_real": jnp.mean(jax.nn.sigmoid(real_logits)),
                     "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits)), **aux}

    g_labels = random_labels(sub(m.d_steps, 3)) if num_classes else None

    def g_loss_fn(params):
      fake, stats = generate(generator, {"params": params, "batch_stats": g_vars["batch_stats"]},
                             sample_noise(sub(m.d_steps, 0)), g_labels)
      d_vars = {"params": d_state["params"], "batch_stats": d_state["batch_stats"]}
      logits, aux_logits, _ = discriminate(d_vars, augment(fake, m.d_steps, AUGMENT_FAKE), g_labels,
                                           sub(m.d_steps, 1))
      loss = gan_lib.generator_loss(m.loss, logits)
      if num_classes and m.cond_head == "acgan":
        loss += m.acgan_weight * gan_lib.classification_loss(aux_logits, g_labels)
      return loss, stats

    (g_loss, g_stats), grads = jax.value_and_grad(g_loss_fn, has_aux=True)(g_state["params"])
    g_state, _ = optim.apply_gradients(g_state, grads, g_tx, step, m.ema_decay)
    g_state["batch_stats"] = g_stats
    new_state = {"step": step + 1, "generator": g_state, "discriminator": d_state}
    metrics = {"g_loss": g_loss, **d_metrics, **augmenter.metrics(ada), "learning_rate": g_schedule(step)}
    if ada is not None:
      new_state["ada"] = augmenter.end_step(ada, step)
    return new_state, jax.lax.pmean(metrics, DATA_AXIS)

  def sample(state, rng, ids_B):
    g_state = state["generator"]
    params = g_state["ema_params"] if config.sample.use_ema else g_state["params"]
    labels_B = sample_labels(config, ids_B, num_classes, grid_columns) if num_classes else None
    out, _ = generate(generator, {"params": params, "batch_stats": g_state["batch_stats"]},
                      sample_noise(keys_for_ids(rng, ids_B)), labels_B)
    outputs = {medium: out}
    if num_classes:
      outputs["labels"] = labels_B
    return outputs

  return Family(init=init, train_step=train_step, sample=sample, batches_per_step=m.d_steps)
