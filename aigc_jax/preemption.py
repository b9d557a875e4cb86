"""SIGTERM (what preemptible VMs and most schedulers send) as a flag polled at safe points.

The trainer saves a checkpoint at the next step boundary; the evaluation runner stops after the chunk it is
working on (its finished chunks are already on disk) so a rerun resumes instead of starting over.
"""
import signal


class Preemption:
  """`with Preemption() as p:` ... `if p.requested: save and stop`."""

  def __init__(self):
    self.requested = False
    self._previous = None
    self._installed = False

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    except ValueError:  # not the main thread (e.g. inside a notebook worker): no handler
      self._installed = False
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
