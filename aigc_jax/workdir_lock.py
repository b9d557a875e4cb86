"""One training run per workdir: `<workdir>/run.lock` names the run that holds it (host, pid, start time).

Two runs in one workdir would write each other's checkpoints and event files, so a second `--mode=train`
exits at once naming the first. The lock is created with O_CREAT | O_EXCL (atomic on local disks and on
NFS v3+) and its modification time is a heartbeat, refreshed by a daemon thread while the run lives, so it
also works on a filesystem shared by several hosts, where a pid alone says nothing:

- holder on this host and its pid is gone: stale, taken over at once with a warning;
- holder anywhere whose heartbeat is older than `stale_after_s`: stale (a crashed host, a killed job),
  taken over with a warning;
- otherwise: a one-line error naming the holder.

In a multi-process job only process 0 takes the lock; the other processes learn its verdict.
"""
import json
import os
import socket
import threading
import time
import uuid

from aigc_jax.errors import UserError

LOCK_NAME = "run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # ten missed heartbeats


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by another user
    return True
  return True


def _when(t: float) -> str:
  return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


class WorkdirLock:
  """`acquire()` or a UserError; `release()` removes the lock if it is still ours."""

  def __init__(self, workdir: str, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S,
               log=print):
    self.path = os.path.join(workdir, LOCK_NAME)
    self.heartbeat_s, self.stale_after_s, self.log = heartbeat_s, stale_after_s, log
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread = None

  def _record(self) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start_time": time.time(),
            "started": _when(time.time()), "token": self.token}

  def _read(self):
    """(holder dict or None if unreadable, heartbeat age in seconds) of the current lock file."""
    try:
      age = time.time() - os.stat(self.path).st_mtime
    except FileNotFoundError:
      return None, None
    try:
      with open(self.path) as f:
        return json.load(f), age
    except (OSError, ValueError):  # half-written by a process that died mid-write, or garbled
      return None, age

  def _stale_reason(self, holder, age):
    if holder is None:
      return "an unreadable lock" if age > self.stale_after_s else None
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
      return f"pid {holder.get('pid')} on this host is no longer running"
    if age > self.stale_after_s:
      return f"no heartbeat from host {holder.get('host')} for {age:.0f} s (> {self.stale_after_s:.0f} s)"
    return None

  def acquire(self):
    for _ in range(3):  # a takeover race with another starter: retry from the top
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder, age = self._read()
        if age is None:
          continue  # removed between our open and stat
        reason = self._stale_reason(holder, age)
        if reason is None:
          who = (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
                 if holder else "a run whose lock is being written")
          raise UserError(f"another run is training in this workdir ({who}; last heartbeat {age:.0f} s ago; lock "
                          f"{self.path}); wait for it to finish or stop it, or use another --workdir")
        stale = f"{self.path}.stale-{self.token[:8]}"
        try:
          os.replace(self.path, stale)  # atomic: of two takers, one moves the lock, the other retries
        except FileNotFoundError:
          continue
        self.log(f"warning: took over a stale run lock ({reason}; its lock kept as {stale})")
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(self._record(), f)
        f.flush()
        os.fsync(f.fileno())
      self._thread = threading.Thread(target=self._beat, name="aigc_jax-workdir-lock", daemon=True)
      self._thread.start()
      return self
    raise UserError(f"cannot take the run lock {self.path}: other processes keep taking it; check who runs in "
                    "this workdir, or use another --workdir")

  def _ours(self) -> bool:
    holder, _ = self._read()
    return bool(holder) and holder.get("token") == self.token

  def _beat(self):
    warned = False
    while not self._stop.wait(self.heartbeat_s):
      if self._ours():
        try:
          os.utime(self.path)
        except OSError:
          pass
      elif not warned:
        self.log(f"warning: the run lock {self.path} was taken over by another process (this run's heartbeat "
                 "stalled?); two runs may now write to this workdir")
        warned = True

  def release(self):
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    if self._ours():
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
