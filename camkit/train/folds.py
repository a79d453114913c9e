"""Out-of-sample scores for cleaning: K models, each trained on the run's own recipe with one
fold of the images held out, and every image scored by the model that never saw it.

    scores = out_of_sample("runs/pets", folds=4)   # FoldScores: probs, features' OOD score, fold
    scores.probs[i]      # softmax of image i under the model trained without it
    scores.fold[i]       # the fold image i was held out in (its model never trained on it)

Why: a model scores the images it was trained on with the labels it memorised, so a
mislabelled training image looks clean under it (cleanlab's documentation asks for
out-of-sample probabilities; its CIFAR-10 benchmark uses 5-fold cross-validation). The folds
are stratified per class and seeded (scikit-learn's `StratifiedKFold`); the images are decoded
once (through camkit.data.cache when `cache` is given) and every fold reuses camkit.train.loop's loaders,
model builder, recipe, Learner and fit. Each fold model also gives the held-out image's
distance to the images it was trained on, as cleanlab's `OutOfDistribution` scores it (mean
distance to the k nearest training features, exp(-d / t)): an off-topic image is far from
both classes even when the model, forced to choose, names one of them confidently.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from camkit.core.device import resolve_device, resolve_precision
from camkit.data.folders import IMAGENET_STATS, TensorBatches, load_folder
from camkit.errors import CamkitError
from camkit.train.models import build_model
from camkit.train.run import LoadedModel
from camkit.train.spec import TrainSpec

DEFAULT_FOLDS = 3             # the cheapest K that holds out a third; 4 and 5 not measured (CPU time, issue 30)
KNN = 10                      # neighbours for the OOD distance (cleanlab's default k is 10)


@dataclass(frozen=True)
class FoldScores:
    """Per image (in `files` order): the label index, the out-of-sample softmax row, the
    out-of-distribution score (cleanlab's: 1 typical of the training images, near 0 far from
    all of them), and the fold it was held out in. `epochs` per fold, `seconds` in all."""
    files: list[Path]
    labels: np.ndarray
    probs: np.ndarray
    ood: np.ndarray
    fold: np.ndarray
    classes: list[str]
    folds: int
    epochs: int
    seconds: float


def check_folds(folds: int, counts: dict[str, int]) -> int:
    """Refuse a fold count that cannot hold every image out once with every class in every
    fold's training set: K < 2, or K above the number of images of the smallest class."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise CamkitError(f"--folds must be at least 2 (each image held out once), not {folds}")
    small = min(counts, key=counts.get)
    if folds > counts[small]:
        raise CamkitError(f"--folds {folds} is more than the {counts[small]} image(s) of class '{small}'; "
                          f"use --folds {max(2, counts[small])} or fewer")
    return folds


