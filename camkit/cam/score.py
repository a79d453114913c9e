"""Methods that weight channels by re-running the model: Score-CAM, SS-CAM, IS-CAM,
Ablation-CAM. No gradients; one extra forward per channel (per noise sample), in batches.

The score read on each pass is the target's (camkit.cam.targets). Score-CAM's paper (Wang et al.
2020, §3.2 and Algorithm 1) reads the target class's *post-softmax* probability on the masked
input and then takes a softmax of those scores over channels; pytorch-grad-cam and torchcam
read the raw logit instead. With many classes the probabilities are all small, the channel
softmax is nearly uniform and the map drifts toward the plain sum of activations: that is
the whole of the 0.976 correlation measured between camkit's Score-CAM (the paper's) and
the peers'. `score="prob"` (default, the paper) or `score="logit"` (the peers) chooses; the
masks are the peers' (each channel min-max scaled, upsampled bilinearly to the input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit.cam.base import BaseCAM, normalise
from camkit.cam.targets import OutputTarget
from camkit.errors import CamkitError


class ScoreCAM(BaseCAM):
    """Score-CAM (Wang et al. 2020): w = softmax_k(s_k), s_k = score(x * M_k), M_k = upsample(minmax(A_k)), the
    score the target's on probabilities (the paper) or logits (`score="logit"`, the peers').
    (The paper's baseline f(X_b) is a constant per image: the channel softmax cancels it.)"""

    needs_grad = False
    name = "scorecam"
    needs = "no gradients; one extra forward per channel of the layer (K passes per image)"
    peers = ("pytorch-grad-cam", "torchcam")
    batch_size = 64

    def __init__(self, model: nn.Module, layer=None, *, score: str = "prob", **options):
        if score not in ("prob", "logit"):
            raise CamkitError(f"Score-CAM's score must be 'prob' or 'logit', not '{score}'")
        super().__init__(model, layer, **options)
        self.score = score

    def weights(self, x, acts, grads, logits, target):
        return self.channel_scores(x, self.masks(acts, x), target).softmax(1)

    @staticmethod
    def masks(acts: Tensor, x: Tensor) -> Tensor:
        """(B, K, H, W): each channel min-max scaled at its own size, then upsampled (torchcam)."""
        scaled = normalise(acts.flatten(0, 1)).view_as(acts)
        return F.interpolate(scaled, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def read(self, out: Tensor, target: OutputTarget, image: int) -> Tensor:
        """The target's score on each row of a masked batch of one image."""
        out = out.float()
        if self.score == "prob" and target.classwise:
            out = out.softmax(1)
        return target(out, torch.full((len(out),), image, dtype=torch.long, device=out.device))

    def channel_scores(self, x: Tensor, masks: Tensor, target: OutputTarget, scale: float = 1.0) -> Tensor:
        """(B, K) scores of x * scale * masks, one image's channels per batch of `batch_size`."""
        b, k = masks.shape[:2]
        scores = torch.empty(b, k, device=masks.device)
        with torch.no_grad():
            for i in range(b):
                for s in range(0, k, self.batch_size):
                    m = masks[i, s:s + self.batch_size, None] * scale
                    scores[i, s:s + len(m)] = self.read(self.model(x[i:i + 1] * m.to(x.dtype)), target, i)
        return scores


class SSCAM(ScoreCAM):
    """SS-CAM (Wang et al. 2020b): Score-CAM's scores averaged over `num_samples` (35) noisy
    copies of the masks (Gaussian noise, std `std` = 2.0 on the [0, 1] masks), as torchcam."""
    name = "sscam"
    needs = "no gradients; num_samples (35) x K extra forward passes per image"
    peers = ("torchcam",)
    num_samples, std = 35, 2.0

    def weights(self, x, acts, grads, logits, target):
        masks = self.masks(acts, x)
        noise = torch.distributions.normal.Normal(0, self.std)
        total = sum(self.channel_scores(x, masks + noise.sample(masks.size()).to(masks.device), target)
                    for _ in range(self.num_samples))
        return (total / self.num_samples).softmax(1)


class ISCAM(ScoreCAM):
    """IS-CAM (Naidu et al. 2020): Score-CAM's scores integrated over the masks scaled by
    i / N, i = 1..N (`num_samples` = 10) and averaged. torchcam scales by the running sum of
    those fractions instead (1/N, 3/N, 6/N ...); `cumulative=True` reproduces it."""
    name = "iscam"
    needs = "no gradients; num_samples (10) x K extra forward passes per image"
    peers = ("torchcam",)
    num_samples, cumulative = 10, False

    def coefficients(self) -> list[float]:
        steps = [(i + 1) / self.num_samples for i in range(self.num_samples)]
        return [sum(steps[:i + 1]) for i in range(len(steps))] if self.cumulative else steps

    def weights(self, x, acts, grads, logits, target):
        masks = self.masks(acts, x)
        total = sum(self.channel_scores(x, masks, target, c) for c in self.coefficients())
        return (total / self.num_samples).softmax(1)


class AblationCAM(BaseCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020): w_k = (y - y_k) / y, y_k the score with channel k
    of the layer set to 0, as the paper (pytorch-grad-cam ablates to min - 1e7 instead when the
    layer has negative values). The layer is not run in the ablation passes and what is below
    it runs once per batch of ablations at batch size 1 (pytorch-grad-cam runs it at the
    ablation batch size)."""
    needs_grad = False
    name = "ablationcam"
    needs = "no gradients; one extra pass from the layer up per channel (K per image)"
    peers = ("pytorch-grad-cam",)
    batch_size = 64

    def weights(self, x, acts, grads, logits, target):
        b, k = acts.shape[:2]
        module, layout, raw = self.run_layer_module(), self.layout, self._raw[self.layer].detach()
        base = target(logits)
        drops = torch.empty(b, k, device=acts.device)
        state: dict = {}
        # The layer itself is not run: it hands on its saved output with channels zeroed, one copy
        # per channel, so only the part above it runs at the ablation batch.
        module.forward = lambda *_a, **_k: layout.zero_channels(state["raw"], state["channels"])
        try:
            with torch.no_grad():
                for i in range(b):
                    state["raw"] = raw[i:i + 1]
                    for s in range(0, k, self.batch_size):
                        state["channels"] = torch.arange(s, min(k, s + self.batch_size), device=acts.device)
                        out = self.model(x[i:i + 1]).float()
                        if len(out) != len(state["channels"]):
                            raise CamkitError(f"ablationcam cannot replace layer '{self.layer}' of this model")
                        rows = torch.full((len(out),), i, dtype=torch.long, device=out.device)
                        drops[i, s:s + len(out)] = target(out, rows)
        finally:
            del module.forward
        return (base[:, None] - drops) / (base[:, None] + torch.where(base[:, None] >= 0, 1e-7, -1e-7))
