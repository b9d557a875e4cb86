"""aigc_jax.hostmem: freed host memory is reused (no fresh pages per call), and the user's choice wins."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Mallocs, fills and frees a 64 MB buffer 5 times (glibc directly: numpy would ask for huge pages); prints
# whether the settings took and the minor page faults per round of the last 4 rounds.
PROBE = """
import ctypes, resource
from aigc_jax import hostmem
applied = hostmem.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = []
for _ in range(5):
  f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(64 * 2 ** 20)
  ctypes.memset(p, 1, 64 * 2 ** 20)
  libc.free(p)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(applied, sum(faults[1:]) // 4)
"""


def _probe(**env):
  out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True,
                       env={**os.environ, **env}).stdout.split()
  return out[0] == "True", int(out[1])


def _glibc():
  import ctypes
  try:
    ctypes.CDLL("libc.so.6").gnu_get_libc_version
    return True
  except (OSError, AttributeError):
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc(), reason="glibc malloc settings")
def test_freed_memory_is_reused_and_the_user_can_opt_out():
  applied, faults = _probe()
  assert applied
  assert faults < 200  # the 16,384 pages of the buffer come back without a fault
  applied, faults = _probe(AIGC_JAX_MALLOC="default")
  assert not applied
  assert faults > 10_000  # glibc's default: a fresh mmap each round, every page faults on first touch
  applied, _ = _probe(MALLOC_ARENA_MAX="4")
  assert not applied  # the user's own malloc settings are left alone


def test_a_bad_setting_is_one_line_error():
  from aigc_jax import hostmem
  from aigc_jax.errors import UserError
  with pytest.raises(UserError, match="host_memory"):
    hostmem.apply("always")
  assert hostmem.apply("release") is False
