"""Class probabilities for image files with a trained run: `camkit predict`, and the batched
scoring pass `camkit clean` reuses.

    predict(["photo.jpg", "photos/"], "runs/pets", top_k=3)   # -> [Prediction(...), ...]

The same path as `camkit cam` without the maps (camkit.core.images.decoded_batches): camkit's guarded
decode, the run's own `square` and `batch` (so an image is fed exactly as training and CAM feed
it), one forward pass per batch under `inference_mode`. An unreadable file found in a folder is
skipped with a warning; an unreadable file named directly is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from camkit.core.distributed import gather, in_group, shard
from camkit.core.images import Decoded, ImageFiles, decoded_batches
from camkit.errors import CamkitError
from camkit.export.engine import Engine, choose_engine, open_graph
from camkit.train.run import LoadedModel, as_loaded, warn_if_unusable

if TYPE_CHECKING:
    from camkit.export.engine import OrtGraph


@dataclass
class Prediction:
    """One image's class probabilities: `image` is the file's absolute path, `top` the k most
    probable classes as [class, prob] pairs, most probable first."""
    image: str
    pred: str
    prob: float
    probs: dict[str, float]
    top: list[list]


@dataclass
class ScoredBatch:
    """One forward pass: the files kept (unreadable ones dropped), their logits (cpu, float32)
    and what `also` returned for each decoded image."""
    files: list[Path]
    logits: torch.Tensor
    extras: list[Any]

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(1)

    @classmethod
    def of(cls, items: list[Decoded], logits: torch.Tensor) -> ScoredBatch:
        return cls([d.path for d in items], logits.float().cpu(), [d.kept for d in items])


def iter_scores(loaded: LoadedModel, files: ImageFiles | Sequence[Path], bs: int = 32,
                also: Callable[[Image.Image], Any] | None = None, graph: OrtGraph | None = None,
                part: range | None = None) -> Iterator[ScoredBatch]:
    """Decode, batch and score `files`, one batch at a time (camkit.core.images.decoded_batches:
    memory bounded by the batch; an unreadable file skipped or refused as `files` says, a plain
    sequence skipping). `also` is run on each decoded image, so a caller needing e.g. a
    perceptual hash decodes each file once. With `graph` (camkit.export.engine.OrtGraph) ONNX Runtime
    scores the uint8 squares instead of the torch model. `part`: only these positions."""
    if graph is not None:
        for batch in decoded_batches(files, loaded.square, _nchw, bs, part, also):
            yield ScoredBatch.of(batch.items, torch.from_numpy(graph.run(batch.x)[0]))
        return
    for batch in decoded_batches(files, loaded.square, loaded.batch, bs, part, also):
        with torch.inference_mode():
            logits = loaded.model(batch.x)
        yield ScoredBatch.of(batch.items, logits)


def _nchw(squares: list[np.ndarray]) -> np.ndarray:
    """S x S x 3 uint8 squares -> the ONNX graph's (B, 3, S, S) uint8 input."""
    return np.stack(squares).transpose(0, 3, 1, 2)


def check_options(loaded: LoadedModel, top_k: int, bs: int) -> None:
    """Refuse a top-k the run cannot give or a batch size below 1, before any image is read."""
    n = len(loaded.classes)
    if not 1 <= top_k <= n:
        raise CamkitError(f"--top-k must be between 1 and the run's {n} classes, not {top_k}")
    if bs < 1:
        raise CamkitError(f"--bs must be at least 1, not {bs}")


def to_prediction(path: Path, row: torch.Tensor, classes: list[str], top_k: int) -> Prediction:
    """One softmax row as a Prediction (probabilities rounded to 6 digits for output)."""
    values, order = row.topk(top_k)
    top = [[classes[int(i)], round(float(v), 6)] for v, i in zip(values, order)]
    return Prediction(image=str(Path(path).resolve()), pred=top[0][0], prob=top[0][1],
                      probs={c: round(float(p), 6) for c, p in zip(classes, row)}, top=top)


@in_group
def predict(images: Sequence[str | Path] | str | Path, model: str | Path | LoadedModel, top_k: int = 2,
            bs: int = 32, device: str | None = None, engine: str = "auto") -> list[Prediction]:
    """Class and probabilities of each image (files, or folders searched recursively), in the
    order `camkit cam` would explain them (under torchrun, each rank scores its block and every
    rank returns the whole list). `engine`: 'torch', 'onnx' (ONNX Runtime: the run's exported
    graph, or one exported now in memory) or 'auto' (camkit.export.engine.choose_engine)."""
    loaded = as_loaded(model, device)
    check_options(loaded, top_k, bs)
    choice = choose_engine(engine, loaded, exact=True)
    graph = open_graph(choice, loaded) if choice.engine is Engine.onnx else None
    files = ImageFiles.collect(images)
    warn_if_unusable(loaded)
    return gather([to_prediction(f, row, loaded.classes, top_k)
                   for batch in iter_scores(loaded, files, bs, graph=graph, part=shard(len(files)))
                   for f, row in zip(batch.files, batch.probs)])
