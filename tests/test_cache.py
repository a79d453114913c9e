"""camkit.cache: decode once, reuse while path + size + mtime match, rebuild what fails a check."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.cache import CHECKED_ROWS, cache_key, decode_cached
from camkit.data import TensorBatches, load_folder
from camkit.errors import CamkitError

SHAPE = (3, 8, 8)


def _write(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 10, 3), value, dtype=np.uint8)).save(path)
    return path


class CountingDecode:
    """Decodes a PNG into an 8x8 CHW array whose every value is the image's first pixel; counts calls."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, path: Path) -> np.ndarray:
        self.calls.append(path.name)
        try:
            value = np.asarray(Image.open(path))[0, 0, 0]
        except OSError:
            raise CamkitError("not an image") from None
        return np.full(SHAPE, value, dtype=np.uint8)


@pytest.fixture
def files(tmp_path) -> list[Path]:
    return [_write(tmp_path / "data" / f"{i}.png", 10 * i) for i in range(6)]


def _values(rows) -> list[int]:
    return [int(r[0, 0, 0]) for r in rows.images]


def test_first_call_decodes_every_file_in_input_order(tmp_path, files):
    decode = CountingDecode()
    rows = decode_cached(tmp_path / "c", "k", files, SHAPE, decode)
    assert rows.decoded == 6 and sorted(decode.calls) == sorted(f.name for f in files)
    assert _values(rows) == [0, 10, 20, 30, 40, 50] and rows.errors == [None] * 6
    assert isinstance(rows.images, np.memmap) and rows.images.shape == (6, *SHAPE)


def test_second_call_decodes_nothing_and_maps_the_same_rows(tmp_path, files):
    decode_cached(tmp_path / "c", "k", files, SHAPE, CountingDecode())
    again = CountingDecode()
    rows = decode_cached(tmp_path / "c", "k", files, SHAPE, again)
    assert rows.decoded == 0 and again.calls == []
    assert _values(rows) == [0, 10, 20, 30, 40, 50]


def test_a_changed_file_is_decoded_again_and_only_it(tmp_path, files):
    decode_cached(tmp_path / "c", "k", files, SHAPE, CountingDecode())
    _write(files[2], 99)
    st = files[2].stat()
    os.utime(files[2], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))  # a new mtime even on coarse clocks
    decode = CountingDecode()
    rows = decode_cached(tmp_path / "c", "k", files, SHAPE, decode)
    assert decode.calls == ["2.png"] and rows.decoded == 1
    assert _values(rows) == [0, 10, 99, 30, 40, 50]


def test_added_and_removed_files_keep_input_order(tmp_path, files):
    decode_cached(tmp_path / "c", "k", files, SHAPE, CountingDecode())
    new = _write(tmp_path / "data" / "new.png", 77)
    decode = CountingDecode()
    rows = decode_cached(tmp_path / "c", "k", [files[4], new, files[0]], SHAPE, decode)
    assert decode.calls == ["new.png"] and _values(rows) == [40, 77, 0]
    assert len(list((tmp_path / "c").glob("k-*.u8"))) == 1  # the superseded data file is gone


def test_an_unreadable_file_is_skipped_with_its_reason_and_not_retried(tmp_path, files):
    bad = tmp_path / "data" / "bad.png"
    bad.write_bytes(b"not a png")
    first = decode_cached(tmp_path / "c", "k", [files[0], bad, files[1]], SHAPE, CountingDecode())
    assert first.errors == [None, "not an image", None] and _values(first) == [0, 10]
    again = CountingDecode()
    second = decode_cached(tmp_path / "c", "k", [files[0], bad, files[1]], SHAPE, again)
    assert again.calls == [] and second.errors == [None, "not an image", None]


