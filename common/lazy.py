"""Package names loaded on first use (PEP 562), for the packages whose config modules must import without JAX."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> Callable[[str], object]:
  """A module `__getattr__` for `package`: name -> the attribute of the module `exports[name]` names, imported
  on first use and then kept in `namespace` (the package's globals)."""

  def __getattr__(name: str):
    if name not in exports:
      raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(exports[name]), name)
    namespace[name] = value
    return value

  return __getattr__
