"""camkit: fastai transfer learning with Class Activation Maps.

crawl -> image folder -> train -> run folder -> cam / explain -> render -> report. Every CLI
command is a library function with the same arguments (``camkit.crawl.crawl``,
``camkit.train.train``, ``camkit.explain.cam``, ``camkit.report.report`` ...); in a notebook,
``camkit.fastai`` works on any fastai ``Learner``.

The package face is lazy (PEP 562, as torchcam's ``__init__``): ``import camkit`` loads no
torch, fastai or icrawler (a command's ``--help`` and ``camkit crawl`` never need them); a
public sub-module or name listed below is imported on first use, so ``import camkit;
camkit.explain.cam(...)`` works as ``import camkit.explain`` does.
"""

from __future__ import annotations

from importlib import import_module as _import_module
from typing import TYPE_CHECKING, Any

from camkit.version import __version__

# the public sub-modules, each imported on first attribute access
_SUBMODULES = frozenset({
    "app", "cache", "cam", "choices", "clean", "course", "crawl", "data", "demo", "device", "distributed",
    "errors", "evaluate", "evidence", "explain", "fastai", "files", "geometry", "images", "metrics", "models", "plots",
    "predict", "render", "report", "run", "space", "spec", "targets", "train", "verdict",
})
# public names re-exported from a sub-module: name -> module
_NAMES = {"CamkitError": "camkit.errors", "Interrupted": "camkit.errors"}

__all__ = ["CamkitError", "Interrupted", "__version__"]

if TYPE_CHECKING:  # the re-exported names for static readers (type checkers, the API reference)
    from camkit.errors import CamkitError, Interrupted


def __getattr__(name: str) -> Any:
    """Import a public sub-module or re-exported name the first time it is asked for, and keep it."""
    if name in _NAMES:
        value = getattr(_import_module(_NAMES[name]), name)
    elif name in _SUBMODULES:
        value = _import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES, *_SUBMODULES})
