"""Checkpoints through the CLI: SIGKILL + restart ends bit-identical to an uninterrupted run; SIGTERM saves
the current step and exits 0; the data position is part of the checkpoint. A checkpoint of another state
layout or config fails to restore with one line naming what differs, and nothing on disk changes.

Speed (process start-up and compilation are the cost): the CLI runs train on 64 random 8x8 images in an .npz
(the bundled digits would import scikit-learn in every process, ~3.5 CPU-s each), and the uninterrupted run
starts first, alone: the others start once it has compiled, and load its train step from the persistent
compilation cache instead of compiling it again."""
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from aigc_jax import data as data_lib
from aigc_jax import parallel, trainer
from aigc_jax.configs import load_experiment
from aigc_jax.checkpointing import Checkpointer
from aigc_jax.errors import UserError
from aigc_jax.families import get_family

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"model.g_width": 8, "model.d_width": 8, "model.z_dim": 16, "data.image_size": 8, "batch_size": 8,
        "sample_every_steps": 0, "keep_checkpoints": 2, "data.name": "npz"}
NUM_STEPS, EVERY = 200, 50  # the kill lands after the first checkpoint (50), with 150 steps to spare


def cli_env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  # One device per subprocess: faster to start, and the run state does not depend on the device count.
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=1".strip()  # not the CLI's one per core
  return env


def data_path(tmp):
  """64 random 8x8 grey images with labels (every split of the npz source reads the same array)."""
  path = os.path.join(tmp, "images.npz")
  if not os.path.exists(path):
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8),
             labels=rng.integers(0, 10, 64).astype(np.int32))
  return path


def start(workdir, log_path, **overrides):
  args = [sys.executable, "-m", "aigc_jax.main", "--config=experiments/dcgan.py:cpu", f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in {**TINY, "data.path": data_path(os.path.dirname(workdir)),
                                             **overrides}.items()]
  log = open(log_path, "w")
  return subprocess.Popen(args, cwd=ROOT, env=cli_env(), stdout=log, stderr=subprocess.STDOUT)


def finished_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def wait_for(predicate, proc, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return predicate()
    time.sleep(0.02)
  return False


def tiny_config(data=""):
  """The runs' config; `data` is their .npz (only reading batches needs it: init and restore do not)."""
  return load_experiment(os.path.join(ROOT, "experiments", "dcgan.py"), "cpu", {**TINY, "data.path": data})


def restore(workdir, step):
  config = tiny_config(data_path(os.path.dirname(workdir)))
  mesh = Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))
  ckpt = Checkpointer(workdir, create=False)
  state, data_state, _ = ckpt.restore(step, trainer.abstract_state(get_family(config), config), mesh)
  ckpt.close()
  return jax.device_get(state), data_state


def read(path):
  with open(path) as f:
    return f.read()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The uninterrupted run first; once it has trained (its compiled steps are in the persistent cache), the
  run to be killed and the run to be SIGTERMed, side by side (most of each run is start-up)."""
  tmp = tmp_path_factory.mktemp("ckpt")
  plain, killed, termed = (str(tmp / n) for n in ("plain", "killed", "termed"))
  common = dict(num_train_steps=NUM_STEPS, checkpoint_every_steps=EVERY, log_every_steps=EVERY)
  procs = {"plain": start(plain, tmp / "plain.log", **common)}
  out = {"dirs": {"plain": plain, "killed": killed, "termed": termed}, "tmp": tmp}
  try:
    assert wait_for(lambda: re.search(rf"^step {EVERY}/", read(tmp / "plain.log"), re.M), procs["plain"]), \
        read(tmp / "plain.log")
    procs["killed"] = start(killed, tmp / "killed.log", **common)
    procs["termed"] = start(termed, tmp / "termed.log", num_train_steps=10 ** 6, checkpoint_every_steps=10 ** 6,
                            log_every_steps=20)
    # SIGKILL as soon as the first checkpoint is committed: mid-training, maybe mid-way through an async save.
    assert wait_for(lambda: finished_steps(killed), procs["killed"]), read(tmp / "killed.log")
    procs["killed"].send_signal(signal.SIGKILL)
    out["killed_rc"] = procs["killed"].wait(60)
    out["steps_at_kill"] = finished_steps(killed)
    procs["killed"] = start(killed, tmp / "resumed.log", **common)
    # SIGTERM once the training loop is running (a step line was printed).
    assert wait_for(lambda: re.search(r"^step 20/", read(tmp / "termed.log"), re.M), procs["termed"]), \
        read(tmp / "termed.log")
    # A second training run on the workdir "termed" is training in: refused at once, naming the first.
    second = start(termed, tmp / "second.log", num_train_steps=10 ** 6)
    out["second_rc"] = second.wait(120)
    out["termed_alive_after_second"] = procs["termed"].poll() is None
    out["termed_pid"] = procs["termed"].pid
    procs["termed"].send_signal(signal.SIGTERM)
    out["termed_rc"] = procs["termed"].wait(120)
    out["plain_rc"] = procs["plain"].wait(300)
    out["resumed_rc"] = procs["killed"].wait(300)
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.kill()
        p.wait()
  return out


def test_sigkill_and_restart_is_bit_identical_to_uninterrupted(runs):
  tmp = runs["tmp"]
  assert runs["killed_rc"] == -signal.SIGKILL
  assert runs["steps_at_kill"] and max(runs["steps_at_kill"]) < NUM_STEPS, "the kill landed after training"
  assert runs["plain_rc"] == 0, read(tmp / "plain.log")
  assert runs["resumed_rc"] == 0, read(tmp / "resumed.log")
  resumed_from = int(re.search(r"Resuming from step (\d+)", read(tmp / "resumed.log")).group(1))
  assert resumed_from in runs["steps_at_kill"] or resumed_from > max(runs["steps_at_kill"])
  assert 0 < resumed_from < NUM_STEPS
  assert "took over a stale run lock (pid" in read(tmp / "resumed.log")  # the killed run's lock: dead pid
  assert not os.path.exists(os.path.join(runs["dirs"]["killed"], "run.lock"))  # released at the end
  assert finished_steps(runs["dirs"]["plain"])[-1] == finished_steps(runs["dirs"]["killed"])[-1] == NUM_STEPS
  plain, plain_data = restore(runs["dirs"]["plain"], NUM_STEPS)
  resumed, resumed_data = restore(runs["dirs"]["killed"], NUM_STEPS)
  assert int(plain["step"]) == NUM_STEPS
  assert plain_data == resumed_data == {"batches_consumed": NUM_STEPS}
  assert jax.tree.structure(plain) == jax.tree.structure(resumed)
  jax.tree.map(np.testing.assert_array_equal, plain, resumed)  # bit-identical: every network, moment, EMA


def test_checkpoint_holds_data_position(runs):
  """The data position in each checkpoint is where the run's iterator stood, so a resume reads on from it."""
  for step in finished_steps(runs["dirs"]["plain"]):
    state, data_state = restore(runs["dirs"]["plain"], step)
    assert int(state["step"]) == step and data_state == {"batches_consumed": step}


