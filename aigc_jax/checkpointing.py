"""Run-state checkpoints with orbax: train state + data position + config snapshot, one step per folder.

Async saves, keep N, resume from the latest. Only finite states are saved (the trainer checks), so the
latest checkpoint is always a good one.
"""
import json
import os

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from aigc_jax.errors import UserError

ITEMS = ("state", "data", "config")


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, create: bool = True):
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=create)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

  def latest_step(self):
    return self._manager.latest_step()

  def all_steps(self):
    return list(self._manager.all_steps())

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state, data_state: dict, config_dict: dict, force: bool = False) -> bool:
    return self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(json.loads(json.dumps(config_dict, default=str)))),
        force=force)

  def restore(self, step: int, abstract_state, mesh):
    """Restores `step` into the structure/dtypes of `abstract_state`, replicated over `mesh`."""
    replicated = NamedSharding(mesh, P())
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract_state)
    try:
      restored = self._manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
              config=ocp.args.JsonRestore()))
    except Exception as e:  # corrupt or incompatible files: say which checkpoint and what to do
      raise UserError(
          f"cannot restore checkpoint {self.path(step)} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
          "it may be corrupt or from a different config: delete that step folder to fall back to an earlier "
          "one, or use a fresh --workdir") from None
    return restored.state, restored.data, restored.config

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()
