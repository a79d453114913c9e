"""camkit.train.history: the epoch-history callback, below both the training loop and the notebook layer."""
from __future__ import annotations


def test_train_and_the_notebook_layer_share_one_epoch_history():
    import camkit.fastai
    import camkit.train.loop
    from camkit.train.history import EpochHistory

    from fastai.learner import defaults

    assert camkit.train.loop.EpochHistory is EpochHistory and issubclass(camkit.train.loop.EpochLog, EpochHistory)
    assert camkit.fastai.EpochHistory is EpochHistory and EpochHistory in list(defaults.callbacks)
