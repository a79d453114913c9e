"""Files camkit reads at run time, shipped inside the package and read with importlib.resources,
so an installed wheel, an sdist install and a checkout find them alike.

    fashion_mnist_sample.npz   2,500 Fashion-MNIST test items (the demo's and the exam notebook's
                               offline data); README.md: their source and MIT licence
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; 3.10 has the same class in importlib.abc

SAMPLE = "fashion_mnist_sample.npz"


def resource(name: str) -> Traversable:
    """A file shipped in camkit/resources/ (open it with `.open("rb")`; it may live in a zip)."""
    return resources.files(__name__) / name
