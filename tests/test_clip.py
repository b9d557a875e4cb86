"""The clip family: the contrastive loss by hand, negatives gathered over 8 devices == 1 device (loss and
gradients), the temperature clip, zero-shot / recall@k closed forms, a 2-step run through the trainer with its
metric card, retrieval figure and load_clip, and one-line errors. Tiny: 8x8 digits, width 16, batch 8."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from aigc_jax import configs, parallel, trainer
from aigc_jax import data as data_lib
from aigc_jax.data import caption_tokenizer
from aigc_jax.errors import UserError
from aigc_jax.families import clip, clip_lib

B, L = 8, 32
TRAINER_RUN = {"num_devices": 1, "num_train_steps": 2, "eval.every_steps": 2, "sample_every_steps": 2,
               "checkpoint_every_steps": 2, "log_every_steps": 1, "sample.num": 16, "sample.gallery_size": 40,
               "eval.batch_size": 64}


def tiny_config(**overrides):
  c = clip.default_config()
  c.batch_size = B
  c.data.image_size, c.data.caption_length = 8, L
  m = c.model
  m.embed_dim, m.patch_size, m.vision_width, m.vision_layers, m.vision_heads = 16, 4, 16, 1, 2
  m.text_width, m.text_layers, m.text_heads = 16, 1, 2
  c.optimizer.warmup_steps, c.optimizer.decay_steps = 0, 10
  configs.lock(c)
  return configs.override(c, overrides)


def toy_batch(seed=0):
  """Random images and byte captions of different lengths (so the EOS positions differ)."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((B, L), np.int32)
  for i in range(B):
    n = 3 + i * 2
    tokens[i, 0], tokens[i, 1:n + 1], tokens[i, n + 1] = caption_tokenizer.BOS_ID, rng.integers(3, 259, n), 2
  return {"image": rng.uniform(-1, 1, (B, 8, 8, 1)).astype(np.float32), "label": np.zeros(B, np.int32),
          "caption_tokens": tokens, "caption_mask": tokens != 0}


def mesh_of(n):
  return Mesh(np.asarray(jax.devices()[:n]), (parallel.DATA_AXIS,))


def test_symmetric_loss_matches_the_hand_computed_value():
  logits = jnp.array([[2.0, 0.0], [1.0, 3.0]])
  rows = 2 * math.log1p(math.exp(-2))                         # each row's target beats the other by 2
  columns = math.log1p(math.exp(-1)) + math.log1p(math.exp(-3))
  assert float(clip_lib.symmetric_loss(logits)) == pytest.approx(0.5 * (rows / 2 + columns / 2), rel=1e-6)


def test_gathered_loss_and_gradients_on_8_devices_equal_the_global_batch_on_one():
  """The family's loss inside shard_map over 8 devices (one pair each, so all but one negative of every row come
  from other devices) against the plain B x B loss on one device: the loss and its gradients with respect to
  every embedding and the log scale. The encoders act per example, so parameter gradients follow by the chain
  rule; the 2-step trainer run below trains through the same loss."""
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  img, txt = unit(rng.normal(size=(B, 16))).astype(np.float32), unit(rng.normal(size=(B, 16))).astype(np.float32)
  log_scale = np.float32(math.log(1 / 0.07))
  reference = lambda i, t, s: clip_lib.symmetric_loss(jnp.exp(s) * i @ t.T)  # noqa: E731
  want = jax.jit(jax.value_and_grad(reference, argnums=(0, 1, 2)))(img, txt, log_scale)

  def per_device(i_bxE, t_bxE, s):
    loss_and_grads = jax.value_and_grad(lambda i, t, s: clip_lib.gathered_loss(i, t, jnp.exp(s))[0],
                                        argnums=(0, 1, 2))(i_bxE, t_bxE, s)
    loss, (gi, gt, gs) = loss_and_grads
    # Each device differentiates its own rows' loss; what optim.apply_gradients does (pmean) to the parameter
    # gradients is here the mean of the log-scale gradient and, for the embeddings, n x (the owner's share).
    n = jax.lax.psum(1, parallel.DATA_AXIS)
    return loss, gi / n, gt / n, jax.lax.pmean(gs, parallel.DATA_AXIS)

  mesh = mesh_of(8)
  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(parallel.DATA_AXIS), P(parallel.DATA_AXIS), P()),
                             out_specs=(P(), P(parallel.DATA_AXIS), P(parallel.DATA_AXIS), P()), check_vma=False))
  loss, g_img, g_txt, g_scale = fn(img, txt, log_scale)
  np.testing.assert_allclose(loss, want[0], rtol=1e-6)
  for got, expected in zip((g_img, g_txt, g_scale), want[1]):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
  assert abs(float(want[1][2])) > 1e-3  # the temperature is learned


