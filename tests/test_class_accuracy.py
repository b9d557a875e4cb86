"""class_accuracy: the evaluator's per-class accuracy equals a hand computation with the same classifier (real
test images fed as "samples" with their true labels score the classifier's test accuracy; with shifted labels
they score what a direct count says, near 0); sample.label=k leaves the other classes null, not NaN; saved
records resume to the same card; FID and class_accuracy share one classifier; bad setups are one-line errors;
and --mode=eval's runner writes the card and the scalar for a tiny class-conditional diffusion model."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from aigc_jax import data as data_lib
from aigc_jax import parallel
from aigc_jax.configs import load_experiment
from aigc_jax.errors import UserError
from aigc_jax.evaluation import classifier, partial, runner
from aigc_jax.evaluation.evaluators import class_accuracy
from aigc_jax.evaluation.registry import EvalContext, check_eval_config, get_evaluator
from aigc_jax.families import Family, get_family, register_family, sample_labels, unregister_family

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = class_accuracy.NAME
CHUNK = 64


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("class_accuracy_cache"))


def cond_config(cache_dir, preset="cpu_cond", **overrides):
  """ddpm.py:cpu_cond (10 digit classes, 8x8) with a quickly trained classifier and a tiny sampler."""
  return load_experiment(os.path.join(ROOT, "experiments", "ddpm.py"), preset, {
      "eval.classifier_steps": 150, "eval.metrics": (NAME,), "eval.num_samples": 16, "eval.batch_size": 8,
      "eval.cache_dir": cache_dir, "sample.steps": 2, "sample.num": 16, "model.ch_mult": (1,),
      "model.attn_resolutions": (), **overrides})


def start(config, cache_dir, log=print):
  ctx = EvalContext(config, cache_dir, get_family(config), parallel.make_mesh(), None, cache_dir, log)
  return ctx, get_evaluator(NAME).start(ctx)


def feed(running, images_uint8, labels):
  """Real images as generated chunks, in [-1, 1] like a family's samples."""
  for s in range(0, len(images_uint8), CHUNK):
    running.absorb(running.record({"images": data_lib.to_model_range(images_uint8[s:s + CHUNK]),
                                   "labels": labels[s:s + CHUNK]}))
  return running.finish()


@pytest.fixture(scope="module")
def digits(cache_dir):
  """The test split and the classifier's own predictions on it, computed outside the evaluator."""
  config = cond_config(cache_dir)
  test = data_lib.load_image_set(config.data, "test")
  model, params, info = classifier.load_or_train(config, cache_dir)
  predicted = np.argmax(np.asarray(model.apply(params, data_lib.to_model_range(test.images))["logits"]), -1)
  return config, test, predicted, info


def test_real_images_with_true_labels_score_the_classifier_test_accuracy(digits, cache_dir):
  config, test, predicted, info = digits
  values, sections = feed(start(config, cache_dir)[1], test.images, test.labels)
  section = sections[NAME]
  assert values[NAME] == pytest.approx(info["test_accuracy"], abs=1.5 / len(test.labels))
  assert info["test_accuracy"] > 0.3  # well above chance (0.1), after a few seconds of training
  for k, entry in enumerate(section["per_class"]):
    mine = test.labels == k
    assert entry["count"] == mine.sum() and entry["correct"] == np.sum(predicted[mine] == k)
    assert entry["accuracy"] == pytest.approx(np.mean(predicted[mine] == k))
  by_class = {e["class"]: e["accuracy"] for e in section["per_class"]}
  assert section["lowest_class"]["accuracy"] == values[f"{NAME}_lowest"] == min(by_class.values())
  assert section["classifier"]["weights_sha256"] == info["weights_sha256"]
  assert section["classifier"]["test_accuracy"] == info["test_accuracy"]
  assert section["num_samples"] == len(test.labels) and section["classes_requested"] == 10


def test_shifted_labels_score_what_a_direct_count_says(digits, cache_dir):
  config, test, predicted, _ = digits
  shifted = (test.labels + 1) % 10
  values, sections = feed(start(config, cache_dir)[1], test.images, shifted)
  assert values[NAME] == pytest.approx(np.mean(predicted == shifted)) and values[NAME] < 0.1
  for entry in sections[NAME]["per_class"]:  # asked for k, shown k-1s: the commonest wrong reading, by hand
    wrong = predicted[(shifted == entry["class"]) & (predicted != shifted)]
    assert entry["most_mistaken_for"]["count"] == np.bincount(wrong).max()
    assert np.bincount(wrong)[entry["most_mistaken_for"]["class"]] == np.bincount(wrong).max()


