"""Long evaluations survive preemption: --mode=eval stopped by a real SIGTERM exits 0 with the chunks it made
saved, and the rerun generates only the rest and writes the same card numbers as an uninterrupted evaluation
(exactly: saved records are the float32 arrays the evaluators absorb, in the same order). A corrupt chunk file
is ignored with a warning; another protocol never reuses stale chunks; a consume-only evaluator still works,
without resuming."""
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from aigc_jax import parallel, runtime
from aigc_jax.checkpointing import Checkpointer
from aigc_jax.configs import load_experiment
from aigc_jax.evaluation import partial, registry, runner
from aigc_jax.families import get_family

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 40 samples in 5 chunks of 8 (8 forced host devices here and in the subprocess: the same chunking and numerics).
TINY = {"model.g_width": 8, "model.d_width": 8, "model.z_dim": 16, "data.image_size": 8, "batch_size": 8,
        "sample_every_steps": 0, "log_every_steps": 2, "checkpoint_every_steps": 2, "num_train_steps": 2,
        "eval.classifier_steps": 30, "eval.num_samples": 40, "eval.batch_size": 8, "eval.kid_subsets": 10,
        "eval.metrics": ("fid", "kid", "is", "pr", "parzen"), "eval.parzen_num_validation": 200}
STEP, CHUNKS, STOP_AT_OFFSET = 2, 5, 16  # SIGTERM while chunk 3 (samples 16..23) is made: chunks 1..3 saved

# The CLI, with a sampler that sends this process a real SIGTERM while it makes the chunk at STOP_AT_OFFSET.
SIGTERM_CLI = f"""
import os, signal, sys
from aigc_jax import runtime
make = runtime.make_sampler
def make_sampler(family, mesh):
  sample = make(family, mesh)
  def sampler(state, rng, num, offset=0):
    if offset == {STOP_AT_OFFSET}:
      os.kill(os.getpid(), signal.SIGTERM)
    return sample(state, rng, num, offset=offset)
  return sampler
runtime.make_sampler = make_sampler
from aigc_jax import main
sys.argv = ["aigc_jax.main"] + sys.argv[1:]
main.run()
"""


def tiny_config(**overrides):
  return load_experiment(os.path.join(ROOT, "experiments", "dcgan.py"), "cpu", {**TINY, **overrides})


def partial_dirs(workdir):
  root = os.path.join(workdir, "eval", "partial")
  return sorted(os.listdir(root)) if os.path.isdir(root) else []


