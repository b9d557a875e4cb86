"""Two processes on localhost, started as README's "Multi-host" section starts a hand-rolled cluster
(JAX_COORDINATOR_ADDRESS=localhost:<free port>, JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=0/1; one CPU device each,
gloo collectives between them), against one process with two forced CPU devices (the same global batch and
device count):

- a run trained by 2 processes, SIGKILLed (both), resumed by 1 process (2 devices), SIGKILLed, resumed by 2
  processes to the end: every checkpoint it wrote is bit-identical to the
  uninterrupted 1-process run's checkpoint of the same step, and so are the samples it writes while training;
- --mode=sample and --mode=eval from 2 processes exit 0, and only process 0 writes samples/, eval/ and event
  files (every file a process opens for writing is recorded by an audit hook);
- each process's iterator yields rows p*B/n..(p+1)*B/n-1 of every global batch.

Compared bit for bit, not with allclose: each device runs the same per-device program on the same rows with
the same keys (parallel.example_keys folds in the global example index), and the only arithmetic across devices
is the pmean of two values, (a + b) / 2, which is the same in either order and whether gloo (between processes)
or XLA's in-process all-reduce does it. So any difference is a bug (a wrong row slice, key or restore), not
rounding.

Speed (process start-up and compilation are the cost): every run shares one module fixture; the preset is
experiments/dcgan.py:cpu at tiny widths on 64 random 8x8 images in an .npz (no scikit-learn import per
process); the processes run without TensorFlow (only the clu event writer would import it; the TensorFlow-free
writer is gated on the process index the same way), are forked from one server that imported the package once
(12 processes: 107 -> 76 CPU-s for this file, with 50 steps instead of 100) and share a persistent compilation
cache (JAX writes it from process 0 only, to spare shared filesystems concurrent writers; the server lets
process 1 write its own entries too, so a later job's process 1 loads its programs instead of compiling them:
~6 CPU-s a job); eval is the Parzen log-likelihood (no classifier to train; the eval caches' writers are
checked in-process, last test).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import threading
import types

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax import media, parallel, runtime
from aigc_jax.checkpointing import Checkpointer
from aigc_jax.configs import load_experiment
from aigc_jax.data import pipeline, text
from aigc_jax.data.images import ImageSet
from aigc_jax.evaluation import reference as reference_lib
from aigc_jax.families import get_family

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Checkpoints at 10, 20, ..., 50: each killed stage stops after its first new one, with 30+ steps to spare.
NUM_STEPS, EVERY, SAMPLE_EVERY = 50, 10, 25
TINY = {"model.g_width": 8, "model.d_width": 8, "model.z_dim": 16, "data.image_size": 8, "data.name": "npz",
        "batch_size": 8, "sample_every_steps": SAMPLE_EVERY, "keep_checkpoints": 100, "num_train_steps": NUM_STEPS,
        "checkpoint_every_steps": EVERY, "log_every_steps": EVERY, "sample.num": 8,
        "eval.metrics": ("parzen",), "eval.num_samples": 16, "eval.batch_size": 8}
# Stages of the interrupted run: processes, then whether it is SIGKILLed after its first new checkpoint.
STAGES = (("2 processes", 2, True), ("1 process", 1, True),
          ("2 processes to the end", 2, False))
TIMEOUT = 240

# One server process imports what every CLI run imports (jax, flax, orbax, the package: most of a short run's
# CPU time) once, with TensorFlow hidden, and forks one child per process of every job; nothing starts a JAX
# backend before the fork, so each child starts its own from its own environment (XLA_FLAGS, JAX_PROCESS_ID, ...),
# joins its cluster and runs the CLI exactly as `python -m aigc_jax.main <argv>` runs it, to its own exit status.
# Before that, the child records every file it opens for writing (or renames into place) under the test's
# directory. The server lets process 1 write the compilation cache too (only where this JAX's private writer has
# the signature known here; elsewhere process 1 just compiles for itself). Protocol: one JSON line per process
# to start on stdin; "started <id> <pid>" and "exit <pid> <status>" lines on stdout.
SERVER = r"""
import importlib.machinery, inspect, json, os, select, sys, threading, time

class _NoTensorFlow(importlib.machinery.PathFinder):
  @classmethod
  def find_spec(cls, name, path=None, target=None):
    return None if name.split(".")[0] == "tensorflow" else super().find_spec(name, path, target)