@pytest.mark.parametrize("damage", ["index_not_json", "index_other_shape", "data_truncated", "data_overwritten"])
def test_a_damaged_cache_is_rebuilt_not_trusted(tmp_path, files, damage):
    folder = tmp_path / "c"
    decode_cached(folder, "k", files, SHAPE, CountingDecode())
    index = folder / "k.json"
    data = next(folder.glob("k-*.u8"))
    if damage == "index_not_json":
        index.write_text("{broken")
    elif damage == "index_other_shape":
        meta = json.loads(index.read_text())
        index.write_text(json.dumps({**meta, "shape": [3, 4, 16]}))
    elif damage == "data_truncated":
        data.write_bytes(data.read_bytes()[:-1])
    else:
        data.write_bytes(bytes([255]) * data.stat().st_size)  # same length, wrong content
    decode = CountingDecode()
    rows = decode_cached(folder, "k", files, SHAPE, decode)
    assert rows.decoded == 6 and _values(rows) == [0, 10, 20, 30, 40, 50]


def test_every_row_is_checked_up_to_the_sample_size(tmp_path, files):
    decode_cached(tmp_path / "c", "k", files, SHAPE, CountingDecode())
    checks = json.loads((tmp_path / "c" / "k.json").read_text())["checks"]
    assert [r for r, _ in checks] == list(range(min(6, CHECKED_ROWS)))


def test_a_build_that_fails_leaves_the_previous_cache_whole(tmp_path, files):
    folder = tmp_path / "c"
    decode_cached(folder, "k", files, SHAPE, CountingDecode())
    before = sorted(p.name for p in folder.iterdir())
    new = _write(tmp_path / "data" / "new.png", 5)

    def interrupted(path: Path) -> np.ndarray:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        decode_cached(folder, "k", [*files, new], SHAPE, interrupted)
    assert sorted(p.name for p in folder.iterdir()) == before  # no temp or half-written file left
    rows = decode_cached(folder, "k", files, SHAPE, CountingDecode())
    assert rows.decoded == 0 and _values(rows) == [0, 10, 20, 30, 40, 50]


def test_cache_folder_that_is_a_file_is_one_clear_error(tmp_path, files):
    (tmp_path / "c").write_text("mine")
    with pytest.raises(CamkitError, match="is a file"):
        decode_cached(tmp_path / "c", "k", files, SHAPE, CountingDecode())
    assert (tmp_path / "c").read_text() == "mine"


def test_keys_differ_by_size_and_dataset():
    assert len({cache_key("/a", 32, "squish"), cache_key("/a", 64, "squish"), cache_key("/b", 32, "squish")}) == 3


# ---------------------------------------------------------------- through camkit.data

def test_load_folder_from_the_cache_equals_the_in_memory_decode(canvas_dir, tmp_path):
    memory = load_folder(canvas_dir, 32)
    cached = load_folder(canvas_dir, 32, cache=tmp_path / "c")
    assert cached.mapped and cached.decoded == len(memory.files)
    assert torch.equal(cached.images, memory.images) and torch.equal(cached.labels, memory.labels)
    assert cached.files == memory.files and cached.classes == memory.classes
    assert load_folder(canvas_dir, 32, cache=tmp_path / "c").decoded == 0


def test_batches_from_the_map_equal_batches_from_a_copied_subset(canvas_dir, tmp_path):
    data = load_folder(canvas_dir, 32, cache=tmp_path / "c")
    rows = torch.arange(3, 40, 2)
    mapped = TensorBatches(data.images, data.labels[rows], bs=8, shuffle=True, aug="flip", seed=3, rows=rows)
    copied = TensorBatches(data.images[rows].clone(), data.labels[rows], bs=8, shuffle=True, aug="flip", seed=3)
    for (xa, ya), (xb, yb) in zip(mapped, copied, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_released_pages_of_the_map_read_back_the_same(tmp_path, files):
    from camkit.cache import release_rows

    rows = decode_cached(tmp_path / "c", "k", files, SHAPE, CountingDecode())
    images = torch.from_numpy(rows.images)
    release_rows(images.data_ptr(), images[0].numel(), range(6))
    assert [int(images[i].max()) for i in range(6)] == [0, 10, 20, 30, 40, 50]


def test_release_leaves_memory_it_did_not_map_alone():
    from camkit.cache import release_rows

    plain = torch.full((64, 4096), 7, dtype=torch.uint8)   # anonymous memory: DONTNEED would zero it
    release_rows(plain.data_ptr(), 4096, range(64))
    assert int(plain.min()) == 7
