"""A decode-once cache on disk: decoded, resized uint8 images in one memory-mapped file.

    rows = decode_cached("cache/", "pets-224", files, (3, 224, 224), decode)
    rows.images            # (n readable, 3, 224, 224) uint8, memory-mapped: pages come from disk
    rows.errors[i]         # None, or why files[i] could not be decoded (not in images)
    rows.decoded           # how many files this call decoded (0 when nothing changed)

Decoding every image into one in-memory tensor costs about 3x the decoded size at its peak
(the `np.stack` and `contiguous` copies) and keeps it for the whole run; a memory map keeps
resident memory roughly flat as the dataset grows, the OS page cache doing the rest.

    DIR/KEY.json              the index, written last: format, row shape, data file, the crc32
                              of the whole data file and the data file's identity when that crc
                              was taken, per input file its stamp and row or reason
    DIR/KEY-TOKEN.u8          the rows, raw uint8, in the order of the files given
    DIR/KEY.lock              held (flock) by the process checking or building KEY

A file is reused while its stamp (absolute path, size, mtime_ns, inode, ctime_ns) is unchanged,
and decoded again when it changed: a second call over the same folder decodes nothing. The
ctime and inode catch what size and mtime miss (a file rewritten with the same size, its mtime
set back, or another file renamed over it): the kernel sets ctime on every write, truncation or
rename, and no program can set it back.

When anything changed (a file added, removed, modified, or the order), a new data file is
written under a unique temp name beside the old one (rows still valid are copied, not decoded),
renamed into place, and the index is swapped in atomically, so a killed build leaves the
previous cache whole. Nothing is trusted that fails a check: an index that is not JSON, or of
another format or row shape, or a data file of the wrong length or whose crc32 over every byte
differs, means a rebuild. The crc32 is taken while the rows are written and read again in full
only when the data file's identity (device, inode, size, mtime_ns, ctime_ns) is not the one
recorded with it - any write to the file changes its ctime - so a warm open costs one stat,
and a cache copied elsewhere is read once in full (about 1.4 GB/s here) before it is trusted.

Every check-and-build of a key holds an exclusive lock on DIR/KEY.lock (fcntl.flock, released
by the kernel when its process dies, even by kill -9): a second process building the same key
waits, then finds the first one's cache and decodes nothing, and no builder removes another's
file. A temp file left by a killed build is removed by the next call for its key, and one of
another key once it is older than STALE_TEMP_S and that key's lock is free. Without fcntl
(Windows) there is no lock: one builder at a time is then the caller's job.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from camkit.core.files import (TMP_PREFIX, WRITE_ERRNOS, atomic_write, ensure_writable_dir, os_error_line, parse_json,
                               temp_path)
from camkit.errors import CamkitError

try:
    import fcntl
except ImportError:    # pragma: no cover  (Windows: no lock, see the module docstring)
    fcntl = None

CACHE_FORMAT = "camkit-decode-cache/2"
CHUNK = 256            # files decoded per step while building: bounds the memory of a build
STALE_TEMP_S = 600     # a temp file of another key this old, its lock free, is a killed build's
_READ_BLOCK = 1 << 24  # bytes per read while verifying a data file's crc32

Stamp = tuple[str, int, int, int, int]   # (absolute path, size in bytes, mtime_ns, inode, ctime_ns)
STAMP_LEN = 5


@dataclass
class CachedRows:
    """What `decode_cached` returns: the rows of the readable files (input order), per input
    file None or the reason it was skipped, and how many files this call decoded."""
    images: np.ndarray
    errors: list[str | None]
    decoded: int
    path: Path


_MADV_DONTNEED = 4     # Linux's value; release_rows is a no-op where madvise is not found
_PAGE = 4096
_FAULT_AROUND = 65536  # Linux maps up to 64 KB of cached neighbours on each fault of a file map


def _libc_madvise() -> Callable[..., int] | None:
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


_madvise = _libc_madvise()
_MAPPED: dict[int, int] = {}   # start address -> length of the copy-on-write maps this module made


def _register(images: np.ndarray) -> np.ndarray:
    """Remember a read-only map's address range (until it is freed), so release_rows can
    refuse any other memory: MADV_DONTNEED on anonymous memory would zero it."""
    import weakref

    ptr = images.ctypes.data
    _MAPPED[ptr] = images.nbytes
    weakref.finalize(images, _MAPPED.pop, ptr, None)
    return images


def release_rows(base_ptr: int, row_bytes: int, rows: Sequence[int]) -> None:
    """Unmap from this process the pages of `rows` of a read-only copy-on-write memory map
    starting at `base_ptr`, once a batch has been copied out of them (madvise MADV_DONTNEED,
    the range widened to whole pages). Pages read through a map count in the process's RSS
    until unmapped, so without this one epoch over the cache would make RSS the size of the
    dataset again; the data stays in the OS page cache and a later read is a minor fault.
    The range is widened by the kernel's fault-around window on each side, which maps pages of
    neighbouring rows too (measured: without it 16,000 rows at 224 px left ~600 MB mapped).
    Only maps made here (and alive) are touched; any other address is left alone. Nothing
    writes into these maps (a written copy-on-write page would be lost)."""
    length = _MAPPED.get(base_ptr)
    if _madvise is None or length is None or any(not 0 <= r < length // max(row_bytes, 1) for r in rows):
        return
    for r in rows:
        start = max(base_ptr, base_ptr + r * row_bytes - _FAULT_AROUND) // _PAGE * _PAGE
        end = min(base_ptr + length, base_ptr + (r + 1) * row_bytes + _FAULT_AROUND)
        _madvise(start, end - start, _MADV_DONTNEED)


def cache_key(*parts: Any) -> str:
    """A file-name-safe key for a dataset and its decoding, e.g. (resolved root, size, resize)."""
    return hashlib.sha256("|".join(map(str, (CACHE_FORMAT, *parts))).encode()).hexdigest()[:20]


def stamp(path: Path) -> Stamp:
    """(absolute path, size, mtime_ns, inode, ctime_ns): a file whose stamp is unchanged is not
    decoded again. One stat, as before the inode and ctime were added (measured in
    docs/benchmarks.md); the path is made absolute, not resolved (no symlink walk: the folder
    scan before it already confined the files to their dataset)."""
    st = path.stat()
    return os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def decode_cached(folder: str | Path, key: str, files: Sequence[Path], shape: tuple[int, ...],
                  decode: Callable[[Path], np.ndarray], workers: int | None = None) -> CachedRows:
    """Rows of `decode(file)` for every file, from the cache in `folder` where their stamps
    match, decoding (in threads) only the files that are new or changed. `decode` returns a
    uint8 array of `shape` or raises CamkitError (the file is skipped, its reason kept, and it
    is not retried until it changes). Holds the key's lock from the check to the end of a build."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CamkitError(f"--cache '{folder}' is a file, not a folder")
    ensure_writable_dir(folder, "cache folder")
    stamps = [stamp(Path(f)) for f in files]
    with _locked(folder, key):
        _remove_killed_builds(folder, key)
        old = open_index(folder, key, shape)
        if old is not None and [tuple(e[:STAMP_LEN]) for e in old.entries] == stamps:
            _remove_stale(folder, key, keep=old.data)   # one renamed in by a build killed before its index
            return CachedRows(old.images, [e[STAMP_LEN + 1] for e in old.entries], 0, old.data)
        try:
            return _build(folder, key, list(files), stamps, shape, decode, old, workers)
        except OSError as e:
            if e.errno not in WRITE_ERRNOS:   # reading an image, say: not the cache's to explain
                raise
            raise CamkitError(os_error_line(e, f"the decode cache in '{folder}'")) from None


