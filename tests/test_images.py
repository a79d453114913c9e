"""camkit.core.images' decode-and-batch path (the one predict, explain and cam-eval share): what an
unreadable file means is decided where the list is made, chunks keep each image's position."""

import warnings

import numpy as np
import pytest
from PIL import Image

from camkit.core.images import ImageFiles, decoded_batches
from camkit.errors import CamkitError


def _square(image):
    return np.asarray(image.resize((2, 2)), dtype=np.uint8)


def _folder(tmp_path, broken: set[int], n: int = 6):
    """n PNGs of widths 10..10+n-1 (sorted by name), those in `broken` not images at all."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(n):
        path = folder / f"{i}.png"
        if i in broken:
            path.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
        else:
            Image.new("RGB", (10 + i, 7), (i, 0, 0)).save(path)
    return folder


def test_a_file_found_in_a_folder_is_skipped_with_a_warning_and_a_named_one_refused(tmp_path):
    folder = _folder(tmp_path, broken={1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = list(decoded_batches(ImageFiles.collect([folder]), _square, np.stack, bs=4))
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and said[0].startswith(f"skipping {folder / '1.png'}: not a readable image"), said
    assert [[d.index for d in b.items] for b in got] == [[0, 2, 3], [4, 5]]
    named = ImageFiles.collect([folder / "0.png", folder / "1.png"])    # named on the command line
    for files in (named, ImageFiles.required(sorted(folder.iterdir()))):
        with pytest.raises(CamkitError, match=r"1\.png: not a readable image"):
            list(decoded_batches(files, _square, np.stack, bs=4))


def test_batches_keep_each_images_position_size_and_fed_square(tmp_path):
    folder = _folder(tmp_path, broken={3})
    files = ImageFiles.collect([folder])
    with pytest.warns(UserWarning, match="skipping"):
        got = list(decoded_batches(files, _square, np.stack, bs=2, part=range(1, 6), keep=lambda im: im.mode))
    assert [[d.index for d in b.items] for b in got] == [[1, 2], [4], [5]]   # the chunk (3, 4) lost 3
    for b in got:
        assert b.x.shape == (len(b.items), 2, 2, 3) and b.x.dtype == np.uint8
        for row, d in zip(b.x, b.items):
            assert d.path == files[d.index] and d.size == (10 + d.index, 7) and d.kept == "RGB"
            assert row[0, 0, 0] == d.index   # the square of this very image
