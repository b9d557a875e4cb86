"""The maskgit family: training masks, the decoding schedule, one compiled decode loop, learning, data
parallelism, bad input. A tiny stand-in VQ decoder (a fixed colour per code) replaces a trained VQ run."""
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from aigc_jax import configs, parallel
from aigc_jax.errors import UserError
from aigc_jax.families import code_prior_lib, maskgit

K, H, W, C = 8, 4, 4, 3   # codebook, grid, classes
N = H * W
STEPS = 80        # training steps of the shared tiny run
PALETTE = np.random.default_rng(0).uniform(-1, 1, (K, 3)).astype(np.float32)


def toy_decode(codes_Bxhxw):
  """Codes -> 8x8 images (each code a 2x2 patch of its colour), jittable like a VQ decoder."""
  x = jnp.asarray(PALETTE)[codes_Bxhxw]
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


VQ = (toy_decode, {"num_codes": K, "grid": (H, W), "num_classes": C})


def toy_config(**overrides):
  c = maskgit.default_config()
  c.data.num_codes, c.data.grid_size = K, H
  c.batch_size = 8
  c.model.num_classes, c.model.num_layers, c.model.num_heads, c.model.width, c.model.dropout = C, 1, 2, 32, 0.0
  c.optimizer.learning_rate, c.optimizer.warmup_steps = 1e-2, 0
  c.sample.num, c.sample.steps = 4, 4
  configs.lock(c)
  return configs.override(c, overrides)


def toy_batch(index, batch=8):
  """Class y's grid is the fixed pattern (y + i + j) mod K: a prior that is learnable given the class."""
  rng = np.random.default_rng(index)
  labels = rng.integers(0, C, batch).astype(np.int32)
  ii, jj = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
  codes = ((labels[:, None, None] + ii + jj) % K).astype(np.int32)
  return {"codes": codes, "label": labels}


def build(**overrides):
  return maskgit.build(toy_config(**overrides), vq=VQ)


def init_state(built, seed=0):
  return jax.jit(built.family.init)(jax.random.key(seed), toy_batch(0))


def one_device():
  return Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))


def test_training_masks_ceil_gamma_r_n_uniform_positions():
  keys = jax.random.split(jax.random.key(0), 500)
  r = jax.vmap(lambda k: jax.random.uniform(jax.random.split(k)[0]))(keys)  # train_mask's own draw of r

  @jax.jit
  def all_masks(keys):
    return {name: jax.vmap(lambda k: maskgit.train_mask(k, N, g))(keys) for name, g in maskgit.SCHEDULES.items()}

  for name, masks in all_masks(keys).items():
    expected = np.clip(np.ceil(np.asarray(maskgit.SCHEDULES[name](r)) * N), 1, N)
    np.testing.assert_array_equal(np.asarray(masks).sum(1), expected, err_msg=name)
    share = np.asarray(masks).mean(0) / np.asarray(masks).mean()  # every position equally likely
    assert np.all(np.abs(share - 1) < 0.2), (name, share)


@pytest.fixture(scope="module")
def trained():
  """One tiny run shared by the tests below (compiling a step is most of a test's cost). Dropout and label
  dropout on, so every per-example key is in play; no label smoothing, so the loss is the plain masked
  cross-entropy; Adam's eps raised so that gradients of float-noise size make updates of that size, not +-lr
  (the 8-device comparison); greedy decoding."""
  built = build(**{"model.dropout": 0.1, "maskgit.label_dropout": 0.1, "maskgit.label_smoothing": 0.0,
                   "optimizer.eps": 1e-3, "sample.temperature": 0.0, "sample.choice_temperature": 0.0})
  mesh = one_device()
  state0 = init_state(built)
  step = parallel.data_parallel(built.family.train_step, mesh, donate_state=False)
  state, history = state0, []
  for i in range(STEPS):
    state, metrics = step(state, parallel.shard_batch(toy_batch(i), mesh), jax.random.key(i))
    history.append(jax.device_get(metrics))
    if i == 0:
      state1 = jax.device_get(state)
  return types.SimpleNamespace(built=built, state0=state0, state1=state1, state=state, history=history, mesh=mesh)