sys.meta_path[:] = [_NoTensorFlow if f is importlib.machinery.PathFinder else f for f in sys.meta_path]

from aigc_jax import main  # absl flags and ml_collections: imported by every run before it reads its flags
import aigc_jax.encoding, aigc_jax.evaluation.runner, aigc_jax.families.gan, aigc_jax.trainer  # ... and then

from jax._src import compilation_cache as _cache, compiler as _compiler, distributed as _distributed
_write = getattr(_compiler, "_cache_write", None)
if _write and hasattr(_cache, "put_executable_and_time") and list(inspect.signature(_write).parameters) == [
    "cache_key", "compile_time_secs", "module_name", "backend", "executable", "host_callbacks"]:
  def _cache_write(cache_key, compile_time_secs, module_name, backend, executable, host_callbacks):
    if _distributed.global_state.process_id and not host_callbacks:
      _cache.put_executable_and_time(cache_key, module_name, executable, backend, int(compile_time_secs))
    else:
      _write(cache_key, compile_time_secs, module_name, backend, executable, host_callbacks)
  _compiler._cache_write = _cache_write
import gc
gc.freeze()  # the collector leaves the imported objects alone in every child (and their pages shared)

_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _run_cli(job):
  os.environ.clear()
  os.environ.update(job["env"])
  fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  os.close(fd)
  root, log, lock = job["audit_root"], open(job["audit_log"], "a", buffering=1), threading.Lock()

  def audit(event, args):
    if event == "open":
      path, mode, flags = args
      writing = bool(flags & _WRITING) if mode is None else any(c in mode for c in "wax+")
    elif event == "os.rename":  # os.rename and os.replace
      path, writing = args[1], True
    else:
      return
    if writing and isinstance(path, (str, bytes, os.PathLike)):
      path = os.path.abspath(os.fsdecode(path))
      if path.startswith(root):
        with lock:
          log.write(path + "\n")
  sys.addaudithook(audit)
  sys.argv = ["aigc_jax.main", *job["argv"]]
  main.run()
  sys.exit(0)


pending, children, closed = b"", set(), False
while not closed or children:
  if not closed and select.select([0], [], [], 0.02)[0]:
    data = os.read(0, 1 << 16)
    closed, pending = not data, pending + data
    while b"\n" in pending:
      line, pending = pending.split(b"\n", 1)
      job = json.loads(line)
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        _run_cli(job)  # leaves through main.run()'s SystemExit, as a CLI run does
      children.add(pid)
      print("started", job["id"], pid, flush=True)
  elif closed:
    time.sleep(0.02)
  while children:
    pid, status = os.waitpid(-1, os.WNOHANG)
    if not pid:
      break
    children.discard(pid)
    print("exit", pid, os.waitstatus_to_exitcode(status), flush=True)
