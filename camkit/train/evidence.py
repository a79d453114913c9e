"""Training recipes under which each class is found by its own evidence.

On two classes, cross-entropy is satisfied by one object detector: "bag" where a bag is seen,
"sandal" where none is. The second class's map then points at background (issue 20: pointing
0.92 for one class, 0.25 for the other). A recipe changes what a training batch asks of the
model, never the model: the run is still K logits, z_c = mean over positions of
sum_k w_ck A_k (the exact CAM's mean), so everything downstream is unchanged.

- negatives: patch-shuffled copies of the batch's own images (a g x g grid of tiles permuted:
  the same colours, noise and textures, no whole object) are a hidden "neither" class whose
  logit is fixed at 0. Softmax over [z_1 .. z_K, 0] makes "c" need z_c > 0, i.e. positive
  net evidence for c, instead of merely z_c > z_other.
- mosaic: negatives, plus 2 x 2 mosaics of four half-size images, whose target shares the
  probability among the classes present: a picture holding a bag can still be "sandal".
- bce: per-class sigmoid (multi-label binary cross-entropy) with negatives (all targets 0)
  and mosaics (every class present is 1): "no bag" cannot mean "sandal".
- erasing: one random rectangle per image replaced by noise (Zhong et al. 2020).
- a folder of negatives (`train(negatives=DIR)`, `camkit train --negatives DIR`): images of
  neither class that the user has (a third, generic crawl; backgrounds), appended to every
  batch as the hidden "neither" under any recipe.

`with_recipe(dls, recipe)` wraps the training loader, `recipe_loss(recipe)` is the loss. The
loss takes the training loader's soft targets (B, K) and the validation loader's class indices
alike, so the history's valid loss stays ordinary cross-entropy over the K classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from torch import Tensor, nn

from camkit.core.choices import Recipe, value
from camkit.core.geometry import Grid, grid_for, probe, upsample
from camkit.core.images import list_images, open_or_skip, resize_square
from camkit.core.layout import cam_linear
from camkit.data.folders import IMAGENET_STATS, Normalizer
from camkit.errors import CamkitError
from camkit.train.spec import recipe_name


@dataclass(frozen=True)
class EvidenceRecipe:
    """What a training batch gets added: `negatives` and `mosaics` as fractions of the batch
    size, `erase` the probability of erasing a rectangle per image; `loss` softmax (with the
    zero "neither" logit when there are negatives or mosaics) or bce."""
    name: str
    loss: str = "softmax"
    negatives: float = 0.0
    mosaics: float = 0.0
    erase: float = 0.0
    counterfactual: float = 0.0
    grid: int = 4
    area: float = 0.3

    @property
    def plain(self) -> bool:
        return self.loss == "softmax" and not (self.negatives or self.mosaics or self.erase or self.counterfactual)

    @property
    def neither(self) -> bool:
        """Whether some training images belong to no class (the hidden zero logit is needed)."""
        return bool(self.negatives or self.mosaics or self.counterfactual)


RECIPES: dict[str, EvidenceRecipe] = {r.name: r for r in (
    EvidenceRecipe("plain"),
    EvidenceRecipe("negatives", negatives=0.25),
    EvidenceRecipe("mosaic", negatives=0.25, mosaics=0.25),
    EvidenceRecipe("bce", loss="bce", negatives=0.25, mosaics=0.25),
    EvidenceRecipe("erasing", erase=0.5),
    EvidenceRecipe("counterfactual", counterfactual=0.25),
)}


def get_recipe(recipe: str | Recipe | EvidenceRecipe, head: str = "cam") -> EvidenceRecipe:
    """The recipe named; `auto` is counterfactual for camkit's CAM head (the recipe under which
    each class's map points at its own object, docs/benchmarks.md#issue-20) and plain for
    fastai's head (the counterfactual recipe reads the CAM head's weights)."""
    if isinstance(recipe, EvidenceRecipe):
        return recipe
    return RECIPES[recipe_name(recipe, value(head))]


# ---------------------------------------------------------------- batch transforms

def patch_shuffle(x: Tensor, grid: int, generator: torch.Generator) -> Tensor:
    """Each image cut into a grid x grid array of tiles (the last row / column of pixels that
    do not fill a tile stay in place) and its tiles permuted, one permutation per image."""
    b, c, h, w = x.shape
    th, tw = h // grid, w // grid
    if th < 1 or tw < 1:
        raise CamkitError(f"images of {h}x{w} px are too small for a {grid}x{grid} patch shuffle")
    out = x.clone()
    tiles = x[:, :, :th * grid, :tw * grid].reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(b, grid * grid, c, th, tw)
    order = torch.stack([torch.randperm(grid * grid, generator=generator) for _ in range(b)]).to(x.device)
    tiles = tiles[torch.arange(b, device=x.device)[:, None], order]
    out[:, :, :th * grid, :tw * grid] = tiles.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5) \
        .reshape(b, c, th * grid, tw * grid)
    return out


def mosaic(x: Tensor, targets: Tensor, n: int, generator: torch.Generator, union: bool) -> tuple[Tensor, Tensor]:
    """`n` 2 x 2 mosaics, each of four random images of the batch at half size (a leftover row or
    column of an odd side stays 0, the dataset mean after normalisation). Target: the mean of
    the four targets (softmax: each class present gets its share), or their maximum (`union`,
    for per-class sigmoids: every class present is 1)."""
    b, c, h, w = x.shape
    pick = torch.randint(0, b, (n, 4), generator=generator).to(x.device)
    hh, hw = h // 2, w // 2
    small = F.interpolate(x[pick.flatten()], size=(hh, hw), mode="bilinear", align_corners=False,
                          antialias=True).view(n, 4, c, hh, hw)
    out = x.new_zeros(n, c, h, w)
    for k, (r, q) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[:, :, r * hh:(r + 1) * hh, q * hw:(q + 1) * hw] = small[:, k]
    t = targets[pick]
    return out, (t.amax(1) if union else t.mean(1))


def random_erase(x: Tensor, p: float, generator: torch.Generator, area: tuple[float, float] = (0.02, 0.33)
                 ) -> Tensor:
    """With probability p per image, one rectangle of a random area fraction and aspect ratio
    (0.3 .. 3.3) replaced by N(0, 1) noise (normalised space), as Zhong et al. / torchvision."""
    b, _, h, w = x.shape
    out = x.clone()
    for i in range(b):
        if float(torch.rand(1, generator=generator)) >= p:
            continue
        frac = area[0] + (area[1] - area[0]) * float(torch.rand(1, generator=generator))
        ratio = float(torch.exp(torch.empty(1).uniform_(-1.2, 1.2, generator=generator)))
        eh = max(1, min(h, round((frac * h * w * ratio) ** 0.5)))
        ew = max(1, min(w, round((frac * h * w / ratio) ** 0.5)))
        y0 = int(torch.randint(0, h - eh + 1, (1,), generator=generator))
        x0 = int(torch.randint(0, w - ew + 1, (1,), generator=generator))
        out[i, :, y0:y0 + eh, x0:x0 + ew] = torch.randn(out[i, :, y0:y0 + eh, x0:x0 + ew].shape,
                                                        generator=generator).to(x)
    return out


def make_batch(x: Tensor, y: Tensor, n_classes: int, recipe: EvidenceRecipe, generator: torch.Generator,
               extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One training batch of the recipe: the images (erased as asked) with one-hot targets,
    then the negatives (all-zero targets), the mosaics and `extra` (normalised images of
    neither class, all-zero targets) appended."""
    x, y = torch.Tensor(x), torch.Tensor(y).long()  # plain tensors (fastai's loader yields subclasses)
    targets = F.one_hot(y, n_classes).float()
    if recipe.erase:
        x = random_erase(x, recipe.erase, generator)
    xs, ts = [x], [targets]
    n_neg, n_mos = round(recipe.negatives * len(x)), round(recipe.mosaics * len(x))
    if n_neg:
        pick = torch.randperm(len(x), generator=generator)[:n_neg].to(x.device)
        xs.append(patch_shuffle(x[pick], recipe.grid, generator))
        ts.append(targets.new_zeros(len(pick), n_classes))
    if n_mos:
        m, t = mosaic(x, targets, n_mos, generator, union=recipe.loss == "bce")
        xs.append(m)
        ts.append(t)
    if extra is not None and len(extra):
        xs.append(extra.to(x.device, x.dtype))
        ts.append(targets.new_zeros(len(extra), n_classes))
    return torch.cat(xs), torch.cat(ts)