def test_sigterm_saves_current_step_and_exits_zero(runs):
  log = read(runs["tmp"] / "termed.log")
  assert runs["termed_rc"] == 0, log
  saved = int(re.search(r"SIGTERM: saved checkpoint at step (\d+)", log).group(1))
  assert saved >= 20
  assert finished_steps(runs["dirs"]["termed"]) == [saved]  # checkpoint_every_steps is 10**6: only this save
  state, data_state = restore(runs["dirs"]["termed"], saved)
  assert int(state["step"]) == saved and data_state == {"batches_consumed": saved}
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["generator"]["params"]))


def test_second_training_run_on_a_running_workdir_is_refused(runs):
  second = read(runs["tmp"] / "second.log")
  assert runs["second_rc"] == 2, second
  assert runs["termed_alive_after_second"]  # the first run was not disturbed
  first_pid = re.search(r"pid (\d+) on host", second)
  assert first_pid and "another run is training in this workdir" in second, second
  assert int(first_pid.group(1)) == runs["termed_pid"]
  assert "step 1/" not in second  # refused before training


def save_state(workdir, state, step=1):
  ckpt = Checkpointer(str(workdir))
  ckpt.save(step, state, {"batches_consumed": step}, {"note": "written by the test"}, force=True)
  ckpt.wait()
  ckpt.close()


def restore_error(workdir, config, step=1):
  """The one-line UserError restoring `step` into `config`'s state; nothing on disk may change."""
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints", str(step))))
  with pytest.raises(UserError) as info:
    restore_into(workdir, config, step)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", str(step)))) == before
  message = str(info.value)
  assert "\n" not in message and "Traceback" not in message
  return message


def restore_into(workdir, config, step):
  mesh = Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))
  ckpt = Checkpointer(str(workdir), create=False)
  try:
    return ckpt.restore(step, trainer.abstract_state(get_family(config), config), mesh)
  finally:
    ckpt.close()


def init_state(config):
  return jax.device_get(jax.jit(get_family(config).init)(jax.random.key(0), data_lib.example_batch(config)))


def test_checkpoint_of_the_old_gan_layout_names_the_changed_keys(tmp_path):
  """A checkpoint written before the GAN state became {generator, discriminator} fails in one line."""
  config = tiny_config()
  new = init_state(config)
  g, d = new["generator"], new["discriminator"]
  old = {"step": new["step"], "g_params": g["params"], "g_stats": g["batch_stats"], "g_opt": g["opt_state"],
         "ema_g_params": g["ema_params"], "d_params": d["params"], "d_stats": d["batch_stats"],
         "d_opt": d["opt_state"]}
  save_state(tmp_path, old)
  message = restore_error(str(tmp_path), config)
  assert "different state layout" in message
  assert "missing from it: [discriminator, generator]" in message
  assert "unexpected in it: [d_opt, d_params, ema_g_params, g_opt, g_params] (+1 more)" in message
  assert "fresh --workdir" in message
  save_state(tmp_path, new, step=2)  # the same folder still restores the current layout
  state, data_state, saved_config = restore_into(str(tmp_path), config, 2)
  assert data_state == {"batches_consumed": 2} and saved_config == {"note": "written by the test"}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), new)


def test_checkpoint_of_another_width_names_the_differing_leaves(tmp_path):
  config = tiny_config()
  save_state(tmp_path, init_state(config))
  config.model.g_width = 16
  message = restore_error(str(tmp_path), config)
  assert "does not fit this run's state" in message and "config differs" in message
  assert re.search(r"generator/params/\S+ saved \([\d, ]+\) float32 vs expected \([\d, ]+\) float32",
                   message), message
  assert "(+" in message and "discriminator" not in message  # only G changed; at most three leaves named