def _lock_path(folder: Path, key: str) -> Path:
    return folder / f"{key}.lock"


@contextmanager
def _locked(folder: Path, key: str) -> Iterator[None]:
    """Hold the exclusive lock of `key` (waiting, with one warning line, while another process
    holds it). The lock file stays: removing it would let two processes lock two files."""
    if fcntl is None:   # pragma: no cover
        yield
        return
    fd = os.open(_lock_path(folder, key), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            warnings.warn(f"waiting for another process building the decode cache in '{folder}'", stacklevel=4)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)    # closing the descriptor releases the lock


def _lock_free(folder: Path, key: str) -> bool:
    """Whether no process holds `key`'s lock now (True when it has no lock file)."""
    if fcntl is None:   # pragma: no cover
        return False
    try:
        fd = os.open(_lock_path(folder, key), os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


# what files.temp_path names this module's temp files: the data file KEY-TOKEN.u8, the index KEY.json
_TEMP = re.compile(rf"^{re.escape(TMP_PREFIX)}[0-9a-f]{{12}}-(?P<key>.+?)(?:-[0-9a-f]{{12}}\.u8|\.json)$")


def _remove_killed_builds(folder: Path, key: str) -> None:
    """Remove the temp files a killed build left (camkit's own, never a user's): every one of
    `key`, whose lock this process holds, so no build of it is running; one of another key
    when older than STALE_TEMP_S and that key's lock is free."""
    now = time.time()
    for p in folder.glob(f"{TMP_PREFIX}*"):
        m = _TEMP.match(p.name)
        if m is None:
            continue
        try:
            if m["key"] == key or (now - p.stat().st_mtime > STALE_TEMP_S and _lock_free(folder, m["key"])):
                p.unlink()
        except OSError:
            continue   # gone meanwhile, or not ours to remove: left alone


@dataclass
class _Index:
    entries: list[list]          # [*stamp, row (-1: skipped), reason or None]
    images: np.ndarray
    data: Path


def _identity(path: Path) -> list[int]:
    """(device, inode, size, mtime_ns, ctime_ns) of a data file: unchanged since its crc32 was
    taken means not written since (every write sets ctime, which no program can set back)."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def file_crc32(path: Path) -> int:
    """crc32 of every byte of `path`, read in blocks (zlib.crc32 runs at ~1.4 GB/s here)."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


def open_index(folder: Path, key: str, shape: tuple[int, ...]) -> _Index | None:
    """The cache for `key`, or None when it is absent or fails a check (then it is rebuilt).
    The data file's crc32 is recomputed when its identity changed since the crc was taken; a
    match is recorded (the index rewritten), so the full read happens once."""
    try:
        meta = parse_json((folder / f"{key}.json").read_text(encoding="utf-8"))
        if meta.get("format") != CACHE_FORMAT or list(meta["shape"]) != list(shape):
            return None
        entries, data = meta["entries"], folder / Path(meta["data"]).name
        n = sum(1 for e in entries if e[STAMP_LEN] >= 0)
        if not all(len(e) == STAMP_LEN + 2 and (e[STAMP_LEN] >= 0) == (e[STAMP_LEN + 1] is None) for e in entries) \
                or sorted(e[STAMP_LEN] for e in entries if e[STAMP_LEN] >= 0) != list(range(n)) \
                or data.stat().st_size != n * int(np.prod(shape)):
            return None
        if _identity(data) != meta["identity"]:
            if file_crc32(data) != meta["crc32"]:
                return None
            atomic_write(folder / f"{key}.json", json.dumps({**meta, "identity": _identity(data)}))
        images = _map(data, n, shape, "c")
        return None if images is None else _Index(entries, images, data)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _map(path: Path, n: int, shape: tuple[int, ...], mode: str) -> np.ndarray | None:
    """A memory map of n rows of `shape`, "r" (read-only) or "c" (copy-on-write, so torch can
    wrap it without a read-only warning; nothing is ever written back); None when the file's
    length is not n rows."""
    if path.stat().st_size != n * int(np.prod(shape)):
        return None
    if n == 0:
        return np.zeros((0, *shape), dtype=np.uint8)
    images = np.memmap(path, dtype=np.uint8, mode=mode, shape=(n, *shape))
    return _register(images) if mode == "c" else images


def _build(folder: Path, key: str, files: list[Path], stamps: list[Stamp], shape: tuple[int, ...],
           decode: Callable[[Path], np.ndarray], old: _Index | None, workers: int | None) -> CachedRows:
    """Write a new data file (rows still valid copied, the rest decoded) under a temp name,
    rename it into place, then write its index, last."""
    data = folder / f"{key}-{uuid.uuid4().hex[:12]}.u8"
    tmp = temp_path(data)
    try:
        with open(tmp, "wb") as f:
            sink = _Crc32Sink(f)
            entries, decoded = _write_rows(sink, files, stamps, shape, decode, old, workers)
        n = sum(1 for e in entries if e[STAMP_LEN] >= 0)
        os.replace(tmp, data)
        atomic_write(folder / f"{key}.json", json.dumps({
            "format": CACHE_FORMAT, "shape": list(shape), "data": data.name, "crc32": sink.crc,
            "identity": _identity(data), "entries": entries}))
    except BaseException:
        tmp.unlink(missing_ok=True)   # camkit's own partial files, never a user's
        data.unlink(missing_ok=True)
        raise
    _remove_stale(folder, key, keep=data)
    return CachedRows(_map(data, n, shape, "c"), [e[STAMP_LEN + 1] for e in entries], decoded, data)


class _Crc32Sink:
    """A binary file that keeps the crc32 of what is written to it (no second read at build)."""

    def __init__(self, f: Any):
        self.f, self.crc = f, 0

    def write(self, b: bytes) -> None:
        self.crc = zlib.crc32(b, self.crc)
        self.f.write(b)


def _write_rows(sink: Any, files: list[Path], stamps: list[Stamp], shape: tuple[int, ...],
                decode: Callable[[Path], np.ndarray], old: _Index | None, workers: int | None
                ) -> tuple[list[list], int]:
    """Append every readable file's row to `sink` in input order, CHUNK files at a time (so a
    build holds one chunk of decoded images, never the dataset): a row whose stamp is in
    `old` is copied from it, the others decoded in threads. Returns (index entries, number
    of files decoded)."""
    reuse = {tuple(e[:STAMP_LEN]): e for e in old.entries} if old is not None else {}

    def attempt(i: int) -> np.ndarray | CamkitError:
        try:
            a = np.asarray(decode(files[i]), dtype=np.uint8)
        except CamkitError as e:
            return e
        if a.shape != tuple(shape):
            raise ValueError(f"decode returned shape {a.shape} for {files[i]}, not {tuple(shape)}")
        return a

    entries: list[list] = []
    decoded = rows = 0
    with ThreadPoolExecutor(workers or min(8, (os.cpu_count() or 2) * 2)) as pool:
        for start in range(0, len(files), CHUNK):
            span = range(start, min(start + CHUNK, len(files)))
            todo = [i for i in span if stamps[i] not in reuse]
            fresh = dict(zip(todo, pool.map(attempt, todo)))
            decoded += len(todo)
            for i in span:
                hit = reuse.get(stamps[i])
                if hit is not None and hit[STAMP_LEN] < 0:
                    entries.append([*stamps[i], -1, hit[STAMP_LEN + 1]])   # known unreadable: not retried
                    continue
                row = old.images[hit[STAMP_LEN]] if hit is not None else fresh[i]
                if isinstance(row, CamkitError):
                    entries.append([*stamps[i], -1, str(row)])
                    continue
                sink.write(np.ascontiguousarray(row).tobytes())
                entries.append([*stamps[i], rows, None])
                rows += 1
    return entries, decoded


def _remove_stale(folder: Path, key: str, keep: Path) -> None:
    """Remove this key's earlier data files (camkit's own; a process still reading one keeps
    its mapping on POSIX). Called under the key's lock, so no other build of it is running."""
    for p in folder.glob(f"{key}-*.u8"):
        if p != keep and not p.name.startswith(TMP_PREFIX):
            p.unlink(missing_ok=True)
