"""What a run says on the console at its start and at its end, so a newcomer knows what is training, on what,
where it writes, and what to type next."""
import os
import shlex
import sys

import jax
import numpy as np


def count_params(state) -> int:
  """Trainable parameters: leaves under a `params` key (or `<net>_params`), not EMA copies or optimiser moments."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    keys = [str(getattr(k, "key", "")) for k in path]
    if any(k == "params" or (k.endswith("_params") and not k.startswith("ema")) for k in keys):
      total += int(np.prod(np.shape(leaf)))
  return total


def _command(experiment: str, workdir: str, mode: str = "") -> str:
  spec = experiment or "experiments/<file>.py[:preset]"
  argv = ["python", "-m", "aigc_jax.main", f"--config={spec}", f"--workdir={workdir}"]
  return " ".join(shlex.quote(a) for a in argv) + (f" --mode={mode}" if mode else "")


def start(config, *, experiment: str, data_description: str, state, workdir: str, start_step: int, mesh=None,
          log=print):
  n_dev, n_proc = (mesh.devices.size if mesh is not None else jax.device_count()), jax.process_count()
  kind = jax.devices()[0].device_kind
  per_device = config.batch_size // max(n_dev, 1)
  resume = f" (resuming from step {start_step})" if start_step else ""
  lines = [
      f"aigc_jax: family {config.family}" + (f", experiment {experiment}" if experiment else ""),
      f"  data        {data_description}",
      f"  model       {count_params(state):,} trainable parameters",
      f"  devices     {n_dev} x {kind} in {n_proc} process{'es' if n_proc > 1 else ''}; global batch "
      f"{config.batch_size} ({per_device} per device){_device_rule(config, n_dev)}",
      f"  steps       {start_step} -> {config.num_train_steps}{resume}",
      f"  workdir     {os.path.abspath(workdir)}",
  ]
  log("\n".join(lines))
  sys.stdout.flush()


def _device_rule(config, n_dev: int) -> str:
  """Why this many devices, when the automatic CPU rule chose fewer than there are."""
  available = jax.device_count()
  if config.get("num_devices", 0) or n_dev == available or jax.default_backend() != "cpu":
    return ""
  return (f"; {n_dev} of {available} CPU devices: the most that divide the batch "
          "(--config.num_devices to choose)")


def finish(config, *, experiment: str, workdir: str, step: int, sample_paths, checkpoint: str, log=print):
  workdir_abs = os.path.abspath(workdir)
  lines = [f"aigc_jax: stopped at step {step} of {config.num_train_steps}"]
  if sample_paths:
    lines.append(f"  samples     {', '.join(sample_paths)}")
  lines += [
      f"  checkpoint  {checkpoint or 'none'}",
      f"  tensorboard tensorboard --logdir {shlex.quote(workdir_abs)}",
      f"  sample      {_command(experiment, workdir, 'sample')}",
      f"  evaluate    {_command(experiment, workdir, 'eval')}",
  ]
  if step < config.num_train_steps:
    lines.append(f"  resume      {_command(experiment, workdir)}")
  log("\n".join(lines))
  sys.stdout.flush()
