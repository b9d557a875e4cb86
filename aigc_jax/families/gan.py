"""Generative adversarial networks (Goodfellow et al., 2014): the MLP pair and DCGAN.

State: {step, generator, discriminator}, one aigc_jax.optim train state per network ({params, opt_state,
batch_stats}; the generator's also ema_params, used for sampling by default). `model.d_steps` discriminator
updates, each on its own real batch, precede every generator update.
"""
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from aigc_jax import configs, optim
from aigc_jax.errors import UserError
from aigc_jax.families import Family, check_sample_label
from aigc_jax.models.dcgan import DCGANDiscriminator, DCGANGenerator, num_resolution_steps
from aigc_jax.models.gan_mlp import MaxoutDiscriminator, MLPGenerator
from aigc_jax.parallel import DATA_AXIS, example_keys, keys_for_ids

LOSSES = ("non_saturating", "minimax", "hinge")


def default_config() -> ConfigDict:
  """`configs.base_config()` plus every key this family reads; experiments/gan.py and dcgan.py override it."""
  c = configs.base_config()
  c.family = "gan"
  m = c.model
  m.arch = "dcgan"                 # dcgan (all-convolutional, batch norm) | mlp (Goodfellow et al.'s pair)
  m.z_dim = 100                    # noise dimension
  m.noise = "normal"               # normal | uniform (unit variance, as pylearn2's)
  m.loss = "non_saturating"        # non_saturating (-log D(G(z))) | minimax | hinge
  m.d_steps = 1                    # discriminator updates, each on its own batch, per generator update
  m.ema_decay = 0.999              # EMA of the generator params, sampled from when sample.use_ema
  m.g_width = 64                   # dcgan: channels of G's last hidden layer (ngf) and D's first (ndf)
  m.d_width = 64
  m.g_hidden = (1200, 1200)        # mlp: generator ReLU layers
  m.d_hidden = (240, 240)          # mlp: discriminator maxout layers
  m.d_pieces = 5                   # mlp: linear pieces per maxout unit
  m.d_input_dropout = 0.0          # mlp: dropout on the discriminator's input
  m.d_hidden_dropout = 0.0         # mlp: dropout on its hidden layers
  c.optimizer = optim.optimizer_config(learning_rate=2e-4, b1=0.5)  # Radford et al.'s Adam
  c.optimizer.g_learning_rate = 0.0  # per network; 0 = optimizer.learning_rate
  c.optimizer.d_learning_rate = 0.0
  return c


def build_models(config: ConfigDict, axis_name=DATA_AXIS):
  m, d = config.model, config.data
  dtype = optim.compute_dtype(config.dtype)
  if m.arch == "mlp":
    g = MLPGenerator((d.image_size, d.image_size, d.channels), tuple(m.g_hidden), dtype=dtype)
    disc = MaxoutDiscriminator(tuple(m.d_hidden), m.d_pieces, m.d_input_dropout, m.d_hidden_dropout, dtype=dtype)
  elif m.arch == "dcgan":
    try:
      num_resolution_steps(d.image_size)
    except ValueError as e:
      raise UserError(f"{e} (data.image_size); set --config.data.image_size to 8, 16, 32, 64, ...") from None
    g = DCGANGenerator(d.image_size, d.channels, m.g_width, axis_name=axis_name, dtype=dtype)
    disc = DCGANDiscriminator(d.image_size, m.d_width, axis_name=axis_name, dtype=dtype)
  else:
    raise UserError(f"unknown model.arch {m.arch!r} for the gan family; use 'mlp' or 'dcgan'")
  return g, disc


def noise(key, z_dim, kind):
  if kind == "normal":
    return jax.random.normal(key, (z_dim,))
  # Goodfellow et al.'s pylearn2 setup draws uniform noise with unit variance.
  return jax.random.uniform(key, (z_dim,), minval=-jnp.sqrt(3.0), maxval=jnp.sqrt(3.0))


def discriminator_losses(kind, real_logits, fake_logits):
  if kind == "hinge":
    return jnp.mean(nn_relu(1.0 - real_logits)) + jnp.mean(nn_relu(1.0 + fake_logits))
  # -log D(x) - log(1 - D(G(z))) with D = sigmoid(logit)
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def generator_loss(kind, fake_logits):
  if kind == "non_saturating":
    return jnp.mean(jax.nn.softplus(-fake_logits))  # -log D(G(z))
  if kind == "minimax":
    return -jnp.mean(jax.nn.softplus(fake_logits))  # log(1 - D(G(z)))
  return -jnp.mean(fake_logits)  # hinge


def nn_relu(x):
  return jnp.maximum(x, 0.0)


