"""Text-alignment metrics: the captioned_shapes attribute judges (labels agree with the captions; trained once and
read back from the cache), compositional_accuracy's counting against a hand count with judges of known output, and
the one-line errors of compositional_accuracy and clip_score setups."""
import types

import numpy as np
import pytest
from ml_collections import ConfigDict

from aigc_jax import configs, parallel
from aigc_jax.data.sources import captioned_shapes as shapes
from aigc_jax.errors import UserError
from aigc_jax.evaluation import shape_attributes
from aigc_jax.evaluation.evaluators import compositional
from aigc_jax.evaluation.registry import EvalContext, check_eval_config, get_evaluator

SIZE = 16


def test_one_object_labels_agree_with_captions():
  images, labels = shape_attributes.one_object_split("test", SIZE)
  loaded = shapes.load_shapes("test", SIZE)
  one = [i for i, s in enumerate(loaded.scenes) if len(s["objects"]) == 1]
  assert len(images) == len(one) > 200 and images.shape[1:] == (SIZE, SIZE, 3)
  for row, i in enumerate(one):
    for caption in loaded.captions[i]:  # both captions; the second omits the size
      said = shape_attributes.attribute_indices(shapes.parse_caption(caption)["objects"])
      for a, k in said.items():
        assert k == -1 or k == labels[a][row], (caption, a)
  assert all(len(set(labels[a].tolist())) == len(n) for a, n in shape_attributes.ATTRIBUTES.items())


def test_judges_train_once_then_load_from_cache(tmp_path):
  logs = []
  first = shape_attributes.load_or_train(SIZE, str(tmp_path), logs.append, steps=5)
  second = shape_attributes.load_or_train(SIZE, str(tmp_path), logs.append, steps=5)
  assert len(logs) == 1 and "training" in logs[0]
  assert first.info["weights_sha256"] == second.info["weights_sha256"]
  images, labels = shape_attributes.one_object_split("test", SIZE)
  x = images[:32].astype(np.float32) / 127.5 - 1
  a, b = first.predict(x), second.predict(x)
  assert all(np.array_equal(a[k], b[k]) for k in shape_attributes.ATTRIBUTES)
  for k, names in shape_attributes.ATTRIBUTES.items():
    assert 0 <= first.info[k]["test_accuracy"] <= 1 and a[k].min() >= 0 and a[k].max() < len(names)


class _Judges:
  """Judges whose answers the test sets: the metric's counting is checked, not a network."""

  def __init__(self, answers):
    self.answers = answers
    self.info = {"scenes": "test", "steps": 0, "image_size": SIZE, "weights_sha256": "-", "cache_path": "-",
                 **{a: {"test_accuracy": 1.0} for a in shape_attributes.ATTRIBUTES}}

  def predict(self, images):
    assert len(images) == len(self.answers["colour"])
    return {a: np.array([shape_attributes.ATTRIBUTES[a].index(v) for v in vals], np.int32)
            for a, vals in self.answers.items()}


def _config(**eval_overrides):
  c = configs.base_config()
  c.family = "text_test"
  c.data.name, c.data.image_size, c.data.channels = "captioned_shapes", SIZE, 3
  c.eval.quantize = False
  c.eval.update(eval_overrides)
  return c


def _family(prompts, text_conditional=True):
  return types.SimpleNamespace(prompts_of=(lambda samples: prompts) if text_conditional else None,
                               samples_are_generated=True, media=("images",))


def test_compositional_accuracy_counts_like_a_hand_count(monkeypatch, tmp_path):
  prompts = ["a large red circle", "a blue star", "a red circle above a blue square", "a small green diamond"]
  answers = {"colour": ["red", "blue", "white", "yellow"], "shape": ["circle", "square", "star", "diamond"],
             "size": ["large", "small", "small", "small"]}
  monkeypatch.setattr(shape_attributes, "load_or_train", lambda *a, **k: _Judges(answers))
  config = _config(metrics=(compositional.NAME,))
  family = _family(prompts)
  check_eval_config(config, family)
  ctx = EvalContext(config, str(tmp_path), family, parallel.make_mesh(), None, str(tmp_path), print)
  running = get_evaluator(compositional.NAME).start(ctx)
  samples = {"images": np.zeros((4, SIZE, SIZE, 3), np.float32)}
  record = running.record(samples)
  running.absorb(record)
  values, sections = running.finish()
  # Judged: rows 0, 1, 3 (row 2 names two objects). Colour right on 0, 1; shape right on 0, 3; both only on 0;
  # size stated on 0 (large: right) and 3 (small: right).
  assert values[compositional.NAME] == pytest.approx(1 / 3)
  assert values[f"{compositional.NAME}_colour"] == pytest.approx(2 / 3)
  assert values[f"{compositional.NAME}_shape"] == pytest.approx(2 / 3)
  assert values[f"{compositional.NAME}_size"] == 1.0
  card = sections[compositional.NAME]
  assert (card["judged_images"], card["skipped_multi_object_prompts"], card["size_stated_in"]) == (3, 1, 2)
  assert card["chance"]["both"] == pytest.approx(1 / 30)

  # Absorbing a saved record again (a resumed evaluation) adds exactly the same counts.
  running.absorb({k: np.array(v) for k, v in record.items()})
  again, _ = running.finish()
  assert again == values


def test_compositional_accuracy_errors(monkeypatch, tmp_path):
  with pytest.raises(UserError, match="data.name=captioned_shapes"):
    c = _config(metrics=(compositional.NAME,))
    c.data.name = "captioned_digits"
    check_eval_config(c, _family([]))
  with pytest.raises(UserError, match="not text-conditional"):
    check_eval_config(_config(metrics=(compositional.NAME,)), _family([], text_conditional=False))
  monkeypatch.setattr(shape_attributes, "load_or_train", lambda *a, **k: _Judges({"colour": ["red"]}))
  ctx = EvalContext(_config(metrics=(compositional.NAME,)), str(tmp_path), _family(["a red dragon"]),
                    parallel.make_mesh(), None, str(tmp_path), print)
  running = get_evaluator(compositional.NAME).start(ctx)
  with pytest.raises(UserError, match="not in the captioned_shapes grammar"):
    running.record({"images": np.zeros((1, SIZE, SIZE, 3), np.float32)})


def test_clip_score_setup_errors():
  with pytest.raises(UserError, match="eval.clip_workdir"):
    check_eval_config(_config(metrics=("clip_score",)), _family([]))
  with pytest.raises(UserError, match="only read by the clip_score metric"):
    check_eval_config(_config(metrics=("fid",), clip_workdir="runs/clip_cpu"), _family([]))
  with pytest.raises(UserError, match="not text-conditional"):
    check_eval_config(_config(metrics=("clip_score",), clip_workdir="runs/clip_cpu"), _family([], False))


def test_class_accuracy_reads_the_requested_class_off_the_prompt():
  from aigc_jax.data.sources.captioned_digits import DIGIT_NAMES
  from aigc_jax.evaluation.evaluators.class_accuracy import prompt_classes
  got = prompt_classes(["a handwritten seven", "the number one", "seven or one", "a cat", "sevenfold"], DIGIT_NAMES)
  np.testing.assert_array_equal(got, [7, 1, -1, -1, -1])  # whole words only; none or several: not scored
  got = prompt_classes(["a large red circle", "a red circle above a blue square", "a red star"], shapes.CLASS_NAMES)
  np.testing.assert_array_equal(got, [shapes.CLASS_NAMES.index("red circle"), -1, shapes.CLASS_NAMES.index("red star")])
