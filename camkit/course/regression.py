"""The exam's linear-regression optimiser trace: Adam, then SGD continuing from Adam's result.

Defaults reproduce the printed reference bit for bit on CPU: first gradient
[[-15.7290, 14.7198]], weight after it [[-4.9000, 9.9000]], after 5 Adam updates
[[-4.5006, 9.5008]], after 10 more SGD updates [[2.4925, 3.9607]].
"""

from __future__ import annotations

import math
from pathlib import Path

from dataclasses import asdict, dataclass, field

import torch

from camkit.core.files import ensure_writable_dir
from camkit.errors import CamkitError

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


@dataclass
class Step:
    optimizer: str
    step: int
    grad: list[float]
    weight: list[float]
    loss: float


@dataclass
class Trace:
    steps: list[Step]
    x: list[float]
    y: list[float]
    ols: list[float]
    final_grad_norm: float
    verdict: str = ""
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_schedule(schedule: str) -> list[tuple[str, float, int]]:
    """'adam:0.1:5,sgd:0.2:10' -> [('adam', 0.1, 5), ('sgd', 0.2, 10)]."""
    phases = []
    for part in schedule.split(","):
        bits = part.strip().split(":")
        if len(bits) != 3 or bits[0].lower() not in OPTIMIZERS:
            raise CamkitError(f"schedule phase '{part}' must be OPTIMIZER:LR:STEPS with OPTIMIZER in "
                              f"{', '.join(OPTIMIZERS)}")
        try:
            lr, steps = float(bits[1]), int(bits[2])
        except ValueError:
            raise CamkitError(f"schedule phase '{part}': LR must be a number and STEPS an integer") from None
        if lr <= 0 or steps < 0:
            raise CamkitError(f"schedule phase '{part}': LR must be positive and STEPS not negative")
        phases.append((bits[0].lower(), lr, steps))
    return phases


def parse_pair(text: str, what: str) -> tuple[float, float]:
    """'-5.0,10.0' -> (-5.0, 10.0): two finite numbers."""
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise CamkitError(f"{what} must be two numbers like -5.0,10.0, not '{text}'") from None
    if not all(math.isfinite(v) for v in (a, b)):
        raise CamkitError(f"{what} must be two finite numbers, not '{text}'")
    return a, b


def trace(seed: int = 7676, n: int = 100, intercept: float = 2.5, slope: float = 4.0, noise: float = 0.5,
          init: tuple[float, float] = (-5.0, 10.0), schedule: str = "adam:0.1:5,sgd:0.2:10") -> Trace:
    """Run the loop (forward, loss, backward, step + zero_grad) and record every step."""
    if n < 2:
        raise CamkitError(f"--n must be at least 2, not {n}")
    phases = parse_schedule(schedule)
    torch.manual_seed(seed)
    x = torch.randn(n).sort().values
    eps = torch.randn(n) * noise
    y = intercept + slope * x + eps
    X = torch.stack([torch.ones(n), x], dim=1)
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([list(init)]))
    steps: list[Step] = []
    grad = torch.zeros(1, 2)
    for name, lr, count in phases:
        optimizer = OPTIMIZERS[name](model.parameters(), lr=lr)
        for _ in range(count):
            yhat = model(X).squeeze(1)                  # step 1: forward
            loss = torch.mean((y - yhat) ** 2)          # step 2: loss
            loss.backward()                             # step 3: backward
            grad = model.weight.grad.detach().clone()
            optimizer.step()                            # step 4: update, then clear
            optimizer.zero_grad()
            steps.append(Step(name, len(steps) + 1, grad[0].tolist(), model.weight.detach()[0].tolist(),
                              float(loss.detach())))
    # gradient at the final weights, for the verdict
    final_loss = torch.mean((y - model(X).squeeze(1)) ** 2)
    final_loss.backward()
    final_grad = model.weight.grad.detach()[0]
    ols = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]
    norm = float(final_grad.norm())
    first = float(torch.tensor(steps[0].grad).norm()) if steps else norm
    w = model.weight.detach()[0]
    near_zero = norm <= 0.01 * first
    verdict = (f"final weight [{w[0]:.4f}, {w[1]:.4f}]; the gradient there has norm {norm:.4f}, "
               f"{norm / first:.2%} of the first gradient's. "
               + ("That is near zero, and the MSE of a linear model is convex in its weights, so a point "
                  "with zero gradient is the global minimum: the optimisers have essentially found it. "
                  if near_zero else
                  "That is not yet near zero; the MSE of a linear model is convex, so further steps would "
                  "still head to its one global minimum. ")
               + f"Ordinary least squares (torch.linalg.lstsq) gives [{ols[0]:.4f}, {ols[1]:.4f}], "
               f"{float((w - ols).norm()):.4f} away.")
    return Trace(steps, x.tolist(), y.tolist(), ols.tolist(), norm, verdict,
                 dict(seed=seed, n=n, intercept=intercept, slope=slope, noise=noise, init=list(init),
                      schedule=schedule))


def fmt(values: list[float]) -> str:
    """The course's print format, as torch prints a (1, 2) tensor at 4 decimals:
    tensor([[-15.7290,  14.7198]])."""
    cells = [f"{v:.4f}" for v in values]
    width = max(map(len, cells))
    return "tensor([[" + ", ".join(c.rjust(width) for c in cells) + "]])"


def render(t: Trace) -> str:
    lines = []
    for s in t.steps:
        lines.append(f"[{s.optimizer} step {s.step}] loss {s.loss:.4f}")
        lines.append(f"  step3 grad:   {fmt(s.grad)}")
        lines.append(f"  step4 weight: {fmt(s.weight)}")
    lines.append(t.verdict)
    return "\n".join(lines)


def plot(t: Trace, path, show_steps: tuple[int, ...] = ()) -> None:
    """Data with the fitted line after chosen steps (default: first, end of each phase), and the
    loss and gradient norm per step."""
    from camkit.core.plots import plt, _save

    ensure_writable_dir(Path(path).parent, "folder for --plot")
    show = show_steps or tuple(sorted({1, len(t.steps)} | {i + 1 for i, (a, b) in
                                       enumerate(zip(t.steps, t.steps[1:])) if a.optimizer != b.optimizer}))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.scatter(t.x, t.y, s=10, color="grey", label="data")
    xs = torch.tensor([min(t.x), max(t.x)])
    for k in show:
        if 1 <= k <= len(t.steps):
            w = t.steps[k - 1].weight
            ax1.plot(xs, w[0] + w[1] * xs, label=f"after step {k} ({t.steps[k - 1].optimizer})")
    ax1.plot(xs, t.ols[0] + t.ols[1] * xs, "k--", label="OLS")
    ax1.legend(fontsize=8)
    ax1.set_xlabel("x")
    ax1.set_ylabel("y")
    steps = [s.step for s in t.steps]
    ax2.plot(steps, [s.loss for s in t.steps], "o-", label="loss")
    ax2.plot(steps, [float(torch.tensor(s.grad).norm()) for s in t.steps], "s-", label="gradient norm")
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    ax2.legend()
    _save(fig, path)
