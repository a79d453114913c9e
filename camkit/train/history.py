"""Every epoch of a fastai fit, kept: the `EpochHistory` callback.

It lives below both camkit.train.loop (whose `EpochLog` extends it) and the notebook layer
camkit.fastai (which adds it to every Learner), so the notebook layer does not import the
training pipeline to get it. camkit.train.loop re-exports it under its old path.
"""
from __future__ import annotations

from fastai.callback.core import Callback


class EpochHistory(Callback):
    """Every epoch of every fit (fine_tune runs two) as one row: epoch, phase (frozen body or
    all), and the Recorder's losses and metrics. fastai's Recorder keeps only the last fit, and
    a later `get_preds` or `validate` replaces even that; these rows stay."""
    order = 60  # after fastai's Recorder, which fills recorder.values at after_epoch

    def __init__(self):
        self.rows: list[dict] = []
        self.trained = False

    def after_train(self):
        self.trained = True  # a fit's training phase ran (get_preds / validate end epochs too)

    def after_epoch(self):
        if not self.trained:
            return
        self.trained = False
        names = self.learn.recorder.metric_names[1:-1]
        row = {"epoch": len(self.rows), "phase": "frozen" if self._frozen() else "all"}
        row.update({n: round(float(v), 6) for n, v in zip(names, self.learn.recorder.values[-1])})
        self.rows.append(row)

    def _frozen(self) -> bool:
        return len(self.learn.opt.param_groups) > 1 and self.learn.opt.frozen_idx > 0
