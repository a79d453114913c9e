"""camkit.history: the epoch-history callback, below both the training loop and the notebook layer."""
from __future__ import annotations


def test_train_and_the_notebook_layer_share_one_epoch_history():
    import camkit.fastai
    import camkit.train
    from camkit.history import EpochHistory

    from fastai.learner import defaults

    assert camkit.train.EpochHistory is EpochHistory and issubclass(camkit.train.EpochLog, EpochHistory)
    assert camkit.fastai.EpochHistory is EpochHistory and EpochHistory in list(defaults.callbacks)
