"""Per-chunk evaluation results on disk, so a long evaluation stopped by SIGTERM (or killed) resumes where it
stopped instead of starting over.

Chunk k of an evaluation leaves `<workdir>/eval/partial/<step>-<hash>/chunk_<k>.npz`: what every resumable
evaluator took from that chunk (its `record(samples)`, e.g. backbone features), not the samples. The hash covers
the whole config except the keys that only pace training (so a change of eval.metrics, eval.num_samples,
eval.batch_size, seeds, backbone, quantisation, sample.*, data or model settings starts afresh), the checkpoint
step, the chunk size and the record keys. Process 0 writes each file atomically (tmp file + os.replace); every
process reads them, and all processes resume from the same chunk (the fewest any of them can read). The runner
removes the directory once the metric card is written.
"""
import hashlib
import json
import os
import shutil

import jax
import numpy as np

from aigc_jax import parallel

FORMAT = 1
# Keys that pace or tidy the training loop: they change neither the state at a step nor what an evaluation makes.
NOT_IN_PROTOCOL = ("log_every_steps", "checkpoint_every_steps", "sample_every_steps", "keep_checkpoints",
                   "eval.every_steps")
_META = "_chunk"  # offset and count of the chunk, checked on load


def protocol_hash(config, step: int, chunk_size: int, record_keys) -> str:
  d = config.to_dict()
  for dotted in NOT_IN_PROTOCOL:
    *parents, leaf = dotted.split(".")
    node = d
    for p in parents:
      node = node.get(p, {})
    node.pop(leaf, None)
  blob = json.dumps({"format": FORMAT, "step": int(step), "chunk_size": int(chunk_size),
                     "records": sorted(record_keys), "config": d}, sort_keys=True, default=repr)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ChunkStore:
  """The saved chunks of one evaluation; `chunks` is [(offset, count)] of every chunk it generates."""

  def __init__(self, workdir: str, config, step: int, chunk_size: int, chunks, record_keys):
    self.chunks, self.record_keys = list(chunks), tuple(record_keys)
    digest = protocol_hash(config, step, chunk_size, self.record_keys)
    self.directory = os.path.join(workdir, "eval", "partial", f"{int(step)}-{digest}")

  def path(self, k: int) -> str:
    return os.path.join(self.directory, f"chunk_{k}.npz")

  def save(self, k: int, records: dict):
    """records: {record key: {name: array}} of chunk k; written by process 0 only."""
    if jax.process_index() != 0:
      return
    offset, count = self.chunks[k]
    arrays = {f"{_META}/offset": np.int64(offset), f"{_META}/count": np.int64(count)}
    for key, record in records.items():
      for name, value in record.items():
        arrays[f"{key}/{name}"] = np.asarray(value)
    os.makedirs(self.directory, exist_ok=True)
    tmp = self.path(k) + ".tmp"
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path(k))

  def load(self, k: int) -> dict:
    """{record key: {name: array}} of chunk k; raises if the file is unreadable or is not chunk k of this
    evaluation (offset, count or record keys differ)."""
    with np.load(self.path(k), allow_pickle=False) as z:
      arrays = {name: z[name] for name in z.files}  # reads, and so CRC-checks, every array
    got = (int(arrays.pop(f"{_META}/offset")), int(arrays.pop(f"{_META}/count")))
    if got != tuple(self.chunks[k]):
      raise ValueError(f"holds samples {got[0]}..{sum(got) - 1}, not {self.chunks[k][0]}..{sum(self.chunks[k]) - 1}")
    records = {key: {} for key in self.record_keys}
    for name, value in arrays.items():
      key, _, field = name.rpartition("/")
      if key not in records:
        raise ValueError(f"unexpected array {name!r}")
      records[key][field] = value
    missing = [key for key, record in records.items() if not record]
    if missing:
      raise ValueError(f"no record of {missing}")
    return records

  def readable(self, log=print) -> int:
    """How many leading chunks every process can read: up to the first missing file, or the first unreadable
    one (with a warning; it and every chunk after it are generated again)."""
    done = 0
    for k in range(len(self.chunks)):
      if not os.path.exists(self.path(k)):
        break
      try:
        self.load(k)
      except Exception as err:  # truncated, bit-flipped, not an npz, another evaluation's chunk...
        log(f"warning: ignoring unreadable saved chunk {self.path(k)} ({type(err).__name__}: {err}); chunks "
            f"{k + 1}..{len(self.chunks)} of {len(self.chunks)} are generated again")
        break
      done += 1
    return parallel.min_over_processes(done)

  def remove(self):
    if jax.process_index() != 0:
      return
    shutil.rmtree(self.directory, ignore_errors=True)
    try:
      os.rmdir(os.path.dirname(self.directory))  # eval/partial, when no other evaluation left chunks there
    except OSError:
      pass
