"""One run per workdir (the lock), resuming with a changed config, and falling back past an unreadable
checkpoint. The CLI-level cases (exit status, one line on stderr) are in test_cli_errors.py and
test_checkpointing.py; these check the mechanisms in-process."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from aigc_jax import trainer
from aigc_jax.checkpointing import Checkpointer
from aigc_jax.configs import load_experiment
from aigc_jax.errors import UserError
from aigc_jax.evaluation import registry as evaluators
from aigc_jax.workdir_lock import LOCK_NAME, WorkdirLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_lock(workdir, host, pid, age_s=0.0):
  path = os.path.join(workdir, LOCK_NAME)
  with open(path, "w") as f:
    json.dump({"host": host, "pid": pid, "start_time": time.time() - age_s, "started": "earlier", "token": "theirs"}, f)
  os.utime(path, (time.time() - age_s, time.time() - age_s))
  return path


def dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


class Log(list):

  def __call__(self, line):
    self.append(line)


def test_lock_records_holder_and_release_removes_it(tmp_path):
  lock = WorkdirLock(str(tmp_path), log=Log()).acquire()
  holder = json.loads((tmp_path / LOCK_NAME).read_text())
  assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
  assert abs(holder["start_time"] - time.time()) < 60
  lock.release()
  assert not (tmp_path / LOCK_NAME).exists()


def test_lock_held_by_a_live_process_on_this_host_is_refused(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    path = write_lock(tmp_path, socket.gethostname(), holder.pid)
    before = open(path).read()
    with pytest.raises(UserError, match=rf"another run is training in this workdir \(pid {holder.pid} on host"):
      WorkdirLock(str(tmp_path), log=Log()).acquire()
    assert open(path).read() == before
  finally:
    holder.kill()
    holder.wait()


def test_lock_of_a_dead_pid_on_this_host_is_taken_over_with_a_warning(tmp_path):
  pid = dead_pid()
  write_lock(tmp_path, socket.gethostname(), pid)
  log = Log()
  lock = WorkdirLock(str(tmp_path), log=log).acquire()
  assert len(log) == 1 and f"pid {pid} on this host is no longer running" in log[0] and "took over" in log[0]
  assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
  assert [n for n in os.listdir(tmp_path) if n.startswith(LOCK_NAME + ".stale-")]  # the old lock is kept
  lock.release()


def test_lock_of_another_host_waits_for_its_heartbeat_to_go_stale(tmp_path):
  write_lock(tmp_path, "some-other-host", 1, age_s=10)  # pid 1 is alive here, but that says nothing there
  with pytest.raises(UserError, match="pid 1 on host some-other-host"):
    WorkdirLock(str(tmp_path), stale_after_s=300, log=Log()).acquire()
  write_lock(tmp_path, "some-other-host", 1, age_s=1000)
  log = Log()
  lock = WorkdirLock(str(tmp_path), stale_after_s=300, log=log).acquire()
  assert "no heartbeat from host some-other-host" in log[0]
  lock.release()


def test_heartbeat_refreshes_the_lock_and_release_leaves_a_successor_alone(tmp_path):
  lock = WorkdirLock(str(tmp_path), heartbeat_s=0.05, log=Log()).acquire()
  path = tmp_path / LOCK_NAME
  os.utime(path, (time.time() - 1000, time.time() - 1000))
  deadline = time.time() + 10
  while time.time() - os.stat(path).st_mtime > 100 and time.time() < deadline:
    time.sleep(0.05)
  assert time.time() - os.stat(path).st_mtime < 100  # refreshed by the heartbeat thread
  write_lock(tmp_path, "some-other-host", 7)  # another run took over (say, after a network partition)
  lock.release()
  assert json.loads(path.read_text())["token"] == "theirs"


TINY = {"model.g_width": 8, "model.d_width": 8, "model.z_dim": 16, "data.image_size": 8, "batch_size": 8,
        "sample_every_steps": 0, "log_every_steps": 1, "checkpoint_every_steps": 1, "keep_checkpoints": 5}


def tiny_config(**overrides):
  return load_experiment(os.path.join(ROOT, "experiments", "dcgan.py"), "cpu", {**TINY, **overrides})


def params(workdir, step):
  config = tiny_config()
  ckpt = Checkpointer(str(workdir), create=False)
  state, _, _ = ckpt.restore(step, trainer.abstract_state(trainer.get_family(config), config),
                             trainer.parallel.make_mesh())
  ckpt.close()
  return jax.device_get(state)


def steps_in(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  trainer.train_and_evaluate(tiny_config(num_train_steps=4), str(workdir))
  return params(workdir, 4)


# tensorstore reads in flight when the restore failed finish later, into a closed event loop: aigc_jax drops that
# error in its own hooks (checkpointing._drop_closed_loop_errors), but pytest puts its hook on top per test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unreadable_latest_checkpoint_is_moved_aside_and_the_previous_one_resumes_exactly(tmp_path, capsys,
                                                                                           uninterrupted):
  trainer.train_and_evaluate(tiny_config(num_train_steps=3), str(tmp_path))
  assert steps_in(tmp_path) == [1, 2, 3]
  truncated = []
  for root, _, files in os.walk(tmp_path / "checkpoints" / "3" / "state"):
    if os.path.basename(root) == "d":
      for f in files:
        os.truncate(os.path.join(root, f), 10)
        truncated.append(os.path.relpath(os.path.join(root, f), tmp_path / "checkpoints" / "3"))
  assert truncated
  events_before = sorted(n for n in os.listdir(tmp_path) if n.startswith("events."))
  capsys.readouterr()
  trainer.train_and_evaluate(tiny_config(num_train_steps=4), str(tmp_path))
  out = capsys.readouterr().out
  assert "warning: cannot read checkpoint" in out and "checkpoints_corrupt/3" in out
  assert "Resuming from step 2" in out
  kept = tmp_path / "checkpoints_corrupt" / "3"
  assert all((kept / rel).exists() for rel in truncated)  # moved, every file kept
  assert steps_in(tmp_path) == [1, 2, 3, 4]  # 3 trained again from 2
  assert set(events_before) <= set(os.listdir(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, params(tmp_path, 4), uninterrupted)


def test_resume_lists_allowed_changes_and_warns_about_the_rest(tmp_path, capsys):
  trainer.train_and_evaluate(tiny_config(num_train_steps=2), str(tmp_path))
  capsys.readouterr()
  trainer.train_and_evaluate(tiny_config(num_train_steps=3, **{"optimizer.learning_rate": 1e-3}), str(tmp_path))
  out = capsys.readouterr().out
  assert "resuming with changed settings: num_train_steps 2 -> 3" in out
  assert "warning: resuming with a changed config: optimizer.learning_rate 0.0002 -> 0.001" in out
  assert "set them back" in out
  with pytest.raises(UserError) as info:
    trainer.train_and_evaluate(tiny_config(num_train_steps=4, **{"model.z_dim": 12, "seed": 3}), str(tmp_path))
  message = str(info.value)
  assert "model.z_dim 16 -> 12" in message and "--config.model.z_dim=16" in message and "seed" not in message
  assert steps_in(tmp_path) == [1, 2, 3]  # nothing written, nothing removed
  assert not (tmp_path / LOCK_NAME).exists()  # the refused run released its lock


class _SigtermProbe:
  """An evaluator that counts samples and, in the first run only, sends this process SIGTERM while it records
  the second chunk (the way a scheduler preempts a long in-training evaluation)."""
  fire = True

  def __init__(self, ctx):
    self.count, self.calls = 0, 0

  def record(self, samples):
    self.calls += 1
    if self.calls == 2 and _SigtermProbe.fire:
      _SigtermProbe.fire = False
      os.kill(os.getpid(), signal.SIGTERM)
    return {"n": np.asarray([len(samples["images"])])}

  def absorb(self, record):
    self.count += int(record["n"][0])

  def finish(self):
    return {"probe_count": self.count}, {}


def test_sigterm_during_in_training_eval_saves_and_the_rerun_finishes_that_eval(tmp_path, capsys):
  evaluators.register_evaluator(evaluators.Evaluator(name="sigterm_probe", media=(), start=_SigtermProbe))
  try:
    config = tiny_config(num_train_steps=2, **{"eval.every_steps": 2, "eval.metrics": ("sigterm_probe",),
                                               "eval.num_samples": 32, "eval.batch_size": 8})
    trainer.train_and_evaluate(config, str(tmp_path))
    out = capsys.readouterr().out
    assert "SIGTERM: evaluation stopped after chunk 2/4" in out and "SIGTERM: saved checkpoint at step 2" in out
    assert not (tmp_path / "eval" / "2.json").exists() and steps_in(tmp_path) == [1, 2]
    trainer.train_and_evaluate(config, str(tmp_path))  # all steps trained, but the eval of step 2 is not done
    out = capsys.readouterr().out
    assert "resuming evaluation: 2/4 chunks already done" in out and "Already trained" not in out
    card = json.loads((tmp_path / "eval" / "2.json").read_text())
    assert card["metrics"]["probe_count"] == 32 and card["sampling"]["resumed_chunks"] == 2
    assert steps_in(tmp_path) == [1, 2]
  finally:
    evaluators.unregister_evaluator("sigterm_probe")


def test_sizes_and_counts_are_checked_before_any_jax_work():
  from aigc_jax.configs import check_sizes
  check_sizes(tiny_config(**{"sample_every_steps": 0, "eval.every_steps": 0}))  # 0 = off: allowed
  for key, value, lowest in (("sample.num", -3, 1), ("eval.num_samples", 0, 1), ("model.g_width", 0, 1),
                             ("sample_every_steps", -1, 0), ("data.channels", 0, 1)):
    with pytest.raises(UserError, match=rf"config\.{re.escape(key)} must be >= {lowest}.*, got {value}; set --config"):
      check_sizes(tiny_config(**{key: value}))
  check_sizes(tiny_config(seed=-5))  # seeds are any integer