def test_loss_counts_only_masked_positions(trained):
  built, state, metrics = trained.built, trained.state0, trained.history[0]
  # Step 0's masks, label drops and dropout keys, recomputed: its loss is the mean cross-entropy over the
  # masked positions only.
  batch = toy_batch(0)
  targets = batch["codes"].reshape(8, N)

  @jax.jit  # one compiled program, not a dispatch per op
  def mask_and_cross_entropy(params):
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(8))
    purpose = lambda p: jax.vmap(lambda k: jax.random.fold_in(k, p))(keys)
    mask = jax.vmap(lambda k: maskgit.train_mask(k, N, built.gamma))(purpose(0))
    dropped = jax.vmap(lambda k: jax.random.bernoulli(k, 0.1))(purpose(1))
    labels = jnp.where(dropped, C, jnp.asarray(batch["label"]))
    logits = built.logits(params, jnp.where(mask, K, targets), labels, purpose(2))
    return mask, -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]

  mask, ce = mask_and_cross_entropy(state["params"])
  np.testing.assert_allclose(metrics["loss"], jnp.sum(ce * mask) / jnp.sum(mask), rtol=1e-5)
  assert abs(float(metrics["loss"]) - float(jnp.mean(ce))) > 1e-4  # unmasked positions would change it
  np.testing.assert_allclose(metrics["mask_ratio"], np.mean(mask), rtol=1e-6)


def sharpened(params):
  return jax.tree.map(lambda p: p * 4.0 if p.ndim >= 2 else p, params)  # confidences differ visibly


def check_schedule(built, codes, history, steps):
  history = np.asarray(history)
  masked = (history == K).sum(-1)  # [B, T]
  assert history.shape == (codes.shape[0], steps, N)
  assert np.all(masked == np.asarray(maskgit.masked_counts(built.gamma, N, steps))[None]), masked
  assert masked[0, -1] == 0 and np.all(np.asarray(codes) < K)
  np.testing.assert_array_equal(history[:, -1], codes)
  for t in range(1, steps):  # a code fixed at step t-1 keeps its value
    fixed = history[:, t - 1] != K
    np.testing.assert_array_equal(history[:, t][fixed], history[:, t - 1][fixed])


def test_decoding_follows_the_schedule_and_never_remasks(trained):
  # Sampled codes and Gumbel-perturbed choices on sharp random weights, the paper's cosine schedule.
  built = build(**{"sample.steps": 5})  # cosine
  codes, history = jax.jit(built.decode_tokens)(sharpened(trained.state0["params"]), jnp.arange(6) % C,
                                                           parallel.keys_for_ids(jax.random.key(5), jnp.arange(6)))
  check_schedule(built, codes, history, 5)


def test_masked_counts_reference():
  cosine = maskgit.SCHEDULES["cosine"]
  assert maskgit.masked_counts(cosine, 256, 8) == [int(math.floor(math.cos(math.pi / 2 * (t + 1) / 8) * 256))
                                                   for t in range(7)] + [0]
  assert maskgit.masked_counts(cosine, 3, 6) == [2, 1, 0, 0, 0, 0]  # at least one fewer per step


def test_decode_is_one_compiled_loop():
  built = build(**{"sample.guidance_scale": 2.0, "maskgit.label_dropout": 0.1})
  params = jax.eval_shape(built.family.init, jax.random.key(0), toy_batch(0))["params"]  # tracing only
  jaxpr = jax.make_jaxpr(built.decode_tokens)(params, jnp.arange(2), parallel.keys_for_ids(
      jax.random.key(0), jnp.arange(2))).jaxpr
  names = [e.primitive.name for e in jaxpr.eqns]
  assert names.count("scan") == 1 and "dot_general" not in names, names  # every model call inside the scan
  scan = next(e for e in jaxpr.eqns if e.primitive.name == "scan")
  assert scan.params["length"] == 4  # sample.steps


