"""camkit.data.cache: decode once, reuse while a file's stamp matches, rebuild what fails a check,
one builder per key (real processes, a real SIGKILL)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.data.cache import STALE_TEMP_S, cache_key, decode_cached
from camkit.data.folders import TensorBatches, load_folder
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


def test_damage_anywhere_in_the_data_file_is_caught(tmp_path):
    """One byte changed in the middle row of 40 (the crc32 covers every byte), the file's
    mtime set back: rebuilt, not trusted."""
    files = [_write(tmp_path / "data" / f"{i}.png", i) for i in range(40)]
    folder = tmp_path / "c"
    decode_cached(folder, "k", files, SHAPE, CountingDecode())
    data = next(folder.glob("k-*.u8"))
    st = data.stat()
    with open(data, "r+b") as f:
        f.seek(20 * int(np.prod(SHAPE)) + 7)
        f.write(b"\xff")
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    rows = decode_cached(folder, "k", files, SHAPE, CountingDecode())
    assert rows.decoded == 40 and _values(rows) == list(range(40))


def test_a_same_size_same_mtime_rewrite_is_decoded_again(tmp_path, files):
    decode_cached(tmp_path / "c", "k", files, SHAPE, CountingDecode())
    st = files[3].stat()
    _write(files[3], 99)   # a uniform 12x10 PNG: the same size as the one it replaces
    os.utime(files[3], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert files[3].stat().st_size == st.st_size and files[3].stat().st_mtime_ns == st.st_mtime_ns
    decode = CountingDecode()
    rows = decode_cached(tmp_path / "c", "k", files, SHAPE, decode)
    assert decode.calls == ["3.png"] and _values(rows) == [0, 10, 20, 99, 40, 50]


def test_a_copied_cache_is_read_in_full_once_then_trusted(tmp_path, files):
    """A copy has a new identity (inode, ctime): its crc32 is checked over every byte, matches,
    and is recorded, so the next open is one stat again."""
    decode_cached(tmp_path / "c", "k", files, SHAPE, CountingDecode())
    shutil.copytree(tmp_path / "c", tmp_path / "copy")
    before = json.loads((tmp_path / "copy" / "k.json").read_text())["identity"]
    rows = decode_cached(tmp_path / "copy", "k", files, SHAPE, CountingDecode())
    assert rows.decoded == 0 and _values(rows) == [0, 10, 20, 30, 40, 50]
    after = json.loads((tmp_path / "copy" / "k.json").read_text())["identity"]
    assert after != before and after[1] == next((tmp_path / "copy").glob("k-*.u8")).stat().st_ino


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


def test_a_data_file_renamed_in_by_a_build_killed_before_its_index_is_removed(tmp_path, files):
    folder = tmp_path / "c"
    decode_cached(folder, "k", files, SHAPE, CountingDecode())
    kept = next(folder.glob("k-*.u8"))
    orphan = folder / "k-0123456789ab.u8"
    orphan.write_bytes(kept.read_bytes())
    rows = decode_cached(folder, "k", files, SHAPE, CountingDecode())
    assert rows.decoded == 0 and not orphan.exists() and list(folder.glob("k-*.u8")) == [kept]


def test_cache_folder_that_is_a_file_is_one_clear_error(tmp_path, files):
    (tmp_path / "c").write_text("mine")
    with pytest.raises(CamkitError, match="is a file"):
        decode_cached(tmp_path / "c", "k", files, SHAPE, CountingDecode())
    assert (tmp_path / "c").read_text() == "mine"


def test_keys_differ_by_size_and_dataset():
    assert len({cache_key("/a", 32, "squish"), cache_key("/a", 64, "squish"), cache_key("/b", 32, "squish")}) == 3


# ---------------------------------------------------------------- concurrent and killed builders (real processes)

BUILDER = r"""
import sys, time
from pathlib import Path
import numpy as np
from PIL import Image
from camkit.data.cache import decode_cached
folder, key, marks, *names = sys.argv[1:]
marks = Path(marks)
def decode(path):
    (marks / "started").touch()
    while not (marks / "go").exists():   # the test says when this build may go on
        time.sleep(0.02)
    return np.full((3, 8, 8), np.asarray(Image.open(path))[0, 0, 0], dtype=np.uint8)