def make_family(config: ConfigDict) -> Family:
  m = config.model
  check_sample_label(config, 0)
  if m.loss not in LOSSES:
    raise UserError(f"unknown model.loss {m.loss!r}; use one of {LOSSES}")
  if m.d_steps < 1:
    raise UserError(f"model.d_steps must be >= 1, got {m.d_steps}")
  if m.noise not in ("normal", "uniform"):
    raise UserError(f"model.noise must be 'normal' or 'uniform', got {m.noise!r}")
  generator, discriminator = build_models(config)
  init_generator, init_discriminator = build_models(config, axis_name=None)  # no collectives outside a mesh
  opt = config.optimizer
  g_tx, g_schedule = optim.make_optimizer(opt, opt.get("g_learning_rate") or opt.learning_rate)
  d_tx, d_schedule = optim.make_optimizer(opt, opt.get("d_learning_rate") or opt.learning_rate)
  uses_dropout = m.arch == "mlp" and (m.d_input_dropout > 0 or m.d_hidden_dropout > 0)

  def sample_noise(keys_Bx2):
    return jax.vmap(lambda k: noise(k, m.z_dim, m.noise))(keys_Bx2)

  def generate(g_vars, z, train=True):
    """Images from the generator; batch norm uses the batch's statistics (as DCGAN samples)."""
    images, updates = generator.apply(g_vars, z, train=train, mutable=["batch_stats"])
    return images, updates.get("batch_stats", {})

  def discriminate(d_vars, x, dropout_keys_Bx2):
    """Logits and new batch stats. Dropout masks come from per-example keys, so they do not depend on how
    the batch is split across devices."""
    if uses_dropout:
      def one(x1, k):
        return discriminator.apply(d_vars, x1[None], train=True, rngs={"dropout": k})[0]
      return jax.vmap(one)(x, dropout_keys_Bx2), {}
    logits, updates = discriminator.apply(d_vars, x, train=True, mutable=["batch_stats"])
    return logits, updates.get("batch_stats", {})

  def init(rng, example_batch):
    image = example_batch["image"]
    image = image[:, 0] if image.ndim == 5 else image
    g_key, d_key = jax.random.split(rng)
    z = sample_noise(jax.random.split(g_key, image.shape[0]))
    g_vars = init_generator.init(g_key, z, train=False)
    d_vars = init_discriminator.init({"params": d_key, "dropout": d_key}, image, train=False)
    return {
        "step": jnp.zeros((), jnp.int32),
        "generator": optim.init_train_state(g_vars["params"], g_tx, ema=True,
                                            batch_stats=g_vars.get("batch_stats", {})),
        "discriminator": optim.init_train_state(d_vars["params"], d_tx, ema=False,
                                                batch_stats=d_vars.get("batch_stats", {})),
    }

  def train_step(state, batch, rng):
    real = batch["image"]
    if real.ndim == 4:  # one batch per step arrives unstacked
      real = real[:, None]
    local_batch = real.shape[0]
    keys = example_keys(rng, local_batch)  # [B, 2]
    sub = lambda j, purpose: jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, j), purpose))(keys)
    g_state, d_state = state["generator"], state["discriminator"]
    # Every fake of this step comes from the generator as it was at the start of the step.
    g_vars = {"params": g_state["params"], "batch_stats": g_state["batch_stats"]}
    step = state["step"]

    d_metrics = {}
    for j in range(config.model.d_steps):
      fake, _ = generate(g_vars, sample_noise(sub(j, 0)))
      fake = jax.lax.stop_gradient(fake)
      d_stats = d_state["batch_stats"]

      def d_loss_fn(params):
        real_logits, stats = discriminate({"params": params, "batch_stats": d_stats}, real[:, j], sub(j, 1))
        fake_logits, stats = discriminate({"params": params, "batch_stats": stats}, fake, sub(j, 2))
        loss = discriminator_losses(m.loss, real_logits, fake_logits)
        return loss, (stats, real_logits, fake_logits)

      (d_loss, (d_stats, real_logits, fake_logits)), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
          d_state["params"])
      d_state, _ = optim.apply_gradients(d_state, grads, d_tx, step)
      d_state["batch_stats"] = d_stats
      d_metrics = {"d_loss": d_loss, "d_real": jnp.mean(jax.nn.sigmoid(real_logits)),
                   "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits))}

    def g_loss_fn(params):
      fake, stats = generate({"params": params, "batch_stats": g_vars["batch_stats"]},
                             sample_noise(sub(m.d_steps, 0)))
      d_vars = {"params": d_state["params"], "batch_stats": d_state["batch_stats"]}
      logits, _ = discriminate(d_vars, fake, sub(m.d_steps, 1))
      return generator_loss(m.loss, logits), stats

    (g_loss, g_stats), grads = jax.value_and_grad(g_loss_fn, has_aux=True)(g_state["params"])
    g_state, _ = optim.apply_gradients(g_state, grads, g_tx, step, m.ema_decay)
    g_state["batch_stats"] = g_stats
    new_state = {"step": step + 1, "generator": g_state, "discriminator": d_state}
    metrics = {"g_loss": g_loss, **d_metrics, "learning_rate": g_schedule(step)}
    return new_state, jax.lax.pmean(metrics, DATA_AXIS)

  def sample(state, rng, ids_B):
    g_state = state["generator"]
    params = g_state["ema_params"] if config.sample.use_ema else g_state["params"]
    images, _ = generate({"params": params, "batch_stats": g_state["batch_stats"]},
                         sample_noise(keys_for_ids(rng, ids_B)))
    return {"images": images}

  return Family(init=init, train_step=train_step, sample=sample, batches_per_step=m.d_steps)
