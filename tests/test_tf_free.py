"""Without TensorFlow (as on a GPU image with JAX but no TF): the offline presets train, sample and write
TensorBoard events, and nothing tries to import TensorFlow on the way."""
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")

SCRIPT = r"""
import os, sys

import importlib.machinery

class PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):
  # As where TF is not installed: find_spec("tensorflow") is None and `import tensorflow` fails.
  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name.split(".")[0] == "tensorflow":
      return None
    return super().find_spec(name, path, target)
sys.meta_path[:] = [PathFinderWithoutTensorFlow if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
try:
  import tensorflow
  raise SystemExit("tensorflow still importable")
except ModuleNotFoundError:
  pass

from aigc_jax import trainer
from aigc_jax.configs import load_experiment

TINY = {
    "dcgan.py": {"model.g_width": 8, "model.d_width": 8, "data.image_size": 8},
    "ddpm.py": {"sample.steps": 4, "model.ch_mult": (1,), "model.attn_resolutions": ()},
    "vae.py": {"model.hidden": (32, 32), "data.image_size": 8},
    "gpt.py": {"model.num_layers": 1, "model.width": 32, "model.block_size": 16, "sample.max_new_tokens": 8},
}
for experiment in sys.argv[2].split(","):
  overrides = TINY[experiment]
  config = load_experiment(os.path.join("experiments", experiment), "cpu")
  steps = {"num_train_steps": 3, "log_every_steps": 3, "checkpoint_every_steps": 3, "sample_every_steps": 3,
           "batch_size": 8, "sample.num": 4}
  for key, value in {**steps, **overrides}.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  workdir = os.path.join(sys.argv[1], experiment[:-3])
  trainer.train_and_evaluate(config, workdir)
  samples = sorted(os.listdir(os.path.join(workdir, "samples")))
  events = [f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")]
  print("RESULT", experiment, ",".join(samples), len(events), flush=True)
print("TF_IMPORTED", "tensorflow" in sys.modules, "clu.metric_writers" in sys.modules)
"""


def test_offline_presets_train_without_tensorflow(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = os.environ["XLA_FLAGS"].replace("device_count=8", "device_count=1")  # imports only
  # One process for the four presets: each process pays the imports (jax, flax, orbax, scikit-learn for the
  # digits) again, ~7 CPU-s, and the suite's other worker keeps the second core busy.
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), "dcgan.py,gpt.py,ddpm.py,vae.py"], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  out = proc.stdout
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "TF_IMPORTED False False" in out, out[-2000:]
  results = {line.split()[1]: line.split()[2:] for line in out.splitlines() if line.startswith("RESULT")}
  assert results["dcgan.py"][0] == "3.npz,3.png" and results["ddpm.py"][0] == "3.npz,3.png"
  assert results["vae.py"][0] == "3.npz,3.png" and results["gpt.py"][0] == "3.txt"
  assert all(int(r[1]) >= 1 for r in results.values()), results
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(tmp_path / "dcgan"), size_guidance={"tensors": 0, "scalars": 0})
  events.Reload()
  assert "g_loss" in events.Tags()["tensors"], events.Tags()