"""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


class Server:
  """The forking server: start(job) -> a Popen-like handle (poll, send_signal, wait) of the forked process."""

  def __init__(self, tmp):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    self.errors = open(tmp / "server.log", "w")
    self.proc = subprocess.Popen([sys.executable, "-c", SERVER], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=self.errors, text=True, bufsize=1)
    self.started, self.codes, self.changed, self.next_id = {}, {}, threading.Condition(), 0
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      word, *rest = line.split()
      with self.changed:
        if word == "started":
          self.started[int(rest[0])] = int(rest[1])
        elif word == "exit":
          self.codes[int(rest[0])] = int(rest[1])
        self.changed.notify_all()
    with self.changed:  # the server is gone: nothing more will start or exit
      self.codes.setdefault(None, self.proc.wait())
      self.changed.notify_all()

  def _until(self, ready, timeout):
    with self.changed:
      if not self.changed.wait_for(lambda: ready() or None in self.codes, timeout):
        raise subprocess.TimeoutExpired("forked CLI", timeout)
      assert ready(), f"the server exited: {(self.errors.flush(), open(self.errors.name).read())[1]}"

  def start(self, **job):
    job_id, self.next_id = self.next_id, self.next_id + 1
    self.proc.stdin.write(json.dumps({"id": job_id, **job}) + "\n")
    self.proc.stdin.flush()
    self._until(lambda: job_id in self.started, 120)
    return Forked(self, self.started[job_id])

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(TIMEOUT)
    self.errors.close()


class Forked:
  def __init__(self, server, pid):
    self.server, self.pid = server, pid

  def poll(self):
    return self.server.codes.get(self.pid)

  def send_signal(self, sig):
    if self.poll() is None:  # not yet reaped, so the pid is still this process's
      os.kill(self.pid, sig)

  def wait(self, timeout):
    self.server._until(lambda: self.pid in self.server.codes, timeout)
    return self.poll()


class Job:
  """One CLI invocation: 1 process with 2 forced CPU devices, or 2 processes with 1 CPU device each."""

  def __init__(self, server, tmp, name, workdir, num_processes, mode="train", **extra):
    overrides = {**TINY, "data.path": data_path(tmp), "eval.metrics": "('parzen',)", **extra}
    self.name, self.workdir, self.procs, self.logs, self.audits = name, str(workdir), [], [], []
    port = free_port()
    for pid in range(num_processes):
      env = {k: v for k, v in os.environ.items()
             if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_", "OMPI_"))}
      flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
      env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
                 # Explicit: the CLI's default is one CPU device per core.
                 XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={1 if num_processes > 1 else 2}",
                 JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
      if num_processes > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(num_processes),
                   JAX_PROCESS_ID=str(pid))
      argv = ["--config=experiments/dcgan.py:cpu", f"--workdir={workdir}", f"--mode={mode}"] + [
          f"--config.{k}={v}" for k, v in overrides.items()]
      self.logs.append(tmp / f"{name}.{pid}.log")
      self.audits.append(tmp / f"{name}.{pid}.writes")
      self.procs.append(server.start(env=env, argv=argv, log=str(self.logs[-1]), audit_root=str(tmp),
                                     audit_log=str(self.audits[-1])))

  def failed(self):
    return any(p.poll() not in (None, 0) for p in self.procs)

  def done(self):
    return all(p.poll() is not None for p in self.procs)

  def kill(self):
    for p in self.procs:
      p.send_signal(signal.SIGKILL)
    return [p.wait(60) for p in self.procs]

  def wait(self, timeout=TIMEOUT):
    """Return codes; a process that fails takes the others down with it (they would wait on it)."""
    deadline = time.time() + timeout
    while not self.done() and not self.failed() and time.time() < deadline:
      time.sleep(0.05)
    return self.kill()

  def log(self, pid=0):
    with open(self.logs[pid]) as f:
      return f.read()

  def tails(self):
    return "\n".join(f"--- {self.name}, process {pid} (last lines) ---\n" + "\n".join(self.log(pid).splitlines()[-25:])
                     for pid in range(len(self.procs)))

  def writes(self, pid):
    """Files process `pid` opened for writing under its workdir, relative to it."""
    with open(self.audits[pid]) as f:
      paths = set(f.read().split())
    return sorted(os.path.relpath(p, self.workdir) for p in paths if p.startswith(self.workdir + os.sep))


def finished_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def wait_for(predicate, job, timeout=TIMEOUT):
  deadline = time.time() + timeout
  while time.time() < deadline and not job.done() and not job.failed():
    if predicate():
      return True
    time.sleep(0.02)
  return predicate()


def data_path(tmp):
  """64 random 8x8 grey images with labels (every split of the npz source reads the same array)."""
  path = os.path.join(tmp, "images.npz")
  if not os.path.exists(path):
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8),
             labels=rng.integers(0, 10, 64).astype(np.int32))
  return path


def tiny_config(tmp):
  return load_experiment(os.path.join(ROOT, "experiments", "dcgan.py"), "cpu", {**TINY, "data.path": data_path(tmp)})


def restore(tmp, workdir, step, devices=1):
  config = tiny_config(tmp)
  mesh = Mesh(np.asarray(jax.devices()[:devices]), (parallel.DATA_AXIS,))
  ckpt = Checkpointer(workdir, create=False)
  try:
    state, data_state, _ = ckpt.restore(step, runtime.abstract_state(get_family(config), config), mesh)
  finally:
    ckpt.close()
  return state, data_state


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multiproc")
  reference, chain, served = tmp / "reference", tmp / "chain", tmp / "served"
  jobs, server = {}, Server(tmp)
  out = {"tmp": tmp, "reference": str(reference), "chain": str(chain), "served": str(served), "jobs": jobs,
         "stages": []}
  try:
    jobs["reference"] = Job(server, tmp, "reference", reference, 1)
    for i, (name, num_processes, killed) in enumerate(STAGES):
      before = finished_steps(str(chain))
      job = jobs[name] = Job(server, tmp, f"stage{i}", chain, num_processes)
      if killed:  # SIGKILL every process once a new checkpoint is committed: mid-run, maybe mid-save
        assert wait_for(lambda: finished_steps(str(chain))[-1:] > before[-1:], job), job.tails()
        rcs = job.kill()
      else:
        rcs = job.wait()
      new = sorted(set(finished_steps(str(chain))) - set(before))
      out["stages"].append({"name": name, "job": job, "rcs": rcs, "before": before, "wrote": new,
                            "killed": killed})
      if i == 0:  # sample and eval from 2 processes, on a copy of the run as 2 processes left it
        shutil.copytree(chain, served)
        jobs["sample"] = Job(server, tmp, "sample", served, 2, mode="sample")
        jobs["eval"] = Job(server, tmp, "eval", served, 2, mode="eval")
    # SIGTERM to process 1 only (a scheduler's signals need not reach every host at once): both must stop
    # at the same step, save it and exit 0, not leave process 0 waiting in the next step's all-reduce.
    termed = jobs["termed"] = Job(server, tmp, "termed", tmp / "termed", 2, num_train_steps=10 ** 6,
                                  checkpoint_every_steps=10 ** 6, log_every_steps=5, sample_every_steps=0)
    assert wait_for(lambda: re.search(r"^step 10/", termed.log(0), re.M), termed), termed.tails()
    termed.procs[1].send_signal(signal.SIGTERM)
    out["termed"] = str(tmp / "termed")
    for name in ("reference", "sample", "eval", "termed"):
      out[f"{name}_rcs"] = jobs[name].wait()
  finally:
    for job in jobs.values():
      job.kill()
    server.close()
  return out


def test_sigkill_both_and_resume_on_any_process_count_is_bit_identical_to_one_process(runs):
  """2 -> (SIGKILL) -> 1 -> (SIGKILL) -> 2 processes: every checkpoint of that run equals the
  uninterrupted 1-process (2-device) run's checkpoint of the same step, bit for bit, whoever wrote it and
  whatever process count wrote the checkpoint it resumed from."""
  assert runs["reference_rcs"] == [0], runs["jobs"]["reference"].tails()
  assert finished_steps(runs["reference"])[-1] == NUM_STEPS
  written_by = {}
  for i, stage in enumerate(runs["stages"]):
    job, tails = stage["job"], stage["job"].tails()
    if stage["killed"]:
      assert stage["wrote"] and max(stage["wrote"]) < NUM_STEPS, f"the kill landed after training\n{tails}"
      assert stage["rcs"] == [-signal.SIGKILL] * len(job.procs), tails
    else:
      assert stage["rcs"] == [0] * len(job.procs), tails
      assert stage["wrote"][-1] == NUM_STEPS, tails
    if i:  # every process of a resumed stage restarts from the latest checkpoint of the stage before it
      for pid in range(len(job.procs)):
        assert f"Resuming from step {stage['before'][-1]} " in job.log(pid), tails
    written_by.update({step: stage["name"] for step in stage["wrote"]})
  assert sorted(written_by) == finished_steps(runs["chain"])
  for step, writer in sorted(written_by.items()):
    expected, expected_data = restore(runs["tmp"], runs["reference"], step)
    got, got_data = restore(runs["tmp"], runs["chain"], step)
    assert got_data == expected_data == {"batches_consumed": step}
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(jax.device_get(got)),
                            jax.tree.leaves(jax.device_get(expected))):
      np.testing.assert_array_equal(a, b, err_msg=f"step {step} (written by {writer}): {jax.tree_util.keystr(path)}")


def test_sigterm_to_one_process_stops_both_at_the_same_step(runs):
  job = runs["jobs"]["termed"]
  assert runs["termed_rcs"] == [0, 0], job.tails()
  saved = [re.search(r"SIGTERM: saved checkpoint at step (\d+)", job.log(pid)) for pid in (0, 1)]
  assert saved[0] and saved[1] and saved[0].group(1) == saved[1].group(1), job.tails()
  assert finished_steps(runs["termed"]) == [int(saved[0].group(1))]


def test_sample_and_eval_from_two_processes_with_one_writer(runs):
  """Both processes exit 0; process 0 writes samples/, eval/<step>.json and the event files, process 1
  writes nothing outside checkpoints/ (in training, sampling or evaluation); the samples are the 1-process ones."""
  jobs, served = runs["jobs"], runs["served"]
  for name in ("sample", "eval"):
    assert runs[f"{name}_rcs"] == [0, 0], jobs[name].tails()
  step = finished_steps(served)[-1]
  sample_writes, eval_writes = jobs["sample"].writes(0), jobs["eval"].writes(0)
  assert {f"samples/{step}.png", f"samples/{step}.npz"} <= set(sample_writes), sample_writes
  assert f"eval/{step}.json" in eval_writes and any(p.startswith("events.out.tfevents") for p in eval_writes)
  assert {f"{step}.npz", f"{step}.png"} <= set(os.listdir(os.path.join(served, "samples")))
  assert sorted(os.listdir(os.path.join(served, "eval"))) == [f"{step}.json"]
  for stage in runs["stages"]:
    if len(stage["job"].procs) > 1:
      assert any(p.startswith("events.out.tfevents") for p in stage["job"].writes(0)), stage["name"]
  for job in [s["job"] for s in runs["stages"]] + [jobs["sample"], jobs["eval"]]:
    if len(job.procs) > 1:
      outside = [p for p in job.writes(1) if not p.startswith("checkpoints" + os.sep)]  # orbax: each its part
      assert not outside, f"{job.name}: process 1 wrote {outside}"
  # Only process 0 of each train stage and of eval wrote an event file.
  events = [f for f in os.listdir(runs["chain"]) if f.startswith("events.out.tfevents")]
  assert len(events) == len(runs["stages"]), events
  # Samples written while training (every sample_every_steps, by the last stage's process 0) are the 1-process
  # run's.
  written = sorted(os.listdir(os.path.join(runs["chain"], "samples")))
  middle, last = SAMPLE_EVERY, NUM_STEPS
  assert written == sorted(os.listdir(os.path.join(runs["reference"], "samples"))) == sorted(
      [f"{middle}.npz", f"{middle}.png", f"{last}.npz", f"{last}.png"])
  assert {f"samples/{middle}.png", f"samples/{last}.npz"} <= set(runs["stages"][-1]["job"].writes(0))
  for name in (f"{middle}.npz", f"{last}.npz"):
    with np.load(os.path.join(runs["chain"], "samples", name)) as got, \
         np.load(os.path.join(runs["reference"], "samples", name)) as expected:
      np.testing.assert_array_equal(got["images"], expected["images"], err_msg=name)

  with open(os.path.join(served, "eval", f"{step}.json")) as f:
    card = json.load(f)
  assert card["step"] == step and card["num_generated"] == 16 and card["devices"] == "2 x cpu"
  assert np.isfinite(card["metrics"]["parzen_ll"]), card["metrics"]
  assert re.search(rf"eval step {step}: parzen\S* \S+ .*-> ", jobs["eval"].log(0)), jobs["eval"].tails()

  # The samples equal those of one process with two devices from the same checkpoint.
  config = tiny_config(runs["tmp"])
  mesh = Mesh(np.asarray(jax.devices()[:2]), (parallel.DATA_AXIS,))
  state, _ = restore(runs["tmp"], served, step, devices=2)
  samples = runtime.make_sampler(get_family(config), mesh)(state, jax.random.key(config.sample.seed),
                                                           config.sample.num)
  expected = {}
  for medium in media.media_in(samples):
    expected.update(medium.npz_arrays(samples))
  with np.load(os.path.join(served, "samples", f"{step}.npz")) as npz:
    assert sorted(npz.keys()) == sorted(expected)
    for key, value in expected.items():
      np.testing.assert_array_equal(npz[key], value, err_msg=key)


def _two_hosts_and_one(make, num_batches):
  """[(host 0 batch, host 1 batch, 1-host batch)] for the first `num_batches` global batches."""
  one, hosts = make(0, 1), [make(p, 2) for p in range(2)]
  return [(hosts[0].batch_at(b), hosts[1].batch_at(b), one.batch_at(b)) for b in range(num_batches)]


def _check_slices(triples, global_batch):
  half = global_batch // 2
  for b, (h0, h1, whole) in enumerate(triples):
    for key, value in whole.items():
      assert len(value) == global_batch and len(h0[key]) == len(h1[key]) == half
      np.testing.assert_array_equal(h0[key], value[:half], err_msg=f"batch {b} {key}: process 0")
      np.testing.assert_array_equal(h1[key], value[half:], err_msg=f"batch {b} {key}: process 1")
      np.testing.assert_array_equal(np.concatenate([h0[key], h1[key]]), value)


def test_each_process_reads_its_own_rows_of_every_global_batch(monkeypatch, tmp_path):
  """Process p of n gets rows p*B/n..(p+1)*B/n-1 of global batch b (images with random flips across
  epoch boundaries, text windows), and the iterator factories pass jax.process_index/process_count through."""
  rng = np.random.default_rng(0)
  image_set = ImageSet(rng.integers(0, 256, (13, 4, 4, 1), dtype=np.uint8), rng.integers(0, 3, 13).astype(np.int32), 3)
  make = lambda p, n: pipeline.BatchIterator(image_set, 8, seed=3, random_flip=True, process_index=p,
                                             process_count=n, prefetch=0)
  _check_slices(_two_hosts_and_one(make, 5), 8)  # 40 positions over 13 images: four epochs
  # The prefetching iterator yields the same as batch_at, from any start.
  resumed = pipeline.BatchIterator(image_set, 8, seed=3, random_flip=True, process_index=1, process_count=2,
                                   start_batch=3)
  try:
    for b in (3, 4):
      np.testing.assert_array_equal(next(resumed)["image"], make(1, 2).batch_at(b)["image"])
  finally:
    resumed.close()

  tokens = rng.integers(0, 50, 300).astype(np.int32)
  make_text = lambda p, n: text.TextBatchIterator(tokens, 16, 8, seed=3, process_index=p, process_count=n)
  _check_slices(_two_hosts_and_one(make_text, 3), 8)

  # Through the factories the trainer uses, with the process index and count jax reports.
  config = tiny_config(tmp_path)
  text_config = ConfigDict({"model": {"block_size": 16}, "batch_size": 8, "seed": 3})
  factories = {
      "images": lambda: data_lib.make_train_iterator(config),
      "text": lambda: text.make_iterator(text_config, tokens),
  }
  for factory in factories.values():
    made = {}
    for p, n in ((0, 1), (0, 2), (1, 2)):
      monkeypatch.setattr(jax, "process_index", lambda p=p: p)
      monkeypatch.setattr(jax, "process_count", lambda n=n: n)
      made[(p, n)] = factory()
    monkeypatch.undo()
    try:
      _check_slices([tuple(made[k].batch_at(b) for k in ((0, 2), (1, 2), (0, 1))) for b in range(3)], 8)
    finally:
      for it in made.values():
        it.close()


def test_processes_writing_one_eval_cache_do_not_clobber_each_other(tmp_path, monkeypatch):
  """Every process of a multi-host eval computes the same reference statistics (and classifier) and installs
  them in the shared cache. With one shared temporary name, a second writer finishing while the first was
  between its write and its rename moved the first one's file away: the first then crashed (FileNotFoundError)
  and its peer hung in the next collective. Here the other process runs entirely inside that window."""
  config = tiny_config(tmp_path)
  backbone = types.SimpleNamespace(name="pixels", info={"feature_dim": 3, "weights_sha256": "none", "resize": "none"})
  extract = lambda x: {"features": np.asarray(x, np.float64).reshape(len(x), -1)[:, :3]}
  replace, others = os.replace, []

  def replace_after_another_writer(src, dst):
    if not others:  # the first rename waits for another process's whole write
      others.append(None)
      others[0] = reference_lib.reference_stats(config, "train", backbone, extract, str(tmp_path), log=id)
    replace(src, dst)

  monkeypatch.setattr(os, "replace", replace_after_another_writer)
  mine = reference_lib.reference_stats(config, "train", backbone, extract, str(tmp_path), log=id)
  monkeypatch.undo()
  again = reference_lib.reference_stats(config, "train", backbone, extract, str(tmp_path), log=id)
  assert not mine["cached"] and not others[0]["cached"] and again["cached"]
  np.testing.assert_array_equal(again["cov"], mine["cov"])
  assert [f for f in os.listdir(tmp_path) if f.startswith("ref-")] == [os.path.basename(mine["cache_path"])]