def test_one_requested_class_leaves_the_others_null_not_nan(digits, cache_dir):
  config, test, predicted, _ = digits
  config = cond_config(cache_dir, **{"sample.label": 3})
  fours = test.labels == 4  # "samples" of class 3 that look like 4s: accuracy = how often 4s are read as 3
  values, sections = feed(start(config, cache_dir)[1], test.images[fours], np.full(fours.sum(), 3))
  section = json.loads(json.dumps(sections[NAME]))  # what the card holds
  assert [e["count"] for e in section["per_class"]] == [0, 0, 0, fours.sum(), 0, 0, 0, 0, 0, 0]
  assert [e["accuracy"] for e in section["per_class"] if e["class"] != 3] == [None] * 9
  assert values[NAME] == values[f"{NAME}_lowest"] == pytest.approx(np.mean(predicted[fours] == 3))
  assert section["classes_requested"] == 1 and "sample.label=3" in section["requested_labels"]


def test_saved_records_resume_to_the_uninterrupted_values(digits, cache_dir, tmp_path):
  config, test, _, _ = digits
  images, labels = test.images[:CHUNK * 3], test.labels[:CHUNK * 3]
  chunks = [(s, CHUNK) for s in range(0, len(images), CHUNK)]
  batch = lambda s: {"images": data_lib.to_model_range(images[s:s + CHUNK]), "labels": labels[s:s + CHUNK]}
  plain = feed(start(config, cache_dir)[1], images, labels)
  store = partial.ChunkStore(str(tmp_path), config, 1, CHUNK, chunks, [NAME])
  first = start(config, cache_dir)[1]
  store.save(0, {NAME: first.record(batch(0))})  # stopped after chunk 1; a new process resumes
  resumed = start(config, cache_dir)[1]
  assert store.readable() == 1
  resumed.absorb(store.load(0)[NAME])
  for s, _ in chunks[1:]:
    resumed.absorb(resumed.record(batch(s)))
  assert resumed.finish() == plain


def test_fid_and_class_accuracy_share_one_classifier(cache_dir):
  config = cond_config(cache_dir, **{"eval.metrics": ("fid", NAME)})
  ctx = EvalContext(config, cache_dir, get_family(config), parallel.make_mesh(), None, cache_dir)
  fid, accuracy = (get_evaluator(n).start(ctx) for n in ("fid", NAME))
  assert fid.features.backbone is accuracy.backbone and fid.features.extract is accuracy.extract


def test_bad_setups_are_one_line_errors(cache_dir, tmp_path):
  def error(config):
    with pytest.raises(UserError) as e:
      check_eval_config(config, get_family(config))
    assert "\n" not in str(e.value)
    return str(e.value)

  assert "model.num_classes" in error(cond_config(cache_dir, "cpu"))  # the unconditional preset
  assert "num_classes=10" in error(cond_config(cache_dir, **{"model.num_classes": 12}))
  path = str(tmp_path / "unlabelled.npz")
  np.savez(path, images=np.zeros((4, 8, 8, 1), np.uint8))
  assert "no labels" in error(cond_config(cache_dir, **{"data.name": "npz", "data.path": path}))
  config = cond_config(cache_dir)
  with pytest.raises(UserError, match="without 'labels'"):
    start(config, cache_dir)[1].record({"images": np.zeros((2, 8, 8, 1), np.float32)})


def test_the_runner_writes_the_card_and_scalar(digits, cache_dir, tmp_path):
  """Through runner.evaluate_state (the sampler over 8 devices, chunks, card, scalars) with a registered
  class-conditional family that "generates" real test digits of the requested class: a U-Net's compile would
  cost more than the rest of this file (diffusion's own `labels` output is tested in test_diffusion.py)."""
  config, test, predicted, _ = digits
  config = cond_config(cache_dir, **{"eval.num_samples": 40})
  config.unlock().family = "class_lookup"
  per_class = min(np.bincount(test.labels))
  bank = np.stack([test.images[test.labels == k][:per_class] for k in range(10)])  # [class, i, H, W, C]
  bank_predicted = np.stack([predicted[test.labels == k][:per_class] for k in range(10)])

  def make_family(config):
    def sample(state, rng, ids_B):
      labels = sample_labels(config, ids_B, 10, columns=4)
      images = state["bank"][labels, ids_B % per_class]
      return {"images": images.astype(jnp.float32) / 127.5 - 1.0, "labels": labels}
    return Family(init=None, train_step=None, sample=sample)

  register_family("class_lookup", make_family)
  scalars = {}

  class Writer:
    def write_scalars(self, step, values):
      scalars.update(values)

    def flush(self):
      pass

  try:
    family = get_family(config)
    card = runner.evaluate_state(config, str(tmp_path), family, parallel.make_mesh(), {"bank": bank}, 0,
                                 writer=Writer())
  finally:
    unregister_family("class_lookup")
  ids = np.arange(40)
  labels = (ids // 4) % 10  # 4 grid columns: rows of 4 samples, one class per row
  expected = np.mean(bank_predicted[labels, ids % per_class] == labels)
  section = card["protocol"][NAME]
  assert card["metrics"][NAME] == pytest.approx(expected) and scalars[f"eval/{NAME}"] == card["metrics"][NAME]
  assert [e["count"] for e in section["per_class"]] == [4] * 10 and card["num_generated"] == 40
  with open(card["path"]) as f:
    assert json.load(f)["protocol"][NAME] == json.loads(json.dumps(section))
