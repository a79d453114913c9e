"""The homework's LeNet autograd walkthrough, with its claims checked rather than printed."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from camkit.errors import CamkitError


class LeNet(nn.Module):
    """conv 1->6 k5, max-pool 2, conv 6->16 k5, max-pool 2, fc 400->120->84->10, ReLU."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


@dataclass
class Walkthrough:
    network: str
    n_params: int
    first_param_size: list[int]
    output: list[float]
    loss: float
    bias_grad_before: list[float] | None
    bias_grad_after: list[float]
    lr: float
    max_abs_difference: float  # manual update vs optim.SGD, over all parameters


def walkthrough(seed: int = 0, lr: float = 0.01) -> Walkthrough:
    """Forward, MSE loss, backward and one SGD step done by hand, then the same step with
    `optim.SGD` from the same state: the two networks must end with the same weights.

    "The same" is asserted to 1e-6: the hand update rounds `grad * lr` before subtracting,
    while SGD's kernel computes `p + (-lr) * grad` fused, so the last bit can differ (the
    measured difference is reported)."""
    if lr <= 0:
        raise CamkitError(f"--lr must be positive, not {lr}")
    torch.manual_seed(seed)
    net = LeNet()
    twin = copy.deepcopy(net)
    params = list(net.parameters())
    x = torch.randn(1, 1, 32, 32)
    target = torch.randn(10).view(1, -1)
    criterion = nn.MSELoss()

    output = net(x)
    loss = criterion(output, target)
    net.zero_grad()
    before = net.conv1.bias.grad
    loss.backward()
    after = net.conv1.bias.grad.clone()
    for f in net.parameters():
        f.data.sub_(f.grad.data * lr)

    optimizer = torch.optim.SGD(twin.parameters(), lr=lr)
    optimizer.zero_grad()
    criterion(twin(x), target).backward()
    optimizer.step()
    diff = max(float((a.detach() - b.detach()).abs().max()) for a, b in zip(net.parameters(), twin.parameters()))
    if diff > 1e-6:
        raise AssertionError(f"manual SGD and optim.SGD disagree by {diff}")
    return Walkthrough(network=str(net), n_params=len(params), first_param_size=list(params[0].size()),
                       output=[round(v, 6) for v in output[0].tolist()], loss=round(float(loss.detach()), 6),
                       bias_grad_before=None if before is None else before.tolist(),
                       bias_grad_after=[round(v, 6) for v in after.tolist()], lr=lr, max_abs_difference=diff)
