"""Bad input through the CLI: non-zero exit, ONE line `error: ...` naming the problem and the fix, and
nothing on disk lost.

Each case is its own CLI run: its own process, argv, environment, stdout/stderr, exit status and interpreter
shutdown. Most of such a run is importing what every run imports (jax, flax, orbax, the package: ~2 CPU-s),
so one parent process imports that (and TensorFlow, which several cases import: ~9 CPU-s each) once and forks
a child per case (a few at a time), which then runs the CLI exactly as `python -m aigc_jax.main <argv>` does.
Nothing starts a JAX backend or runs a TensorFlow op before the fork, so the children inherit no XLA threads,
and each child reads its own XLA_FLAGS (the device count) when its backend starts. The imported objects are
frozen out of the garbage collector's reach first: otherwise every child's collections walk (and so copy) the
parent's whole heap (measured: 74 -> 51 CPU-s for this file, TensorFlow's import included)."""
import json
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.model.g_width=8", "--config.model.d_width=8", "--config.model.z_dim=16",
        "--config.data.image_size=8", "--config.batch_size=8", "--config.sample_every_steps=0"]
SENTINEL = "notes that must survive\n"
# TensorFlow's C++ logging prints these before any of our code runs; they are not our message.
TF_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IWE]\d{4} \d\d:\d\d:\d\d)")
MAX_PARALLEL = 4

# The parent: the imports, then one forked child per case (argv[1]: the cases as JSON; argv[2]: where to write
# each case's exit status). A child leaves through main.run()'s SystemExit like any CLI run.
FORKING_CLI = r"""
import json, os, sys

from aigc_jax import main  # absl flags and ml_collections: imported by every run before it reads its flags
import aigc_jax.encoding, aigc_jax.evaluation.runner, aigc_jax.families.gan, aigc_jax.trainer  # ... and then
# TensorFlow (~9 CPU-s): the event writer (clu) imports it, and the TFDS lookups of the data cases import it
# with tensorflow_datasets. Imports only: no TensorFlow op runs, so its thread pools start in the children.
import clu.metric_writers, tensorflow_datasets
import gc
gc.freeze()  # the collector leaves the imported objects alone in every child (and their pages shared)

with open(sys.argv[1]) as f:
  todo, max_parallel = json.load(f)
running, codes = {}, {}
while todo or running:
  if todo and len(running) < max_parallel:
    case = todo.pop(0)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the case's environment over this one (same keys), keeping what the imports set by default
      os.environ.update(case["env"])
      for fd, path in ((1, case["out"]), (2, case["err"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
      sys.argv = ["aigc_jax.main", *case["argv"]]
      main.run()
      sys.exit(0)
    running[pid] = case["name"]
  else:
    pid, status = os.wait()
    codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
with open(sys.argv[2], "w") as f:
  json.dump(codes, f)
"""


def env(devices=1):
  e = dict(os.environ, JAX_PLATFORMS="cpu")
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", e.get("XLA_FLAGS", "")).strip()
  e["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  return e


def workdir_with_notes(tmp, name):
  d = tmp / name
  d.mkdir()
  (d / "notes.txt").write_text(SENTINEL)
  return d


def workdir_with_checkpoint(tmp, name):
  """A workdir holding step 1 of the TINY dcgan:cpu run (written in-process: no training subprocess)."""
  import jax
  from aigc_jax import data as data_lib
  from aigc_jax.checkpointing import Checkpointer
  from aigc_jax.configs import load_experiment
  from aigc_jax.families import get_family
  d = workdir_with_notes(tmp, name)
  config = load_experiment(os.path.join(ROOT, "experiments", "dcgan.py"), "cpu")
  for arg in TINY:  # every TINY value is an int
    key, value = arg[len("--config."):].split("=")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = int(value)
  state = jax.jit(get_family(config).init)(jax.random.key(0), data_lib.example_batch(config))
  ckpt = Checkpointer(str(d))
  ckpt.save(1, state, {"batches_consumed": 1}, config.to_dict(), force=True)
  ckpt.wait()
  ckpt.close()
  return d


def workdir_locked_by(tmp, name, pid):
  """A workdir whose run lock names a live process on this host (written as a running trainer writes it)."""
  import json
  import socket
  d = workdir_with_notes(tmp, name)
  (d / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "start_time": time.time(),
                                          "started": "just now", "token": "held-by-the-test"}))
  return d


