"""Tensors to a run folder: `spec` (every option checked once into frozen specs), `models` (the
model, built once), `evidence` (the training recipes), `history` (every epoch kept), `loop`
(`train()`: decode, split, build, fit, evaluate, save), `verdict` (usable or not), `run` (the run
folder's format, its one reader and one writer) and `folds` (out-of-sample scores for `clean`).

`camkit.train.train` is `camkit.train.loop.train`, as before the package existed: any name the
flat `camkit.train` module held is read from `loop` on first use. Importing this package imports
none of its modules, so `camkit.train.run.load` never loads fastai.
"""

from typing import TYPE_CHECKING

from camkit.core.lazy import forwarding

if TYPE_CHECKING:  # the public entry point, for static readers (type checkers, the API reference)
    from camkit.train.loop import train

__all__ = ["train"]
__getattr__ = forwarding(__name__, "camkit.train.loop")
