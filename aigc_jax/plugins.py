"""A name -> plugin table whose built-in plugins are the modules of one package, imported on the first lookup.

Data sources and evaluators use it: a built-in plugin is a module in the plugin package that registers
itself when imported, so adding one edits no shared file; plugins defined elsewhere register the same way.
"""
import importlib
import pkgutil
from typing import Any, Dict, List


class Registry:

  def __init__(self, kind: str, package: str):
    self.kind = kind          # "data source", "evaluator": for messages
    self.package = package    # e.g. "aigc_jax.data.sources"
    self._items: Dict[str, Any] = {}
    self._discovered = False

  def register(self, name: str, item, *, replace: bool = False):
    if name in self._items and not replace:
      raise ValueError(f"{self.kind} {name!r} is already registered (pass replace=True to swap it)")
    self._items[name] = item
    return item

  def unregister(self, name: str):
    self._items.pop(name, None)

  def _discover(self):
    if not self._discovered:
      self._discovered = True
      package = importlib.import_module(self.package)
      for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{self.package}.{module.name}")

  def names(self) -> List[str]:
    self._discover()
    return sorted(self._items)

  def get(self, name: str, default=None):
    self._discover()
    return self._items.get(name, default)
