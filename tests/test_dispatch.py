"""Several train steps per jitted call (`steps_per_dispatch`, a lax.scan over stacked batches): the same run as
one step per call (bit for bit on XLA:CPU), event steps (log, checkpoint) kept, and the step keys and data positions unchanged."""
import os

import jax
import numpy as np
import pytest

from aigc_jax import trainer
from aigc_jax.checkpointing import Checkpointer
from aigc_jax.configs import load_experiment
from aigc_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_gan(steps_per_dispatch):
  """The 2-D PacGAN2 preset at tiny widths (batch norm in G, two optimisers: the state a scan carries is rich)."""
  c = load_experiment(os.path.join(ROOT, "experiments", "gan_2d.py"), "ring_pac2")
  c.model.g_hidden = (16,)
  c.model.d_hidden = (8,)
  c.model.d_pieces = 2
  c.batch_size = 16
  c.num_devices = 2
  c.num_train_steps = 5
  c.log_every_steps = 5
  c.checkpoint_every_steps = 4
  c.sample_every_steps = 0
  c.eval.every_steps = 0
  c.steps_per_dispatch = steps_per_dispatch
  return c


def test_scanned_steps_train_exactly_like_one_step_per_call(tmp_path, capsys):
  runs = {}
  for k in (1, 3):
    workdir = str(tmp_path / f"k{k}")
    final = jax.device_get(trainer.train_and_evaluate(tiny_gan(k), workdir))
    out = capsys.readouterr().out
    loss_line = [line for line in out.splitlines() if line.startswith("step 5/5")]
    ckpt = Checkpointer(workdir)
    runs[k] = final, loss_line, ckpt.all_steps(), ckpt.saved_config(4)["steps_per_dispatch"]
    ckpt.close()
  (one, log_one, saved_one, data_one), (three, log_three, saved_three, data_three) = runs[1], runs[3]
  # Calls of up to 3 steps stop at the checkpoint and the end: 0-3 (scanned), 3-4 and 4-5 (one step each).
  assert saved_one == saved_three == [4, 5] and (data_one, data_three) == (1, 3)
  assert int(three["step"]) == 5
  assert log_one[0].split("|")[:3] == log_three[0].split("|")[:3]  # step, d_loss, g_loss as printed (4 digits)
  for (path, x), y in zip(jax.tree.flatten_with_path(one)[0], jax.tree.leaves(three)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))  # measured: bit-identical on CPU


def test_scanned_steps_of_a_convolutional_model_are_refused_on_cpu(tmp_path):
  """XLA:CPU leaves convolutions inside a loop body without its fast kernels (measured 6-30x slower per step):
  a one-line error before the first step, nothing saved."""
  c = load_experiment(os.path.join(ROOT, "experiments", "dcgan.py"), "cpu", {
      "model.g_width": 8, "model.d_width": 8, "model.z_dim": 16, "data.image_size": 8, "batch_size": 8,
      "sample_every_steps": 0, "eval.every_steps": 0, "num_train_steps": 4, "steps_per_dispatch": 2})
  workdir = str(tmp_path / "conv")
  with pytest.raises(UserError, match=r"^steps_per_dispatch=2 on CPU with a convolutional model.*"
                                      r"set --config.steps_per_dispatch=1$"):
    trainer.train_and_evaluate(c, workdir)
  ckpt = Checkpointer(workdir)
  assert ckpt.all_steps() == []
  ckpt.close()
  c.steps_per_dispatch = 1  # the same model one step per call trains
  assert int(jax.device_get(trainer.train_and_evaluate(c, workdir)["step"])) == 4
