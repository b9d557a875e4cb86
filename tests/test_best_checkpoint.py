"""eval.keep_best: the best evaluation's checkpoint survives the rotation (also across a resume), and
load_checkpoint=best makes --mode=sample load it; bad settings are one-line errors."""
import json
import os

import pytest

from aigc_jax import trainer
from aigc_jax.configs import load_experiment, override
from aigc_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pattern_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("text") / "pattern.txt"
  path.write_text("abcdefgh\n" * 400)
  return path


def tiny_gpt(path, **overrides):
  """A 2-layer GPT on a repeated pattern (its validation loss falls at every evaluation), evaluated every 2
  steps with its own validation loss, one checkpoint kept by the rotation, none written on schedule before 8."""
  c = load_experiment(os.path.join(ROOT, "experiments", "gpt.py"), "cpu")
  c.data.name, c.data.path = "text_file", str(path)
  c.batch_size, c.model.block_size, c.model.num_layers, c.model.num_heads, c.model.width = 8, 16, 2, 2, 32
  c.optimizer.learning_rate, c.optimizer.warmup_steps, c.optimizer.decay_steps = 1e-2, 1, 100
  c.sample.num, c.sample.max_new_tokens = 1, 8
  c.steps_per_dispatch, c.log_every_steps, c.sample_every_steps = 1, 2, 0
  c.checkpoint_every_steps, c.keep_checkpoints = 8, 1
  c.eval.every_steps, c.eval.metrics, c.eval.text_batches = 2, ("eval_step",), 2
  c.eval.keep_best = "loss"
  return override(c, overrides)


def checkpoint_steps(workdir):
  return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def card_losses(workdir):
  return {int(n[:-5]): json.loads((workdir / "eval" / n).read_text())["metrics"]["loss"]
          for n in os.listdir(workdir / "eval") if n[:-5].isdigit()}


def test_the_best_step_survives_rotation_and_resume_and_sample_loads_it(pattern_file, tmp_path, capsys):
  # best_mode=max keeps the WORST validation loss: on this pattern the first evaluation's, so the kept step is an
  # early one the rotation (keep 1) would delete; first to step 4, then resumed to 8 (best read back from cards).
  trainer.train_and_evaluate(tiny_gpt(pattern_file, num_train_steps=4, **{"eval.best_mode": "max"}), str(tmp_path))
  trainer.train_and_evaluate(tiny_gpt(pattern_file, num_train_steps=8, **{"eval.best_mode": "max"}), str(tmp_path))
  losses = card_losses(tmp_path)
  assert sorted(losses) == [2, 4, 6, 8]
  worst = max(losses, key=losses.get)
  assert worst < 8 and losses[worst] > losses[8], losses  # the kept step is not merely the latest
  assert checkpoint_steps(tmp_path) == [worst, 8]
  assert f"best loss so far: {losses[worst]:.6g} at step {worst}" in capsys.readouterr().out

  sample_config = tiny_gpt(pattern_file, num_train_steps=8, load_checkpoint="best", **{"eval.best_mode": "max"})
  trainer.sample(sample_config, str(tmp_path))
  assert f"Loading the best loss checkpoint: step {worst}" in capsys.readouterr().out
  assert (tmp_path / "samples" / f"{worst}.txt").exists()


def test_min_mode_keeps_only_the_rotation_when_the_latest_is_best(pattern_file, tmp_path):
  trainer.train_and_evaluate(tiny_gpt(pattern_file, num_train_steps=6), str(tmp_path))
  losses = card_losses(tmp_path)
  assert min(losses, key=losses.get) == 6, losses
  assert checkpoint_steps(tmp_path) == [6]


def test_bad_settings_are_one_line_errors(pattern_file, tmp_path):
  training = [
      ({"eval.every_steps": 0}, "eval.every_steps=0 runs none during training"),
      ({"eval.best_mode": "avg"}, r"eval.best_mode='avg'; choose one of \('min', 'max'\)"),
      ({"load_checkpoint": "best"}, "training always resumes from the latest checkpoint"),
      ({"load_checkpoint": "newest"}, "load_checkpoint='newest'; choose one of"),
  ]
  for overrides, message in training:
    with pytest.raises(UserError, match=message) as e:
      trainer.train_and_evaluate(tiny_gpt(pattern_file, num_train_steps=2, **overrides), str(tmp_path / "a"))
    assert "\n" not in str(e.value)
  assert not (tmp_path / "a" / "checkpoints").exists()

  # A metric the card does not have: the run stops at the first evaluation, naming the card's metrics.
  with pytest.raises(UserError, match=r"eval.keep_best='fid'.*it has \[.*'loss'"):
    trainer.train_and_evaluate(tiny_gpt(pattern_file, num_train_steps=4, **{"eval.keep_best": "fid"}),
                               str(tmp_path / "b"))
  assert checkpoint_steps(tmp_path / "b") == [2]  # what it saved stays

  # Loading the best of a run trained without keep_best: no card, or the card's step has no checkpoint left.
  plain = tmp_path / "c"
  trainer.train_and_evaluate(tiny_gpt(pattern_file, num_train_steps=4, **{"eval.keep_best": ""}), str(plain))
  with pytest.raises(UserError, match="needs --config.eval.keep_best"):
    trainer.sample(tiny_gpt(pattern_file, load_checkpoint="best", **{"eval.keep_best": ""}), str(plain))
  with pytest.raises(UserError, match="no eval card .* has the metric 'nll'"):
    trainer.sample(tiny_gpt(pattern_file, load_checkpoint="best", **{"eval.keep_best": "nll"}), str(plain))
  with pytest.raises(UserError, match="best loss .* is at step 2, whose checkpoint is not in"):
    trainer.sample(tiny_gpt(pattern_file, load_checkpoint="best", **{"eval.best_mode": "max"}), str(plain))