def workdir_with_corrupt_checkpoint(tmp, name):
  """workdir_with_checkpoint whose only step has every array file truncated to 10 bytes."""
  d = workdir_with_checkpoint(tmp, name)
  for root, _, files in os.walk(d / "checkpoints" / "1" / "state"):
    if os.path.basename(root) == "d":
      for f in files:
        os.truncate(os.path.join(root, f), 10)
  return d


def cases(tmp):
  """name -> (argv, env); built with their files on disk."""
  a_file = tmp / "a_file"
  a_file.write_text(SENTINEL)
  cfg = "--config=experiments/dcgan.py:cpu"
  wd = lambda name: f"--workdir={workdir_with_notes(tmp, name)}"
  return {
      "unknown_key": ([cfg, wd("unknown_key"), "--config.optimizer.lrr=1"], env()),
      "wrong_type": ([cfg, wd("wrong_type"), "--config.batch_size=abc"], env()),
      "unknown_dataset": ([cfg, wd("unknown_dataset"), "--config.data.name=no_such_dataset"], env()),
      "tfds_offline": (["--config=experiments/dcgan.py:mnist", wd("tfds_offline"),
                        f"--config.data.data_dir={tmp / 'empty_tfds'}"], env()),
      "sample_no_checkpoint": ([cfg, wd("sample_no_checkpoint"), "--mode=sample"], env()),
      # A checkpoint of g_width 8 sampled with g_width 16: the saved and expected shapes, in one line.
      "checkpoint_other_width": ([cfg, f"--workdir={workdir_with_checkpoint(tmp, 'checkpoint_other_width')}",
                                  "--mode=sample", *[a for a in TINY if "g_width" not in a],
                                  "--config.model.g_width=16"], env()),
      # Resuming training with a wider generator: the changed key, the value to set back, a fresh workdir.
      "resume_other_width": ([cfg, f"--workdir={workdir_with_checkpoint(tmp, 'resume_other_width')}",
                              *[a for a in TINY if "g_width" not in a], "--config.model.g_width=16",
                              "--config.optimizer.learning_rate=0.001"], env()),
      "corrupt_only_checkpoint": ([cfg, f"--workdir={workdir_with_corrupt_checkpoint(tmp, 'corrupt_only_checkpoint')}",
                                   "--mode=eval", *TINY], env()),
      "workdir_locked": ([cfg, f"--workdir={workdir_locked_by(tmp, 'workdir_locked', os.getpid())}", *TINY], env()),
      "batch_size_zero": ([cfg, wd("batch_size_zero"), *TINY, "--config.batch_size=0"], env()),
      "image_size_zero": ([cfg, wd("image_size_zero"), *TINY, "--config.data.image_size=0"], env()),
      "dcgan_image_size_30": ([cfg, wd("dcgan_image_size_30"), *TINY, "--config.data.image_size=30"], env()),
      "workdir_is_file": ([cfg, f"--workdir={a_file}"], env()),
      "batch_not_divisible": ([cfg, wd("batch_not_divisible"), *TINY, "--config.batch_size=12",
                              "--config.num_devices=8"], env(devices=8)),
      # --mode=eval of a checkpoint: the inception backbone without its weights file, and a reference split the
      # data has not got (both found as the evaluators start, before any sampling; the split after the classifier
      # backbone is built: one training step).
      "eval_missing_inception_weights": ([cfg, f"--workdir={workdir_with_checkpoint(tmp, 'eval_missing_inception_weights')}",
                                          "--mode=eval", *TINY, "--config.eval.backbone=inception",
                                          f"--config.eval.inception_path={tmp / 'pt_inception.pth'}"], env()),
      "eval_bad_reference_split": ([cfg, f"--workdir={workdir_with_checkpoint(tmp, 'eval_bad_reference_split')}",
                                    "--mode=eval", *TINY, "--config.eval.classifier_steps=1",
                                    "--config.eval.reference_split=validation"], env()),
      # eval.keep_best with no evaluation during training; load_checkpoint=best of a run that has no eval cards.
      "keep_best_without_eval": ([cfg, wd("keep_best_without_eval"), *TINY, "--config.eval.keep_best=fid"], env()),
      "sample_best_without_cards": ([cfg, f"--workdir={workdir_with_checkpoint(tmp, 'sample_best_without_cards')}",
                                     "--mode=sample", *TINY, "--config.load_checkpoint=best",
                                     "--config.eval.keep_best=fid"], env()),
      # Adam moves every generator weight by ~1e30 in step 1 (still finite, so checkpoint 1 is good); step 2's
      # batch-norm statistics overflow to NaN.
      "nan_loss": ([cfg, wd("nan_loss"), *TINY, "--config.optimizer.g_learning_rate=1e30",
                    "--config.num_train_steps=20", "--config.checkpoint_every_steps=1",
                    "--config.log_every_steps=1"], env()),
  }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("cli")
  todo = [{"name": name, "argv": argv, "env": e, "out": str(tmp / f"{name}.out"), "err": str(tmp / f"{name}.err")}
          for name, (argv, e) in cases(tmp).items()]
  (tmp / "cases.json").write_text(json.dumps([todo, MAX_PARALLEL]))
  parent = subprocess.run([sys.executable, "-c", FORKING_CLI, str(tmp / "cases.json"), str(tmp / "codes.json")],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
  assert parent.returncode == 0, parent.stdout + parent.stderr
  codes = json.loads((tmp / "codes.json").read_text())
  assert sorted(codes) == sorted(case["name"] for case in todo)
  done = {name: (rc, (tmp / f"{name}.out").read_text(), (tmp / f"{name}.err").read_text())
          for name, rc in codes.items()}
  return tmp, done


def the_error_line(result):
  """Asserts a non-zero exit and exactly one line of our own on stderr; returns it."""
  rc, stdout, stderr = result
  assert rc != 0, stdout + stderr
  ours = [line for line in stderr.splitlines() if line.strip() and not TF_NOISE.match(line)]
  assert len(ours) == 1, stderr
  assert ours[0].startswith("error: ") and "Traceback" not in stderr
  return ours[0]


def assert_notes_kept(tmp, name):
  assert (tmp / name / "notes.txt").read_text() == SENTINEL
  ckpt = tmp / name / "checkpoints"
  assert not ckpt.exists() or not [n for n in os.listdir(ckpt) if n.isdigit()]


def test_unknown_config_key(results):
  tmp, done = results
  line = the_error_line(done["unknown_key"])
  assert "unknown config key 'optimizer.lrr'" in line and "learning_rate" in line  # names the fix
  assert done["unknown_key"][0] == 2
  assert_notes_kept(tmp, "unknown_key")


def test_wrong_value_type(results):
  tmp, done = results
  line = the_error_line(done["wrong_type"])
  assert "--config.batch_size=abc" in line and "expects type int" in line
  assert_notes_kept(tmp, "wrong_type")


def test_unknown_dataset(results):
  tmp, done = results
  line = the_error_line(done["unknown_dataset"])
  assert "unknown dataset 'no_such_dataset'" in line and "digits" in line and "--config.data.name" in line
  assert_notes_kept(tmp, "unknown_dataset")


def test_tfds_dataset_offline_suggests_offline_preset_or_data_dir(results):
  tmp, done = results
  line = the_error_line(done["tfds_offline"])
  assert "mnist" in line and ":cpu" in line and "data_dir" in line
  assert_notes_kept(tmp, "tfds_offline")


def test_sample_without_checkpoint(results):
  tmp, done = results
  line = the_error_line(done["sample_no_checkpoint"])
  assert "no checkpoint" in line and "--mode=train" in line
  assert_notes_kept(tmp, "sample_no_checkpoint")
  assert not (tmp / "sample_no_checkpoint" / "samples").exists()


def test_checkpoint_of_another_config_names_the_changed_keys(results):
  tmp, done = results
  line = the_error_line(done["checkpoint_other_width"])
  assert "config changed since checkpoint" in line and "model.g_width 8 -> 16" in line
  assert "--config.model.g_width=8" in line and "fresh --workdir" in line
  assert (tmp / "checkpoint_other_width" / "notes.txt").read_text() == SENTINEL
  assert os.listdir(tmp / "checkpoint_other_width" / "checkpoints" / "1")  # nothing deleted
  assert not (tmp / "checkpoint_other_width" / "samples").exists()


def test_workdir_is_a_file(results):
  tmp, done = results
  line = the_error_line(done["workdir_is_file"])
  assert "is a file" in line and "directory" in line
  assert (tmp / "a_file").read_text() == SENTINEL


def test_batch_not_divisible_by_devices(results):
  tmp, done = results
  line = the_error_line(done["batch_not_divisible"])
  assert "batch_size 12" in line and "8 devices" in line and "multiple of 8" in line
  assert_notes_kept(tmp, "batch_not_divisible")


def test_nan_loss_stops_and_names_last_good_checkpoint(results):
  tmp, done = results
  line = the_error_line(done["nan_loss"])
  ckpt_dir = tmp / "nan_loss" / "checkpoints"
  steps = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())
  assert "non-finite" in line and "learning rate" in line
  assert steps and steps[-1] < 20, "training should stop at the first non-finite step"
  assert f"last good checkpoint: {ckpt_dir / str(steps[-1])}" in line
  assert (tmp / "nan_loss" / "notes.txt").read_text() == SENTINEL
  assert not re.search(rf"^step {steps[-1] + 1}/", done["nan_loss"][1], re.M)  # the bad step was not logged


