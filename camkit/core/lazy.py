"""Import on first use, and the paths modules had before they moved: the two things a package
face needs to stay cheap and keep old code working.

`forwarding(package, successor)` is a package's PEP 562 `__getattr__` (as torchcam's and
scikit-image's lazy faces): a sub-module is imported when first named, and any other name is
read from the module the package replaced (`camkit.train.train` is `camkit.train.loop.train`).

`MovedModules` answers `import camkit.run` with the module now at `camkit.train.run`: the same
module object (so `monkeypatch.setattr("camkit.run.x", ...)` and `isinstance` keep working), its
`__name__` and `__spec__` its own. Nothing is imported until an old path is used.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from importlib import import_module
from types import ModuleType
from typing import Any


def forwarding(package: str, successor: str) -> Callable[[str], Any]:
    """The `__getattr__` of `package`: its sub-module `name` if it has one, else `successor`'s
    attribute `name` (the module `package` replaced). Each answer is cached on the package."""
    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            value = import_module(f"{package}.{name}")
        else:
            value = getattr(import_module(successor), name)  # AttributeError names the successor
        setattr(import_module(package), name, value)
        return value
    return __getattr__


class MovedModules:
    """A finder and loader (the `MetaPathFinder` and `Loader` protocols, duck-typed: importing
    importlib.abc would cost `import camkit` 7 ms) for the old paths in `moved` (old dotted name
    -> new dotted name)."""

    def __init__(self, moved: Mapping[str, str]) -> None:
        self.moved = dict(moved)
        self._specs: dict[str, Any] = {}

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.moved:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> ModuleType:
        module = import_module(self.moved[spec.name])
        self._specs[spec.name] = module.__spec__   # the import system overwrites __spec__ next
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._specs.pop(module.__spec__.name)   # already executed: restore its own spec
