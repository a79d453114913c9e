"""camkit.demo's offline data. That the default demo learns and its maps find the item is checked
once, on `camkit demo` with every default from the installed wheel
(tests/test_install.py::test_demo_learns_and_its_maps_find_the_item): the same run demo() makes,
trained once in the suite instead of twice."""

import numpy as np
import pytest

from camkit.errors import CamkitError


def test_shipped_sample_is_read_from_inside_the_package(monkeypatch):
    from camkit.data.folders import FASHION_CLASSES, load_shipped_sample
    from camkit.resources import SAMPLE, resource

    monkeypatch.delenv("CAMKIT_DATA", raising=False)
    assert resource(SAMPLE).is_file()
    images, labels = load_shipped_sample()
    assert images.shape == (2500, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [250] * len(FASHION_CLASSES)


def test_camkit_data_overrides_the_shipped_sample(monkeypatch, tmp_path):
    from camkit.data.folders import load_shipped_sample

    np.savez(tmp_path / "fashion_mnist_sample.npz", images=np.zeros((3, 28, 28), np.uint8), labels=np.array([1, 8, 8]))
    monkeypatch.setenv("CAMKIT_DATA", str(tmp_path))
    images, labels = load_shipped_sample()
    assert images.shape == (3, 28, 28) and labels.tolist() == [1, 8, 8]


def test_camkit_data_without_the_sample_is_one_clear_error(monkeypatch, tmp_path):
    from camkit.data.folders import load_shipped_sample

    monkeypatch.setenv("CAMKIT_DATA", str(tmp_path))
    with pytest.raises(CamkitError, match="CAMKIT_DATA=.* holds no fashion_mnist_sample.npz"):
        load_shipped_sample()