class RecipeBatches:
    """The training loader with the recipe applied to every batch; everything else (length,
    device, the dataset fastai reads) is the wrapped loader's."""

    def __init__(self, dl, n_classes: int, recipe: EvidenceRecipe, seed: int = 0, negatives: Tensor | None = None):
        self.dl, self.n_classes, self.recipe = dl, n_classes, recipe
        self.generator = torch.Generator().manual_seed(seed + 20)
        self.negatives = negatives  # uint8 (N, 3, S, S) or None
        self.normalizer = Normalizer(IMAGENET_STATS)
        self.per_batch = max(1, round(0.25 * getattr(dl, "bs", 32)))

    def __getattr__(self, name):
        return getattr(self.dl, name)

    def __len__(self) -> int:
        return len(self.dl)

    def to(self, device) -> "RecipeBatches":
        self.dl.to(device)
        return self

    def __iter__(self):
        for x, y in self.dl:
            extra = None
            if self.negatives is not None:
                pick = torch.randint(0, len(self.negatives), (self.per_batch,), generator=self.generator)
                extra = self.normalizer(self.negatives[pick])
            yield make_batch(x, y, self.n_classes, self.recipe, self.generator, extra)


def with_recipe(dls: DataLoaders, recipe: str | Recipe | EvidenceRecipe, n_classes: int, seed: int = 0,
                negatives: Tensor | None = None) -> DataLoaders:
    """`dls` with its training loader wrapped by the recipe and the negatives (unchanged for
    plain without negatives). A quarter of a batch of negatives joins every batch."""
    recipe = get_recipe(recipe)
    if recipe.plain and negatives is None:
        return dls
    return DataLoaders(RecipeBatches(dls.train, n_classes, recipe, seed, negatives), dls.valid, device=dls.device)