def test_resume_with_a_shape_changing_key_names_it_and_both_remedies(results):
  tmp, done = results
  line = the_error_line(done["resume_other_width"])
  assert "config changed since checkpoint" in line and "alters the shapes" in line
  assert "model.g_width 8 -> 16" in line and "--config.model.g_width=8" in line and "fresh --workdir" in line
  assert "learning_rate" not in line  # changed too, but it does not change any shape
  assert (tmp / "resume_other_width" / "notes.txt").read_text() == SENTINEL
  assert sorted(os.listdir(tmp / "resume_other_width" / "checkpoints")) == ["1"]
  assert not [n for n in os.listdir(tmp / "resume_other_width") if n.startswith("events.")]


def test_unreadable_only_checkpoint_is_moved_aside_and_one_line_without_traceback_noise(results):
  tmp, done = results
  line = the_error_line(done["corrupt_only_checkpoint"])  # also: no "Exception ignored", no asyncio dump
  rc, stdout, stderr = done["corrupt_only_checkpoint"]
  assert "Exception ignored" not in stderr + stdout and "Future exception" not in stderr + stdout
  assert "no checkpoint" in line and "can be read" in line and "checkpoints_corrupt/1" in line
  assert "moved it to" in stdout  # the warning for the step it moved
  kept = tmp / "corrupt_only_checkpoint" / "checkpoints_corrupt" / "1"
  assert (kept / "state").is_dir() and not (tmp / "corrupt_only_checkpoint" / "checkpoints" / "1").exists()


