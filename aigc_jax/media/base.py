"""The `Medium` record and the registry the writers dispatch on (no numpy-heavy imports, no TF)."""
import dataclasses
import os
from typing import Any, Callable, Dict, List, Optional, Tuple


def _no_summaries(writer, step, outputs):
  del writer, step, outputs


def _no_arrays(outputs) -> dict:
  del outputs
  return {}


def _identity(x):
  return x


@dataclasses.dataclass(frozen=True)
class Medium:
  """One kind of sample a family's `sample` may return, under the outputs key `name`.

  write_files(outputs, directory, step) -> [paths]   the medium's own files (not the shared `<step>.npz`)
  write_summaries(writer, step, outputs)             TensorBoard through a clu MetricWriter
  quantize(x) -> x                                   the samples "as if saved" (what evaluation scores)
  npz_arrays(outputs) -> {key: array}                its part of the one `<step>.npz`
  echo_text(outputs) -> str                          printed by write_samples(echo=True), if given
  aux_keys                                           outputs keys that travel with it (e.g. "text_vocab")
  """
  name: str
  write_files: Callable[[dict, str, int], List[str]]
  aux_keys: Tuple[str, ...] = ()
  write_summaries: Callable[[Any, int, dict], None] = _no_summaries
  quantize: Callable[[Any], Any] = _identity
  npz_arrays: Callable[[dict], Dict[str, Any]] = _no_arrays
  echo_text: Optional[Callable[[dict], str]] = None


# Keys any medium may come with, saved in the npz: class labels [N] (class-conditional diffusion) and prompt_ids
# [N] (text-conditional diffusion: each sample's row in the family's prompt table, `Family.prompts_of`).
GENERIC_KEYS = ("labels", "prompt_ids")

_REGISTRY: Dict[str, Medium] = {}


def register_medium(medium: Medium, replace: bool = False) -> Medium:
  """Adds `medium` (keyed by its outputs key); `replace` allows swapping out a registered one."""
  taken = {k: m.name for m in _REGISTRY.values() if m.name != medium.name for k in (m.name, *m.aux_keys)}
  clashes = [k for k in (medium.name, *medium.aux_keys) if k in taken or k in GENERIC_KEYS]
  if clashes:
    raise ValueError(f"medium {medium.name!r}: keys {clashes} already belong to another medium or are generic")
  if medium.name in _REGISTRY and _REGISTRY[medium.name] is not medium and not replace:
    raise ValueError(f"medium {medium.name!r} is already registered (pass replace=True to swap it)")
  _REGISTRY[medium.name] = medium
  return medium


def unregister_medium(name: str):
  _REGISTRY.pop(name, None)


def get_medium(name: str) -> Medium:
  if name not in _REGISTRY:
    raise KeyError(f"unknown medium {name!r}; known media: {known_media()}")
  return _REGISTRY[name]


def known_media() -> List[str]:
  """Registered medium names, in registration order (the order files are written in)."""
  return list(_REGISTRY)


def tmp_path(path: str) -> str:
  """`path` + ".tmp" + its extension, so PIL and np.savez still see the format they should write."""
  return path + ".tmp" + os.path.splitext(path)[1]


def write_bytes_atomic(path: str, data: bytes):
  tmp = tmp_path(path)
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)
