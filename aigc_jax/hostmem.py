"""Host memory: keep freed memory in the process instead of handing it back to the OS after every step.

XLA:CPU allocates each call's temporaries (hundreds of MB for an audio or image step) with malloc and frees
them when the call ends. glibc serves requests that large with a fresh mmap from a thread's arena, so every
call touches new pages and the kernel zeroes each one on first use: the WaveNet cpu step made ~93,000 page
faults a step and ran 1.37x slower than with the memory kept (bench/RESULTS.md "Host memory").
`keep_freed_memory()` sets glibc's malloc, through its own `mallopt`, to one arena (the main heap, which grows
with brk) and no mmap, and never trims the heap's top, so the second call reuses the first call's pages. The
price: the process keeps its peak host memory until it exits.

Not a default: with one arena the DDPM and DCGAN cpu steps ran 0.65-0.85x as fast (their XLA threads' many
smaller allocations then share one lock, by my reading; not profiled). `config.host_memory = "keep"` asks for
it (the WaveNet and DiffWave cpu presets); the command line applies it after parsing flags, before JAX starts its
threads (a thread keeps the arena it first allocated from). It does nothing off glibc, and nothing when the
user chose malloc settings (GLIBC_TUNABLES, MALLOC_ARENA_MAX) or set AIGC_JAX_MALLOC=default.
"""
import ctypes
import os
import sys

from aigc_jax.errors import UserError

CHOICES = ("release", "keep")

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_applied = None


def keep_freed_memory() -> bool:
  """Applies the settings once per process; True when glibc took them."""
  global _applied
  if _applied is not None:
    return _applied
  _applied = False
  user_chose = any(os.environ.get(v) for v in ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_",
                                               "MALLOC_TRIM_THRESHOLD_"))
  if not sys.platform.startswith("linux") or user_chose or os.environ.get("AIGC_JAX_MALLOC") == "default":
    return _applied
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.gnu_get_libc_version  # glibc only (musl has no mallopt arenas)
  except (OSError, AttributeError):
    return _applied
  # mallopt returns 1 on success.
  _applied = all(libc.mallopt(option, value) == 1 for option, value in
                 ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2 ** 31 - 1)))
  return _applied


def apply(setting: str) -> bool:
  """`config.host_memory`: "release" leaves glibc as it is, "keep" calls keep_freed_memory()."""
  if setting not in CHOICES:
    raise UserError(f"host_memory={setting!r} is not one of {CHOICES}; set --config.host_memory=release or keep")
  return keep_freed_memory() if setting == "keep" else False
