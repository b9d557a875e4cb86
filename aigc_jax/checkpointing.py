"""Run-state checkpoints with orbax: train state + data position + config snapshot, one step per folder.

Async saves, keep N, resume from the latest. Only finite states are saved (the trainer checks), so the
latest checkpoint is always a good one. Before restoring, the saved state tree is compared with the one the
run expects, so a checkpoint of another layout or config fails with one line naming what differs.
"""
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from aigc_jax.errors import UserError

ITEMS = ("state", "data", "config")
MAX_LISTED = 5  # key paths / leaves named in a mismatch message


def _key_name(key) -> str:
  for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaves_by_path(tree) -> dict:
  """{('opt_state', '0', 'mu', ...): leaf} of a pytree; dict keys and named-tuple fields name alike, so a
  saved tree (orbax stores named tuples as dicts) and the live one compare equal."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {tuple(_key_name(k) for k in path): leaf for path, leaf in flat}


def _shortest_absent(path: tuple, other_prefixes: set) -> str:
  """The shortest prefix of `path` the other tree lacks: `g_params`, not every leaf under it."""
  for i in range(1, len(path) + 1):
    if path[:i] not in other_prefixes:
      return "/".join(path[:i])
  return "/".join(path)


def _listing(names) -> str:
  names = sorted(set(names))
  more = f" (+{len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
  return "[" + ", ".join(names[:MAX_LISTED]) + "]" + more


def check_state_fits(saved: dict, expected: dict, where: str):
  """One-line UserError if the saved leaves ({path: leaf with .shape, .dtype}) are not the expected ones."""
  if saved.keys() != expected.keys():
    prefixes = lambda paths: {p[:i] for p in paths for i in range(1, len(p) + 1)}
    saved_prefixes, expected_prefixes = prefixes(saved), prefixes(expected)
    missing = [_shortest_absent(p, saved_prefixes) for p in expected.keys() - saved.keys()]
    unexpected = [_shortest_absent(p, expected_prefixes) for p in saved.keys() - expected.keys()]
    raise UserError(
        f"checkpoint {where} has a different state layout (state keys missing from it: {_listing(missing)}; "
        f"unexpected in it: {_listing(unexpected)}): it was written by a different family layout or config; "
        "use a fresh --workdir, or the code version that wrote it")
  def signature(leaf):
    return f"{tuple(leaf.shape)} {np.dtype(leaf.dtype).name}"

  def differs(p):  # leaves without shape/dtype metadata are left to the restore itself
    return hasattr(saved[p], "shape") and hasattr(saved[p], "dtype") and \
        signature(saved[p]) != signature(expected[p])

  # Params first, optimiser moments (which repeat the params' shapes) last.
  order = sorted(expected, key=lambda p: ("params" not in p, "opt_state" in p, p))
  differing = [f"{'/'.join(p)} saved {signature(saved[p])} vs expected {signature(expected[p])}"
               for p in order if differs(p)]
  if differing:
    more = f" (+{len(differing) - 3} more)" if len(differing) > 3 else ""
    raise UserError(
        f"checkpoint {where} does not fit this run's state: {'; '.join(differing[:3])}{more}: this run's config "
        "differs from the one that wrote it (e.g. a model width); run with that config, or use a fresh --workdir")


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, create: bool = True):
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save, create=create)
    # Handlers named up front (not only through save/restore args) so item_metadata can read a step's tree.
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler()}
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

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

  def saved_state_leaves(self, step: int):
    """{path: metadata with .shape and .dtype} of the saved state at `step`; None if it cannot be read (the
    restore then reports the problem)."""
    try:
      metadata = self._manager.item_metadata(step)["state"]
    except Exception:  # pylint: disable=broad-except
      return None
    if metadata is None:
      return None
    return leaves_by_path(getattr(metadata, "tree", metadata))

  def restore(self, step: int, abstract_state, mesh):
    """Restores `step` into the structure/dtypes of `abstract_state`, replicated over `mesh`. A UserError (one
    line, nothing deleted) if the saved state has other keys or leaf shapes than `abstract_state`."""
    replicated = NamedSharding(mesh, P())
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract_state)
    saved = self.saved_state_leaves(step)
    if saved is not None:
      check_state_fits(saved, leaves_by_path(target), self.path(step))
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
