"""Run-state checkpoints with orbax: train state + data position + config snapshot, one step per folder.

Async saves, keep N, resume from the latest. Only finite states are saved (the trainer checks), so the
latest checkpoint is always a good one. Before restoring, the saved state tree is compared with the one the
run expects, so a checkpoint of another layout or config fails with one line naming what differs. A step
whose files cannot be read raises `CorruptCheckpoint`; `move_aside` puts it next to the checkpoints (never
deleted) so the run can fall back to an earlier one (runtime.restore_latest).
"""
import dataclasses
import gc
import json
import logging as std_logging
import os
import sys
import time
import warnings
from typing import Callable, Optional

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


class CorruptCheckpoint(UserError):
  """The files of one checkpoint step cannot be read (truncated, garbled, half-copied)."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def corrupt_dir(workdir_or_ckpt_dir: str) -> str:
  """Where unreadable steps are moved: beside checkpoints/, so orbax never lists them as steps."""
  return os.path.join(os.path.dirname(workdir_or_ckpt_dir.rstrip("/")), "checkpoints_corrupt")


def _is_closed_loop_error(exc) -> bool:
  return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _is_failed_orbax_read(unraisable) -> bool:
  """A read coroutine of orbax whose exception nobody retrieved (the restore had already failed)."""
  code = getattr(unraisable.object, "cr_code", None)
  return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _silence_failed_read_leftovers():
  """A failed orbax restore leaves work behind: read coroutines and futures whose exceptions nobody
  retrieved (Python prints "Exception ignored in ..." or asyncio's "Future exception was never retrieved"
  when they are collected, possibly at exit), and tensorstore reads in flight that finish after orbax closed
  its event loop ("Event loop is closed", printed by tensorstore's threads through sys.excepthook). The
  restore error itself is reported in one line (CorruptCheckpoint), so these echoes are dropped: the hooks
  below pass everything else on to the previous hooks. Installed once, before the first read."""
  if getattr(sys.excepthook, "aigc_jax_drops_failed_reads", False):
    return
  previous_except, previous_unraisable = sys.excepthook, sys.unraisablehook

  def excepthook(exc_type, exc, tb):
    if not _is_closed_loop_error(exc):
      previous_except(exc_type, exc, tb)

  def unraisablehook(unraisable):
    if not (_is_closed_loop_error(unraisable.exc_value) or _is_failed_orbax_read(unraisable)):
      previous_unraisable(unraisable)

  excepthook.aigc_jax_drops_failed_reads = True
  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def _read(fn):
  """(fn(), None), or (None, its error's first line) if the checkpoint's files cannot be read."""
  _silence_failed_read_leftovers()
  # Futures whose exceptions nobody retrieved: asyncio logs each one when it is collected, which can happen
  # while the failing read is still unwinding (a collection triggered inside fn), so the logger is quiet from
  # the start; a read that succeeds leaves no such futures and gets the previous level back.
  asyncio_logger = std_logging.getLogger("asyncio")
  previous_level = asyncio_logger.level
  asyncio_logger.setLevel(std_logging.CRITICAL)
  try:
    result = fn()
  except Exception as e:  # pylint: disable=broad-except  # truncated or garbled files
    failure = _first_line(e)
  else:
    asyncio_logger.setLevel(previous_level)
    return result, None
  with warnings.catch_warnings():  # the failed read's coroutines, collected unawaited ("never awaited")
    warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)
    gc.collect()
  return None, failure


def _first_line(e: Exception) -> str:
  lines = str(e).strip().splitlines()
  first = lines[0].split(" See full TensorStore details")[0] if lines else ""  # then a multi-line spec dump
  return f"{type(e).__name__}: {first[:200]}"


@dataclasses.dataclass
class _PreserveStep(ocp.checkpoint_managers.PreservationPolicy):
  """Keeps the step `step_fn()` names (None: none) out of the rotation; read at every clean-up, so it can move."""
  step_fn: Callable[[], Optional[int]]

  def should_preserve(self, checkpoints, *, context=None):
    keep = self.step_fn()
    return [info.step == keep for info in checkpoints]


class Checkpointer:
  """The run's orbax CheckpointManager: the newest `keep` steps, plus the step `preserve_step()` names (the best
  evaluation's, eval.keep_best) when given."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, create: bool = True,
               preserve_step: Optional[Callable[[], Optional[int]]] = None):
    self.directory = checkpoint_dir(workdir)
    if preserve_step is None:
      retention = {"max_to_keep": keep}
    else:
      policies = [ocp.checkpoint_managers.LatestN(n=keep), _PreserveStep(preserve_step)]
      retention = {"preservation_policy": ocp.checkpoint_managers.AnyPreservationPolicy(policies)}
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=async_save, create=create, **retention)
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

  def saved_config(self, step: int) -> dict:
    """The config snapshot saved with `step` (a plain dict; tuples became lists). CorruptCheckpoint if unreadable."""
    config, failure = _read(lambda: self._manager.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config)
    if failure is not None:
      raise CorruptCheckpoint(f"cannot read the config snapshot of checkpoint {self.path(step)} ({failure})")
    return config

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
    restored, failure = _read(lambda: self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore())))
    if failure is not None:
      raise CorruptCheckpoint(f"cannot read checkpoint {self.path(step)} ({failure})")
    return restored.state, restored.data, restored.config

  def drop_if_rotated_out(self, step: int, keep: int):
    """Deletes `step` unless it is one of the newest `keep`: a step that was preserved (the former best
    evaluation's) goes as soon as it stops being preserved, not at the next save."""
    steps = sorted(self.all_steps())
    if step in steps and step not in steps[-keep:]:
      self.wait()  # no delete while a save is in flight
      self._manager.delete(step)

  def move_aside(self, step: int) -> str:
    """Moves an unreadable step out of checkpoints/ (never deletes it); returns where it went."""
    target_root = corrupt_dir(self.directory)
    os.makedirs(target_root, exist_ok=True)
    target = os.path.join(target_root, str(step))
    if os.path.exists(target):
      target = f"{target}.{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(self.path(step), target)
    self._manager.reload()
    return target

  def reload(self):
    """Re-reads the step list (after another process moved a step)."""
    self._manager.reload()

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()