rows = decode_cached(folder, key, [Path(n) for n in names], (3, 8, 8), decode, workers=1)
print(rows.decoded, [int(r[0, 0, 0]) for r in rows.images])
"""


def _builder(folder: Path, key: str, marks: Path, files: list[Path], stderr=subprocess.PIPE) -> subprocess.Popen:
    marks.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", BUILDER, str(folder), key, str(marks), *map(str, files)],
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


def _wait_for(condition, what: str, limit: float = 60) -> None:
    end = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.02)


def test_two_processes_building_the_same_key_take_turns(tmp_path, files):
    """The second builder waits on the key's lock, then finds the first one's cache: nothing
    decoded twice, no file of one removed by the other (it was: FileNotFoundError, 1 of 3)."""
    folder = tmp_path / "c"
    first = _builder(folder, "k", tmp_path / "m1", files)
    _wait_for(lambda: (tmp_path / "m1" / "started").exists(), "the first build")
    log = tmp_path / "second.err"
    with open(log, "w") as err:
        second = _builder(folder, "k", tmp_path / "m2", files, stderr=err)
        _wait_for(lambda: "waiting for another process" in log.read_text(), "the second builder to wait")
    (tmp_path / "m1" / "go").touch()
    (tmp_path / "m2" / "go").touch()
    out1, err1 = first.communicate(timeout=120)
    out2, _ = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, (err1, log.read_text())
    assert out1.split(" ", 1) == ["6", "[0, 10, 20, 30, 40, 50]\n"]
    assert out2.split(" ", 1) == ["0", "[0, 10, 20, 30, 40, 50]\n"]
    assert len(list(folder.glob("k-*.u8"))) == 1 and not list(folder.glob(".camkit-tmp-*"))
    assert decode_cached(folder, "k", files, SHAPE, CountingDecode()).decoded == 0


@pytest.mark.parametrize("next_key", ["k", "other"])
def test_a_build_killed_by_sigkill_leaves_no_temp_file_behind(tmp_path, files, next_key):
    """kill -9 mid-build leaves its temp data file; the next call for the same key removes it at
    once (it holds the key's lock, so no build of it runs), a call for another key once it is
    older than STALE_TEMP_S and its lock is free."""
    folder = tmp_path / "c"
    build = _builder(folder, "k", tmp_path / "m", files)
    _wait_for(lambda: (tmp_path / "m" / "started").exists(), "the build")
    os.kill(build.pid, signal.SIGKILL)
    build.communicate(timeout=60)
    assert build.returncode == -signal.SIGKILL
    [left] = folder.glob(".camkit-tmp-*-k-*.u8")
    rows = decode_cached(folder, next_key, files, SHAPE, CountingDecode())
    assert rows.decoded == 6 and _values(rows) == [0, 10, 20, 30, 40, 50]
    if next_key == "other":
        assert left.exists()   # young: it could be a build still running elsewhere
        old = time.time() - 2 * STALE_TEMP_S
        os.utime(left, (old, old))
        assert decode_cached(folder, next_key, files, SHAPE, CountingDecode()).decoded == 0
    assert not left.exists() and not list(folder.glob(".camkit-tmp-*"))


# ---------------------------------------------------------------- through camkit.data.folders

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
    from camkit.data.cache import release_rows

    rows = decode_cached(tmp_path / "c", "k", files, SHAPE, CountingDecode())
    images = torch.from_numpy(rows.images)
    release_rows(images.data_ptr(), images[0].numel(), range(6))
    assert [int(images[i].max()) for i in range(6)] == [0, 10, 20, 30, 40, 50]


def test_release_leaves_memory_it_did_not_map_alone():
    from camkit.data.cache import release_rows

    plain = torch.full((64, 4096), 7, dtype=torch.uint8)   # anonymous memory: DONTNEED would zero it
    release_rows(plain.data_ptr(), 4096, range(64))
    assert int(plain.min()) == 7
