"""Optimisers from config, built from optax pieces (schedules, clipping, weight-decay masks), and the one
train-state update every family uses.

A network's train state is a dict {"params", "opt_state", ["ema_params"], ["batch_stats"]}. Single-network
families keep those keys at the top level of their state next to "step" (and their own extras); the GAN
keeps one such dict per network under "generator" and "discriminator".
"""
import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from aigc_jax.errors import UserError
from aigc_jax.parallel import DATA_AXIS


def optimizer_config(**values) -> ConfigDict:
  """Every key `make_optimizer` reads, with neutral defaults; `values` are the family's own choices."""
  o = ConfigDict()
  o.name = "adam"              # adam | adamw | sgd
  o.learning_rate = 1e-3       # peak rate, reached after the warm-up
  o.b1 = 0.9                   # adam / adamw moment decays and epsilon
  o.b2 = 0.999
  o.eps = 1e-8
  o.weight_decay = 0.0         # adamw only, on matrices only (matrices_only)
  o.momentum = 0.0             # sgd only; 0 = none
  o.schedule = "constant"      # constant | cosine | linear | exponential, after warmup_steps of linear warm-up
  o.warmup_steps = 0
  o.decay_steps = 1            # cosine / linear: the step (warm-up included) where the decay ends
  o.min_learning_rate = 0.0    # cosine / linear / exponential: the rate decays towards this
  o.decay_rate = 1.0           # exponential: factor per step
  o.grad_clip_norm = 0.0       # clip gradients to this global norm; 0 = off
  o.update(values)
  return o


def make_schedule(opt: ConfigDict, lr: float = None):
  """Constant, or linear warm-up then constant / cosine / linear decay over `decay_steps`."""
  lr = opt.learning_rate if lr is None else lr
  warmup = opt.get("warmup_steps", 0)
  kind = opt.get("schedule", "constant")
  if kind in ("cosine", "linear") and opt.decay_steps <= warmup:
    raise UserError(f"optimizer.schedule={kind!r} decays until optimizer.decay_steps={opt.decay_steps}, which must "
                    f"be past optimizer.warmup_steps={warmup}; set --config.optimizer.decay_steps")
  if kind == "constant":
    if warmup:
      return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
    return optax.constant_schedule(lr)
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, max(warmup, 0), opt.decay_steps,
                                              end_value=opt.get("min_learning_rate", 0.0))
  if kind == "linear":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup),
         optax.linear_schedule(lr, opt.get("min_learning_rate", 0.0), opt.decay_steps - warmup)], [warmup])
  if kind == "exponential":
    return optax.exponential_decay(lr, transition_steps=1, decay_rate=opt.decay_rate,
                                   end_value=opt.get("min_learning_rate", None) or None)
  raise UserError(f"unknown optimizer.schedule {kind!r}; use constant, cosine, linear or exponential")


def matrices_only(params):
  """Weight-decay mask: decay kernels/embeddings (ndim >= 2), not biases or norm scales."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(opt: ConfigDict, lr: float = None, updates_per_step: int = 1):
  """Returns (optax transformation, schedule of the train step) for `opt.name` in adam | adamw | sgd.

  `updates_per_step`: how many times per train step this optimiser updates (a GAN critic's d_steps). The
  schedule stays a function of the train step, so warm-up and decay end where the config says for every
  network; optax's own count would make a critic's learning rate decay d_steps times too early."""
  schedule = make_schedule(opt, lr)
  by_update = schedule if updates_per_step == 1 else (lambda count: schedule(count // updates_per_step))
  name = opt.name
  if name == "adam":
    tx = optax.adam(by_update, b1=opt.b1, b2=opt.b2, eps=opt.get("eps", 1e-8))
  elif name == "adamw":
    tx = optax.adamw(by_update, b1=opt.b1, b2=opt.b2, eps=opt.get("eps", 1e-8), weight_decay=opt.weight_decay,
                     mask=matrices_only)
  elif name == "sgd":
    tx = optax.sgd(by_update, momentum=opt.get("momentum", 0.0) or None)
  else:
    raise UserError(f"unknown optimizer.name {name!r}; use adam, adamw or sgd")
  clip = opt.get("grad_clip_norm", 0.0)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx, schedule


def ema_update(ema_params, params, step, decay: float):
  """EMA with the usual warm-up, decay_t = min(decay, (1 + t) / (10 + t)), so early averages are not stuck
  at the initialisation."""
  decay_t = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return optax.incremental_update(params, ema_params, step_size=1.0 - decay_t)


def init_train_state(params, tx, *, ema: bool, batch_stats=None) -> dict:
  """{"params", "opt_state"} plus "ema_params" (a copy of params) with `ema`, and "batch_stats" when given."""
  state = {"params": params, "opt_state": tx.init(params)}
  if ema:
    state["ema_params"] = params
  if batch_stats is not None:
    state["batch_stats"] = batch_stats
  return state


def apply_gradients(train_state: dict, grads, tx, step, ema_decay: float = 0.0):
  """One optimiser step from per-device gradients, inside a data-parallel step.

  Averages `grads` over the data axis, updates "params" and "opt_state" (clipping, if configured, is part of
  `tx`) and, when the state carries "ema_params", their EMA at `step` (the step count before this update).
  Other keys pass through unchanged. Returns (new train state, global norm of the averaged gradients).
  """
  grads = jax.lax.pmean(grads, DATA_AXIS)
  updates, opt_state = tx.update(grads, train_state["opt_state"], train_state["params"])
  params = optax.apply_updates(train_state["params"], updates)
  new_state = {**train_state, "params": params, "opt_state": opt_state}
  if "ema_params" in train_state:
    new_state["ema_params"] = ema_update(train_state["ema_params"], params, step, ema_decay)
  return new_state, optax.global_norm(grads)


def compute_dtype(name: str):
  if name not in ("float32", "bfloat16"):
    raise UserError(f"dtype must be 'float32' or 'bfloat16', got {name!r} (--config.dtype)")
  return jnp.bfloat16 if name == "bfloat16" else jnp.float32