def save_checkpoint(config, workdir):
  """A freshly initialised DCGAN saved as the checkpoint of step STEP: what --mode=eval loads, without paying
  for compiling a train step (the evaluation does not care how the weights were made)."""
  mesh = parallel.make_mesh()
  state = runtime.init_state(get_family(config), config, mesh)
  ckpt = Checkpointer(workdir)
  ckpt.save(STEP, state, {"batches_consumed": STEP}, config.to_dict(), force=True)
  ckpt.wait()
  ckpt.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A tiny DCGAN checkpoint; its uninterrupted card; then --mode=eval stopped by SIGTERM during chunk 3."""
  tmp = tmp_path_factory.mktemp("eval_resume")
  workdir = str(tmp / "run")
  config = tiny_config()
  save_checkpoint(config, workdir)
  plain = runner.evaluate(config, workdir)  # also caches the classifier backbone and reference statistics
  assert plain["sampling"]["resumed_chunks"] == 0 and plain["sampling"]["resumable"]
  assert plain["sampling"]["generation_seconds"] > plain["sampling"]["generation_seconds_after_first_chunk"] > 0
  assert partial_dirs(workdir) == []  # removed once the card is written
  card_path = os.path.join(workdir, "eval", f"{STEP}.json")
  os.remove(card_path)

  argv = [sys.executable, "-c", SIGTERM_CLI, "--config=experiments/dcgan.py:cpu", f"--workdir={workdir}",
          "--mode=eval"] + [f"--config.{k}={v}" for k, v in TINY.items()]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  [directory] = [os.path.join(workdir, "eval", "partial", d) for d in partial_dirs(workdir)]
  saved = str(tmp / "saved_partial")
  shutil.copytree(directory, saved)
  return {"config": config, "workdir": workdir, "plain": plain, "proc": proc, "directory": directory,
          "saved": saved, "card_path": card_path}


def fresh_partial(run):
  """The chunks the SIGTERMed run left, whatever an earlier test did to them."""
  shutil.rmtree(os.path.join(run["workdir"], "eval", "partial"), ignore_errors=True)
  shutil.copytree(run["saved"], run["directory"])


@pytest.fixture
def offsets(monkeypatch):
  """The offsets of the chunks the runner generates (not those it absorbs from disk)."""
  calls = []
  make = runtime.make_sampler

  def make_sampler(family, mesh):
    sample = make(family, mesh)
    return lambda state, rng, num, offset=0: calls.append(offset) or sample(state, rng, num, offset=offset)

  monkeypatch.setattr(runtime, "make_sampler", make_sampler)
  return calls


def test_sigterm_stops_after_the_current_chunk_exits_zero_and_writes_no_card(run):
  proc = run["proc"]
  assert proc.returncode == 0, proc.stdout + proc.stderr
  lines = [line for line in proc.stdout.splitlines() if line.startswith("SIGTERM")]
  assert lines == [f"SIGTERM: evaluation stopped after chunk 3/{CHUNKS} (saved in {run['directory']}; rerun the "
                   "same command to resume)"], proc.stdout
  assert "Traceback" not in proc.stderr and "error:" not in proc.stderr
  assert sorted(os.listdir(run["saved"])) == ["chunk_0.npz", "chunk_1.npz", "chunk_2.npz"]
  assert not os.path.exists(run["card_path"])  # no card for a partial evaluation
  with np.load(os.path.join(run["saved"], "chunk_1.npz")) as z:  # the features once, not once per metric
    assert sorted(z.files) == ["_chunk/count", "_chunk/offset", "features/features", "features/logits",
                               "parzen/pixels"]
    assert int(z["_chunk/offset"]) == 8 and z["features/features"].dtype == np.float32


def test_rerun_resumes_and_gives_the_uninterrupted_numbers(run, offsets, capsys):
  fresh_partial(run)
  card = runner.evaluate(run["config"], run["workdir"])
  out = capsys.readouterr().out
  assert f"resuming evaluation: 3/{CHUNKS} chunks already done" in out, out
  assert offsets == [24, 32]  # only chunks 4 and 5 are generated
  assert card["sampling"]["resumed_chunks"] == 3 and card["num_generated"] == 40
  # Exact: the saved records are the same float32 features/logits/pixels, absorbed in the same order.
  assert card["metrics"] == run["plain"]["metrics"]
  assert set(card["metrics"]) >= {"fid", "kid", "is", "precision", "recall", "parzen_ll"}
  assert os.path.exists(run["card_path"]) and partial_dirs(run["workdir"]) == []


def test_a_corrupt_chunk_is_ignored_with_a_warning(run, offsets, capsys):
  fresh_partial(run)
  path = os.path.join(run["directory"], "chunk_1.npz")
  with open(path, "rb") as f:
    head = f.read(300)
  with open(path, "wb") as f:  # truncated, as a full disk would leave it
    f.write(head)
  card = runner.evaluate(run["config"], run["workdir"])
  out = capsys.readouterr().out
  assert re.search(r"warning: ignoring unreadable saved chunk .*chunk_1\.npz", out), out
  assert f"resuming evaluation: 1/{CHUNKS} chunks already done" in out, out
  assert offsets == [8, 16, 24, 32]  # chunk 3 was readable, but comes after the corrupt one
  assert card["sampling"]["resumed_chunks"] == 1
  assert card["metrics"] == run["plain"]["metrics"]


def test_another_protocol_does_not_reuse_stale_chunks(run, offsets, capsys):
  fresh_partial(run)
  card = runner.evaluate(tiny_config(**{"eval.num_samples": 48}), run["workdir"])
  assert "resuming" not in capsys.readouterr().out
  assert offsets == [0, 8, 16, 24, 32, 40] and card["sampling"]["resumed_chunks"] == 0
  assert card["num_generated"] == 48
  # The other protocol's chunks stay for their own rerun.
  assert partial_dirs(run["workdir"]) == [os.path.basename(run["directory"])]
  assert sorted(os.listdir(run["directory"])) == ["chunk_0.npz", "chunk_1.npz", "chunk_2.npz"]


def test_the_partial_directory_hash_covers_what_changes_samples_or_features():
  base = tiny_config()
  key = partial.protocol_hash(base, STEP, 8, ["features", "parzen"])
  changed = {"eval.num_samples": 48, "eval.seed": 1, "eval.backbone": "inception", "eval.quantize": False,
             "eval.metrics": ("fid",), "eval.batch_size": 16, "sample.use_ema": False, "model.z_dim": 8,
             "data.image_size": 16, "family": "vae", "model.arch": "dcgan_wide"}
  for k, v in changed.items():
    assert partial.protocol_hash(tiny_config(**{k: v}), STEP, 8, ["features", "parzen"]) != key, k
  assert partial.protocol_hash(base, STEP + 1, 8, ["features", "parzen"]) != key
  assert partial.protocol_hash(base, STEP, 16, ["features", "parzen"]) != key  # chunk size (device count)
  assert partial.protocol_hash(base, STEP, 8, ["features"]) != key
  # Training cadence changes neither the state at a step nor the evaluation: in-training chunks are reusable.
  same = tiny_config(**{"eval.every_steps": 2, "log_every_steps": 7, "checkpoint_every_steps": 9})
  assert partial.protocol_hash(same, STEP, 8, ["features", "parzen"]) == key


def test_a_consume_only_evaluator_still_works_without_resuming(run, offsets, capsys):
  seen, stores = [], []

  class ConsumeOnly:
    def consume(self, samples):
      seen.append(len(samples["images"]))
      stores.append(partial_dirs(run["workdir"]))

    def finish(self):
      return {"consumed": sum(seen)}, {"consume_only": {}}

  registry.register_evaluator(registry.Evaluator(name="test_consume_only", media=("images",),
                                                 start=lambda ctx: ConsumeOnly()))
  try:
    fresh_partial(run)
    card = runner.evaluate(tiny_config(**{"eval.metrics": ("fid", "test_consume_only")}), run["workdir"])
  finally:
    registry.unregister_evaluator("test_consume_only")
  assert "['test_consume_only'] only consume samples" in capsys.readouterr().out
  assert offsets == [0, 8, 16, 24, 32] and seen == [8] * 5 and card["metrics"]["consumed"] == 40
  assert card["sampling"]["resumable"] is False and card["sampling"]["resumed_chunks"] == 0
  assert all(s == [os.path.basename(run["directory"])] for s in stores)  # nothing new saved on the way
  assert card["metrics"]["fid"] == run["plain"]["metrics"]["fid"]  # same features, same FID