def assign_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold each image is held out in: stratified per class (each fold holds about 1/K of
    every class), shuffled with `seed` (scikit-learn's StratifiedKFold)."""
    from sklearn.model_selection import StratifiedKFold

    fold = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold[held] = k
    return fold


def run_spec(loaded: LoadedModel, epochs: int | None = None) -> TrainSpec:
    """The run's recipe as model.json records it (camkit.train.spec.TrainSpec, checked again), with
    the tensor loader (the folds share one decoded tensor), and `epochs` when given. A run
    whose learning rate was searched (`lr auto`) reuses the rate the search found."""
    recorded = dict(loaded.info.spec)
    if not recorded:
        raise CamkitError(f"'{loaded.path}' records no training options (trained before camkit recorded them); "
                          "--folds needs them: retrain the run")
    recorded.pop("loader", None)
    if recorded.get("lr") == "auto":
        recorded["lr"] = loaded.info.summary.get("lr") or None
    if recorded.get("weights") and not Path(recorded["weights"]).is_file():
        raise CamkitError(f"the run was trained from the weights '{recorded['weights']}', which are gone; "
                          "--folds retrains from them")
    try:
        spec = TrainSpec.parse(**recorded, loader="tensor")
    except TypeError as e:
        raise CamkitError(f"'{loaded.path}' records training options this camkit cannot read ({e})") from None
    return replace(spec, epochs=epochs) if epochs is not None else spec


def out_of_sample(loaded: LoadedModel, root: Path, folds: int = DEFAULT_FOLDS, epochs: int | None = None,
                  cache: str | Path | None = None, seed: int | None = None, quiet: bool = True) -> FoldScores:
    """Train `folds` models on the run's recipe (`run_spec`), image i held out of exactly one,
    and score every image with the model that did not train on it. The data folder must hold
    the run's classes (the models are trained on its folders)."""
    spec = run_spec(loaded, epochs)
    seed = spec.seed if seed is None else seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # rank() has warned about skipped folders and files already
        data = load_folder(root, spec.size, cache=cache)
    if data.classes != loaded.classes:
        raise CamkitError(f"--folds retrains on the class folders of '{root}' ({', '.join(data.classes)}), which are "
                          f"not the run's classes ({', '.join(loaded.classes)})")
    labels = data.labels.numpy()
    check_folds(folds, {c: int((labels == k).sum()) for k, c in enumerate(data.classes)})
    fold = assign_folds(labels, folds, seed)
    probs = np.zeros((len(labels), len(data.classes)))
    ood = np.zeros(len(labels))
    start, used = time.perf_counter(), 0
    for k in range(folds):
        held = np.flatnonzero(fold == k)
        probs[held], ood[held], used = fit_fold(data, np.flatnonzero(fold != k), held, spec, quiet)
    return FoldScores(list(data.files), labels, probs, ood, fold, data.classes, folds, used,
                      time.perf_counter() - start)


def fit_fold(data, train_idx: np.ndarray, held_idx: np.ndarray, spec: TrainSpec,
             quiet: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """One fold: a model built and fitted on `train_idx` as camkit.train.loop fits a run (same
    loaders, recipe, Learner and fit), then the held-out images' softmax rows and OOD scores.
    Returns (probs, ood, epochs fitted after the frozen ones)."""
    from camkit.train.evidence import get_recipe, recipe_callbacks, recipe_loss, with_recipe
    from camkit.train.loop import fit, make_learner, make_loaders

    dev = resolve_device(None)
    precision = resolve_precision(spec.precision, dev)
    train_t, held_t = torch.from_numpy(train_idx), torch.from_numpy(held_idx)
    torch.manual_seed(spec.seed)
    built = build_model(spec.model, len(data.classes), pretrained=spec.pretrained, weights=spec.weights)
    fold_spec = spec.for_data(len(train_idx), built.pretrained)
    dls, _ = make_loaders(data, train_t, held_t, fold_spec, dev, precision)
    recipe = get_recipe(fold_spec.recipe)
    dls = with_recipe(dls, recipe, len(data.classes), fold_spec.seed)
    learn = make_learner(dls, built, Path("."), precision)
    learn.loss_func = recipe_loss(recipe) or learn.loss_func
    learn.add_cbs(recipe_callbacks(recipe, fold_spec.seed))
    fit(learn, built.pretrained, fold_spec.epochs, fold_spec.freeze_epochs, fold_spec.base_lr(built.pretrained),
        verbose=not quiet)
    model = learn.model.eval()
    held_probs, held_feats = _forward(model, data, held_t, fold_spec.bs, dev)
    _, train_feats = _forward(model, data, train_t, fold_spec.bs, dev)
    return held_probs, ood_scores(train_feats, held_feats), fold_spec.epochs


@torch.no_grad()
def _forward(model: torch.nn.Sequential, data, idx: torch.Tensor, bs: int,
             dev: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Softmax rows and the body's globally pooled features (what the CAM head's linear layer
    weighs) of images `idx`, un-augmented."""
    batches = TensorBatches(images=data.images, rows=idx, labels=data.labels[idx], bs=bs, shuffle=False,
                            stats=IMAGENET_STATS) if data.mapped else \
        TensorBatches(images=data.images[idx], labels=data.labels[idx], bs=bs, shuffle=False, stats=IMAGENET_STATS)
    probs, feats = [], []
    for x, _ in batches.to(dev):
        features = model[0](x)
        logits = model[1](features)
        probs.append(logits.float().softmax(1).cpu().numpy())
        feats.append(features.float().mean((2, 3)).cpu().numpy())
    return np.concatenate(probs).astype(np.float64), np.concatenate(feats)


def ood_scores(train_feats: np.ndarray, held_feats: np.ndarray) -> np.ndarray:
    """cleanlab's out-of-distribution score of the held-out features against the training
    features (`cleanlab.outlier.OutOfDistribution`: mean cosine distance to the k nearest
    training features, mapped to exp(-d / t) with t fitted on the training set; 1 typical,
    near 0 far from everything the model was trained on)."""
    from cleanlab.outlier import OutOfDistribution

    k = min(KNN, len(train_feats) - 1)
    ood = OutOfDistribution(params={"k": k})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ood.fit(features=train_feats, verbose=False)
        return np.asarray(ood.score(features=held_feats), dtype=np.float64)