def test_zero_shot_and_recall_closed_forms():
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
  n = 50
  img = unit(rng.normal(size=(n, 32)))
  ids, owner = np.arange(n), np.arange(n)
  ks = (1, 5, 10)
  # Perfectly aligned: every recall is 1.
  assert set(clip_lib.retrieval_recalls(img, img, ids, owner, ks).values()) == {1.0}
  # Each caption embedded as the NEXT image: nothing is found first, in either direction.
  shifted = clip_lib.retrieval_recalls(img, np.roll(img, -1, axis=0), ids, owner, ks)
  assert shifted["text_to_image_recall@1"] == 0.0 and shifted["image_to_text_recall@1"] == 0.0
  # Unrelated embeddings: recall@k is k / N on average (binomial spread, 4 sigma).
  n_big = 1000
  rand = clip_lib.retrieval_recalls(unit(rng.normal(size=(n_big, 16))), unit(rng.normal(size=(n_big, 16))),
                                    np.arange(n_big), np.arange(n_big), ks)
  for k in ks:
    for direction in ("text_to_image", "image_to_text"):
      p = k / n_big
      assert abs(rand[f"{direction}_recall@{k}"] - p) < 4 * math.sqrt(p * (1 - p) / n_big), (direction, k, rand)
  # Equal caption texts are equal queries: image 1 also carries "a", so finding it for image 0's "a" is a hit.
  text_ids, owners = clip_lib.text_ids([("a",), ("a",), ("b",)])
  np.testing.assert_array_equal(text_ids, [0, 0, 1])
  both_at_image_1 = clip_lib.retrieval_recalls(img[:3], img[[1, 1, 2]], text_ids, owners, (1,))
  assert both_at_image_1["text_to_image_recall@1"] == 1.0
  # Zero-shot: images at their class embedding -> 1; at the next class's -> 0; unrelated -> 1/K.
  k = 10
  prompts = unit(rng.normal(size=(k * 3, 32)))          # three templates per class
  classes = clip_lib.class_embeddings(prompts, k)
  np.testing.assert_allclose(classes[0], unit(prompts[:3].mean(0)), rtol=1e-6)
  labels = rng.integers(0, k, 4000)
  assert clip_lib.zero_shot(classes[labels], classes, labels)["zero_shot_accuracy"] == 1.0
  assert clip_lib.zero_shot(classes[(labels + 1) % k], classes, labels)["zero_shot_accuracy"] == 0.0
  chance = clip_lib.zero_shot(unit(rng.normal(size=(4000, 32))), classes, labels)["zero_shot_accuracy"]
  assert abs(chance - 1 / k) < 4 * math.sqrt(0.09 / 4000), chance


def test_two_steps_through_the_trainer_write_the_card_and_figure_and_load_clip_restores(tmp_path):
  config = tiny_config(**TRAINER_RUN)
  trainer.train_and_evaluate(config, str(tmp_path))
  card = json.loads((tmp_path / "eval" / "2.json").read_text())
  values = json.dumps(card)
  for key in ("zero_shot_accuracy", "text_to_image_recall@1", "image_to_text_recall@5", "text_to_image_recall@10"):
    assert f'"{key}"' in values, (key, card)
  samples = np.load(tmp_path / "samples" / "2.npz")["images"]  # the retrieval figure: 4 prompts x 4 test images
  gallery = data_lib.load_image_set(config.data, "test").images[:40]
  assert samples.shape == (16, 8, 8, 1)
  assert all(np.any(np.all(gallery == image, axis=(1, 2, 3))) for image in samples)  # retrieved, not generated
  assert len({image.tobytes() for image in samples[:4]}) == 4  # a row ranks distinct images
  encoders = clip.load_clip(str(tmp_path))
  assert encoders.step == 2 and len(encoders.fingerprint) == 16 and encoders.tokenizer.kind == "byte"
  assert clip.load_clip(str(tmp_path / "checkpoints" / "2")).fingerprint == encoders.fingerprint
  text = encoders.embed_prompts(["a handwritten seven", "the digit two"])
  images = encoders.embed_images(np.zeros((3, 8, 8, 1), np.float32))
  assert text.shape == (2, 16) and images.shape == (3, 16)
  np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, rtol=1e-5)
  with pytest.raises(UserError, match="no checkpoints"):
    clip.load_clip(str(tmp_path / "nowhere"))


def test_the_logit_scale_is_clipped_to_0_and_log_100_after_an_update():
  # The trainer test's config and step wrapper: its compiled init and train step come from the compilation cache.
  built = clip.build(tiny_config(**TRAINER_RUN))
  mesh = mesh_of(1)
  state = jax.device_get(jax.jit(built.init)(jax.random.key(0), data_lib.example_batch(built.config)))
  assert float(state["params"]["logit_scale"]) == pytest.approx(math.log(1 / 0.07))
  step = parallel.data_parallel(built.family.train_step, mesh)
  for start, want in ((math.log(150.0), math.log(100.0)), (-0.5, 0.0)):
    state["params"]["logit_scale"] = jnp.float32(start)
    new, metrics = step(parallel.replicate(state, mesh), parallel.shard_batch(toy_batch(), mesh), jax.random.key(0))
    assert float(new["params"]["logit_scale"]) == pytest.approx(want, abs=1e-6)
    assert float(metrics["logit_scale"]) == pytest.approx(math.exp(want), rel=1e-5)


@pytest.mark.parametrize("overrides,message", [
    ({"data.name": "digits"}, "has no captions"),
    ({"sample.prompt": "a seven written by hand"}, "data.caption_length=24"),   # 23 bytes + BOS/EOS > 24
    ({"model.patch_size": 3}, "model.patch_size"),
    ({"model.max_logit_scale": 10.0}, "model.init_temperature"),               # 1 / 0.07 > 10
    ({"sample.use_ema": True}, "sample.use_ema"),
])
def test_bad_settings_are_one_line_user_errors(overrides, message):
  config = tiny_config(**{"data.caption_length": 24, **overrides})
  with pytest.raises(UserError, match=message.replace(".", r"\.")) as e:
    clip.build(config)
  assert "\n" not in str(e.value)