def test_second_run_in_a_locked_workdir_is_refused(results):
  tmp, done = results
  line = the_error_line(done["workdir_locked"])
  assert f"pid {os.getpid()} on host" in line and "another run is training" in line and "--workdir" in line
  assert "held-by-the-test" in (tmp / "workdir_locked" / "run.lock").read_text()  # the holder's lock untouched
  assert_notes_kept(tmp, "workdir_locked")


@pytest.mark.parametrize("name,key", [("eval_missing_inception_weights", "eval.inception_path"),
                                      ("eval_bad_reference_split", "eval.reference_split")])
def test_eval_config_errors_name_the_key(results, name, key):
  tmp, done = results
  line = the_error_line(done[name])
  assert done[name][0] == 2 and key in line
  assert (tmp / name / "notes.txt").read_text() == SENTINEL
  assert not (tmp / name / "eval").exists() or not [f for f in os.listdir(tmp / name / "eval") if f.endswith(".json")]


@pytest.mark.parametrize("name,key", [("batch_size_zero", "batch_size"), ("image_size_zero", "data.image_size")])
def test_sizes_and_counts_below_one_name_the_key(results, name, key):
  tmp, done = results
  line = the_error_line(done[name])
  assert f"config.{key} must be >= 1" in line and f"--config.{key}" in line
  assert_notes_kept(tmp, name)


def test_dcgan_image_size_it_cannot_build(results):
  tmp, done = results
  line = the_error_line(done["dcgan_image_size_30"])
  assert "got 30" in line and "--config.data.image_size" in line
  assert_notes_kept(tmp, "dcgan_image_size_30")


@pytest.mark.parametrize("name,words", [("keep_best_without_eval", ["eval.keep_best=fid", "--config.eval.every_steps"]),
                                        ("sample_best_without_cards", ["load_checkpoint=best", "'fid'",
                                                                       "--config.load_checkpoint=latest"])])
def test_best_checkpoint_settings_that_cannot_work(results, name, words):
  tmp, done = results
  line = the_error_line(done[name])
  assert done[name][0] == 2 and all(w in line for w in words), line
  assert (tmp / name / "notes.txt").read_text() == SENTINEL
  assert not (tmp / name / "samples").exists()
