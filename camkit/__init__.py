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

import sys as _sys
from importlib import import_module as _import_module
from typing import TYPE_CHECKING, Any

from camkit.core.lazy import MovedModules
from camkit.version import __version__

# the public sub-modules and sub-packages, each imported on first attribute access
_SUBMODULES = frozenset({
    "app", "cam", "clean", "core", "course", "crawl", "data", "demo", "errors", "evaluate", "explain", "export",
    "faithfulness", "fastai", "predict", "report", "share", "train",
})
# where the flat modules of camkit 0.1.0 moved when they were grouped by concern (issue 27): the
# old paths keep working, as the same module objects (`import camkit.run` is camkit.train.run)
MOVED = {f"camkit.{old}": f"camkit.{new}" for old, new in {
    "choices": "core.choices", "files": "core.files", "images": "core.images", "geometry": "core.geometry",
    "layout": "core.layout", "device": "core.device", "distributed": "core.distributed", "plots": "core.plots",
    "render": "core.render", "cache": "data.cache", "quality": "data.quality", "spec": "train.spec",
    "models": "train.models", "evidence": "train.evidence", "history": "train.history", "verdict": "train.verdict",
    "run": "train.run", "folds": "train.folds", "targets": "cam.targets", "engine": "export.engine",
    "metrics": "faithfulness.metrics", "imputation": "faithfulness.imputation", "scoring": "faithfulness.scoring",
    "ortlite": "share.ortlite", "web": "share.web", "space": "share.space",
}.items()}
# public names re-exported from a sub-module: name -> module
_NAMES = {"CamkitError": "camkit.errors", "Interrupted": "camkit.errors"}

if not any(isinstance(f, MovedModules) for f in _sys.meta_path):
    _sys.meta_path.append(MovedModules(MOVED))

__all__ = ["CamkitError", "Interrupted", "__version__"]

if TYPE_CHECKING:  # the re-exported names for static readers (type checkers, the API reference)
    from camkit.errors import CamkitError, Interrupted


def __getattr__(name: str) -> Any:
    """Import a public sub-module or re-exported name the first time it is asked for, and keep it."""
    if name in _NAMES:
        value = getattr(_import_module(_NAMES[name]), name)
    elif name in _SUBMODULES or f"{__name__}.{name}" in MOVED:
        value = _import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES, *_SUBMODULES, *(m.rpartition('.')[2] for m in MOVED)})