def load_negatives(folder: str | Path, size: int) -> Tensor:
    """Every readable image under `folder` (searched recursively) squished to size x size, as
    uint8 (N, 3, S, S); unreadable files are skipped with a warning, none at all is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CamkitError(f"--negatives '{folder}' is not a folder")
    files = list_images(folder)
    arrays = [resize_square(im, size) for im in (open_or_skip(f, set()) for f in files) if im is not None]
    if not arrays:
        raise CamkitError(f"--negatives '{folder}' holds no readable image")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------- counterfactual negatives

def neither_probs(logits: Tensor) -> Tensor:
    """Class probabilities under the hidden "neither": softmax over [z_1 .. z_K, 0], first K."""
    z = logits.float()
    return torch.cat([z, z.new_zeros(len(z), 1)], 1).softmax(1)[:, :-1]


def erase_evidence(x: Tensor, maps: Tensor, area: float, grid: Grid | None = None) -> Tensor:
    """Each image with the top `area` fraction of its map's pixels (upsampled as `grid` places the
    cells, camkit.core.geometry) replaced by the same image rolled by half its height and width: the
    region the map calls evidence gets the image's own texture from elsewhere (seamless on
    noise, no grey box a model could learn as "erased")."""
    h, w = x.shape[-2:]
    up = upsample(maps, (h, w), grid)
    top = up.flatten(1).topk(max(1, round(area * h * w)), dim=1).indices   # exactly that many, ties or not
    mask = torch.zeros_like(up, dtype=torch.bool).flatten(1).scatter_(1, top, True).view_as(up)[:, None]
    return torch.where(mask, torch.roll(x, shifts=(h // 2, w // 2), dims=(-2, -1)), x)


class Counterfactuals(Callback):
    """The counterfactual recipe: a quarter of each training batch again, with the region its own
    class's map calls evidence erased (`erase_evidence`), as images of neither class.

    Made from one step's forward pass (the body's output is kept by a hook, the map is
    w_c . A, free) and trained in the next step. Target of an erased image of class c: the
    hidden "neither" with weight u = max(0, p_c(x) - p_c(x')) and c with 1 - u, where p_c(x) is
    the confidence before erasing and p_c(x') after (softmax over [z, 0]). So an erasure counts
    as "neither" only by how much it removed what the model used: a class decided by the
    other's absence keeps its confidence when its (background) map region is erased, u ~ 0 and
    nothing is asked; an erased bag that the model now calls "sandal" (absence) is taught
    "neither", which makes "sandal" need evidence of its own."""
    order = 5

    def __init__(self, fraction: float, area: float, seed: int = 0):
        self.fraction, self.area = fraction, area
        self.generator = torch.Generator().manual_seed(seed + 21)
        self.pending: tuple[Tensor, Tensor, Tensor] | None = None
        self.features: Tensor | None = None
        self.handle = None
        self.n_real = 0
        self.net: nn.Module | None = None
        self.grids: dict[tuple[int, int], Grid] = {}

    def before_fit(self):
        model = getattr(self.learn.model, "module", self.learn.model)  # DDP wraps it
        self.fc = cam_linear(model)
        if self.fc is None:
            raise CamkitError("--recipe counterfactual needs camkit's CAM head (--head cam)")
        self.pending, self.handle = None, model[0].register_forward_hook(self._keep)
        self.net, self.grids = model, {}

    def _keep(self, _module, _inputs, out: Tensor) -> None:
        self.features = out.detach() if self.training else None

    def before_batch(self):
        if not self.training:
            return
        self.n_real = len(self.xb[0])
        if self.pending is not None:
            self.learn.xb = (torch.cat([self.xb[0], self.pending[0].to(self.xb[0])]),)

    def after_pred(self):
        if not self.training or self.features is None:
            return
        pred, y = self.pred.detach(), self.yb[0]
        if self.pending is not None:
            _, cls, before = self.pending
            after = neither_probs(pred[self.n_real:])[torch.arange(len(cls)), cls]
            u = (before - after).clamp(0, 1)
            self.learn.yb = (torch.cat([y, F.one_hot(cls, y.shape[1]).to(y) * (1 - u)[:, None].to(y)]),)
        self.pending = self.make(self.xb[0][:self.n_real], y, pred[:self.n_real], self.features[:self.n_real])

    def make(self, x: Tensor, y: Tensor, pred: Tensor, features: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """The next step's erased images, their classes and the confidence before erasing,
        from a random `fraction` of the images that have a single class."""
        single = torch.nonzero(y.max(1).values >= 1).flatten().cpu()
        pick = single[torch.randperm(len(single), generator=self.generator)[:round(self.fraction * len(x))]]
        if not len(pick):
            return None
        pick = pick.to(x.device)
        cls = y[pick].argmax(1)
        maps = torch.einsum("nc,nchw->nhw", self.fc.weight.detach()[cls].float(), features[pick].float())
        before = neither_probs(pred[pick])[torch.arange(len(pick)), cls]
        size = tuple(x.shape[-2:])
        if self.net is not None and size not in self.grids:  # where the map's cells look: once per size
            self.grids[size] = grid_for(probe(self.net, size, x.shape[1]), tuple(maps.shape[-2:]), size)
        return erase_evidence(x[pick], maps, self.area, self.grids.get(size)).detach(), cls, before

    def release(self):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        self.pending = self.features = None

    after_fit = release


def recipe_callbacks(recipe: str | Recipe | EvidenceRecipe, seed: int = 0) -> list[Callback]:
    """The fastai callbacks the recipe trains with (the counterfactual recipe's)."""
    recipe = get_recipe(recipe)
    return [Counterfactuals(recipe.counterfactual, recipe.area, seed)] if recipe.counterfactual else []


# ---------------------------------------------------------------- the loss

class EvidenceLoss(nn.Module):
    """Training batches (float targets (B, K)): softmax cross-entropy over [z_1 .. z_K, 0]
    against [t_1 .. t_K, 1 - sum t] — the fixed zero logit is the hidden "neither" — or, for
    bce, sum over classes of binary cross-entropy(sigmoid(z_c), t_c). Class indices (the
    validation loader): plain cross-entropy over the K logits. `reduction` as torch's
    (fastai sets 'none' for per-item losses)."""

    def __init__(self, kind: str, neither: bool, reduction: str = "mean"):
        super().__init__()
        self.kind, self.neither, self.reduction = kind, neither, reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        if not target.is_floating_point():
            loss = F.cross_entropy(logits, target.long().view(-1), reduction="none")
        elif self.kind == "bce":
            loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1)
        else:
            if self.neither:
                logits = torch.cat([logits, logits.new_zeros(len(logits), 1)], 1)
                target = torch.cat([target, (1 - target.sum(1, keepdim=True)).clamp_min(0)], 1)
            loss = -(target * logits.log_softmax(1)).sum(1)
        return loss.mean() if self.reduction == "mean" else loss.sum() if self.reduction == "sum" else loss

    # fastai's get_preds applies these to the raw outputs and decodes the predictions
    def activation(self, x: Tensor) -> Tensor:
        return F.softmax(x, dim=-1)

    def decodes(self, x: Tensor) -> Tensor:
        return x.argmax(dim=-1)


def recipe_loss(recipe: str | Recipe | EvidenceRecipe, negatives: bool = False) -> EvidenceLoss | None:
    """The recipe's loss, or None for plain without negatives (fastai's CrossEntropyLossFlat
    stays)."""
    recipe = get_recipe(recipe)
    if recipe.plain and not negatives:
        return None
    return EvidenceLoss(recipe.loss, neither=recipe.neither or negatives)
