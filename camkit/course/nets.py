"""The course's networks: the MNIST homework net, the CIFAR-10 tutorial net with the variant
switches, and the two variant architectures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MnistNet(nn.Module):
    """Homework net: conv1 1->10 k5, conv2 10->20 k5 with Dropout2d(0.1), fc1 320->50, fc2 50->10,
    log_softmax (trained with NLL loss)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(0.1)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 320)
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)


class CifarNet(nn.Module):
    """PyTorch's CIFAR-10 tutorial classifier: conv 3->6 k5, max-pool 2, conv 6->16 k5,
    fc 400->120->84->10. Switches for variants: BatchNorm after every conv (5), dropout p=0.1
    after fc2 (6), Xavier-uniform FC init (7), log_softmax output for NLL loss (8)."""

    def __init__(self, n_classes: int = 10, batchnorm: bool = False, dropout: float = 0.0,
                 xavier: bool = False, log_softmax: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.bn1 = nn.BatchNorm2d(6) if batchnorm else nn.Identity()
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.bn2 = nn.BatchNorm2d(16) if batchnorm else nn.Identity()
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc3 = nn.Linear(84, n_classes)
        self.log_softmax = log_softmax
        if xavier:
            for fc in (self.fc1, self.fc2, self.fc3):
                nn.init.xavier_uniform_(fc.weight)
                nn.init.zeros_(fc.bias)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.drop(F.relu(self.fc2(x)))
        x = self.fc3(x)
        return F.log_softmax(x, dim=1) if self.log_softmax else x


def _conv(cin: int, cout: int, pad: int = 0, bn: bool = False) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=pad)] + ([nn.BatchNorm2d(cout), nn.ReLU()] if bn else [])


def variant1(n_classes: int = 10) -> nn.Sequential:
    """INPUT-CONV(32,3x3)-CONV(32,3x3)-RELU-POOL-CONV(32,3x3)-CONV(32,3x3)-RELU-MAXPOOL-FC-OUTPUT
    (POOL taken as 2x2 max pooling; 32 -> 30 -> 28 -> 14 -> 12 -> 10 -> 5)."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 5 * 5, n_classes))


def variant2(n_classes: int = 10) -> nn.Sequential:
    """m1 = CONV(32,3x3,pad 1)-BN-ReLU, m2 = CONV(128,3x3,pad 1)-BN-ReLU;
    INPUT-CONV(32,3x3)-ReLU-m1-MAXPOOL-m1-MAXPOOL-CONV(128,3x3)-ReLU-m2-m2-m2-GAP-FC(128xclasses)."""
    def m1():
        return _conv(32, 32, 1, bn=True)

    def m2():
        return _conv(128, 128, 1, bn=True)

    return nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), *m1(), nn.MaxPool2d(2), *m1(), nn.MaxPool2d(2),
        nn.Conv2d(32, 128, 3), nn.ReLU(), *m2(), *m2(), *m2(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, n_classes))


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