def test_eight_device_step_equals_one_device_step(trained):
  assert jax.device_count() == 8
  mesh = Mesh(np.asarray(jax.devices()), (parallel.DATA_AXIS,))
  step = parallel.data_parallel(trained.built.family.train_step, mesh, donate_state=False)
  eight, metrics = jax.device_get(step(parallel.replicate(trained.state0, mesh),
                                       parallel.shard_batch(toy_batch(0), mesh), jax.random.key(0)))
  for k, v in trained.history[0].items():  # the fixture's first step, on one device
    np.testing.assert_allclose(metrics[k], v, rtol=1e-5, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4), trained.state1["params"],
               eight["params"])


def test_loss_falls_and_greedy_samples_draw_their_class(trained):
  built, state, mesh = trained.built, trained.state, trained.mesh
  losses = [float(m["loss"]) for m in trained.history]
  # ln 8 = 2.08 at first; label dropout (an unconditional 10%) and dropout keep the floor above 0
  assert losses[0] > 1.5 and np.mean(losses[-10:]) < 1.0, (losses[0], losses[-10:])
  held_out = toy_batch(999, batch=11)  # 11 grids in batches of 8: the padded last batch must not count
  ev = code_prior_lib.evaluate_codes(built.family.eval_step, state, mesh, held_out["codes"], held_out["label"], 8,
                                     seed=0)
  assert ev["num_examples"] == 11
  assert ev["masked_token_accuracy"] > 0.75 and ev["masked_token_nll"] < 0.8, ev  # chance: 1/8, ln 8
  # family.sample: 4 samples in a 2x2 grid, one class per row; greedy decoding draws the class's pattern.
  out = jax.jit(built.family.sample)(state, jax.random.key(1), jnp.arange(4))
  labels = np.asarray(out["labels"])
  np.testing.assert_array_equal(labels, [0, 0, 1, 1])
  assert built.family.media == ("images",) and out["images"].shape == (4, 2 * H, 2 * W, 3)
  for i, y in enumerate(labels):
    want = toy_decode(((y + np.add.outer(np.arange(H), np.arange(W))) % K)[None])[0]
    assert np.mean(np.all(np.isclose(out["images"][i], want), axis=-1)) > 0.6, (i, y)  # chance: 1/8


@pytest.mark.parametrize("overrides,message", [
    ({"sample.label": C}, "sample.label"),
    ({"maskgit.mask_schedule": "cubic"}, "maskgit.mask_schedule"),
    ({"sample.steps": 0}, "sample.steps"),
    ({"sample.guidance_scale": 2.0}, "maskgit.label_dropout"),
    ({"model.num_classes": 0, "maskgit.label_dropout": 0.1}, "model.num_classes"),
    ({"maskgit.label_smoothing": 1.0}, "maskgit.label_smoothing"),
    ({"maskgit.eval_mask_ratio": 0.0}, "maskgit.eval_mask_ratio"),
    ({"sample.use_ema": True}, "sample.use_ema"),
    ({"model.width": 33}, "model.num_heads"),
])
def test_bad_settings_are_one_line_user_errors(overrides, message):
  with pytest.raises(UserError, match=message.replace(".", r"\.")) as e:
    build(**overrides)
  assert "\n" not in str(e.value)


def test_a_vq_run_of_another_grid_or_codebook_is_a_user_error():
  built = maskgit.build(toy_config(), vq=(toy_decode, {"num_codes": K, "grid": (H + 1, W + 1)}))
  params = jax.eval_shape(built.family.init, jax.random.key(0), toy_batch(0))
  with pytest.raises(UserError, match="data.vq_workdir"):
    jax.eval_shape(built.family.sample, params, jax.random.key(0), jnp.arange(2))
  with pytest.raises(UserError, match="data.vq_workdir"):  # no VQ run to decode with
    jax.eval_shape(maskgit.make_family(toy_config()).sample, params, jax.random.key(0), jnp.arange(2))
