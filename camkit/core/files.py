"""Files camkit writes and reads: atomic writes, paths confined to their folder, moves that
never overwrite.

Three promises every command keeps rest on this module:
- nothing half-written looks complete: `atomic_write` writes a temp file beside the target and
  renames it over the target only when the write succeeded (a rename is atomic on POSIX and
  Windows for files in the same folder);
- a path read from a file someone else may have written (a manifest, valid.json, cams.jsonl,
  model.json) never leaves its folder: `confined` refuses absolute paths, `..` parts and
  symlinks that resolve outside;
- nothing a user owns is deleted or overwritten: `move_aside` picks a free name instead of
  replacing an existing file.

Every file camkit reads is opened through `open_regular` (a FIFO, a device or a file over a size
cap is refused before a byte is read, so nothing waits forever or fills memory), and every JSON
file or line goes through `parse_json`, so a hostile one is refused as malformed, whatever reads it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

from camkit.errors import CamkitError

TMP_PREFIX = ".camkit-tmp-"

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}

# Files only camkit's own output folders hold: a folder with one of them directly (or one level
# down, as runs/NAME/) is a run, CAM or report folder, never a class.
CAMKIT_OUTPUT_MARKERS = ("model.json", "cams.jsonl", "report.html")


# camkit's text files (manifest, valid.json, decisions, logs) are far smaller: a manifest line is
# ~400 bytes, so this is over 600,000 URLs tried.
MAX_TEXT_BYTES = 256_000_000


class FileRefused(CamkitError):
    """A path camkit will not read: `reason` is not_a_file (a FIFO, a device, a socket) or
    too_large (over the reader's cap)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def open_regular(path: str | Path, limit: int | None, what: str = "a file") -> BinaryIO:
    """`path` opened for reading (binary), refused with FileRefused before a byte is read when it
    is not a regular file (a FIFO would block until someone writes, /dev/zero never ends) or holds
    more than `limit` bytes. Opened without blocking and checked on the open descriptor, so a
    FIFO swapped in after a check is refused too. A missing file or a folder raises
    FileNotFoundError / IsADirectoryError, as open() does."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused("not_a_file", f"'{path}' is not a regular file (a FIFO, a device or a socket)")
        if limit is not None and st.st_size > limit:
            raise FileRefused("too_large", f"'{path}' is {st.st_size:,} bytes, over camkit's limit of "
                                           f"{_size(limit)} for {what}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | Path, limit: int, what: str = "a file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes (see `open_regular`); never more
    than `limit` + 1 bytes are read, even from a file still growing (a manifest being crawled)."""
    with open_regular(path, limit, what) as f:
        data = f.read(os.fstat(f.fileno()).st_size)   # not read(limit): that allocates limit bytes first
        while len(data) <= limit and (more := f.read(min(1 << 20, limit + 1 - len(data)))):
            data += more
    if len(data) > limit:
        raise FileRefused("too_large", f"'{path}' is over camkit's limit of {_size(limit)} for {what}")
    return data


def read_text(path: str | Path, what: str = "a text file", errors: str = "strict",
              limit: int = MAX_TEXT_BYTES) -> str:
    """`Path.read_text` (UTF-8) through `read_bounded`: no FIFO, device or file over `limit`."""
    return read_bounded(path, limit, what).decode("utf-8", errors)


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n:,} bytes"


# camkit's own JSON nests at most 4 levels; Python's parser (and after it repr, deepcopy and
# json.dumps) recurses once per level, and 100,000 '[' made every reader stop with an internal
# RecursionError (at ~1,000 levels, fewer the deeper the caller's stack already is).
MAX_JSON_DEPTH = 64


def parse_json(text: str | bytes) -> Any:
    """`json.loads`, refusing containers nested more than MAX_JSON_DEPTH deep with a
    json.JSONDecodeError, so each reader's own 'not valid JSON' line (which catches that)
    covers it."""
    too_deep = json.JSONDecodeError(f"nested more than {MAX_JSON_DEPTH} levels deep", "", 0)
    try:
        value = json.loads(text)
    except RecursionError:
        raise too_deep from None
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:   # iterative: the check must not recurse either
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise too_deep
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return value


def temp_path(path: Path) -> Path:
    """A unique hidden name beside `path` (same folder, so the final rename is atomic)."""
    return path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{path.name}")


def atomic_write(path: str | Path, content: bytes | str | Callable[[Path], object]) -> Path:
    """Write `content` (bytes, text, or a function that writes the file it is given) to a temp
    file beside `path`, then rename it into place. On any failure the temp file is removed and
    `path` is untouched (an older version stays whole)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        elif isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        else:
            content(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # our own temp file, never a user's
        raise
    return path


def append_json_line(path: str | Path, record: dict) -> None:
    """One JSON line appended, flushed and fsynced: a move's intent must be on disk before the
    rename it announces. A last line cut by a crash is ended first, so this one stays whole."""
    with open(path, "a+b") as f:
        if f.seek(0, os.SEEK_END):
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(json.dumps(record).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def confined(root: str | Path, relative: object, what: str = "path") -> Path:
    """`root / relative`, refused with a CamkitError unless it stays inside `root`.

    `relative` comes from a file that may have been written by someone else, so it must be a
    non-empty relative string with no `..` part, and it must still be inside `root` once
    symlinks are resolved."""
    root = Path(root)
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise CamkitError(f"{what} {relative!r} is not a relative file name")
    rel = Path(relative)
    if rel.is_absolute() or rel.drive or ".." in rel.parts or relative.startswith(("/", "\\")):
        raise CamkitError(f"{what} '{relative}' leaves its folder '{root}' (absolute or '..')")
    candidate = root / rel
    if not candidate.resolve().is_relative_to(root.resolve()):
        raise CamkitError(f"{what} '{relative}' leaves its folder '{root}' through a symlink")
    return candidate


def real_folder(root: str | Path, relative: str, what: str = "folder") -> Path:
    """`confined(root, relative)` where, besides, no part below `root` is a symbolic link: a
    folder camkit moves a user's file into. A link swapped in for `_rejected` or a class folder
    would carry the file out of `root` (or, pointing inside, to a place its log does not name),
    where an undo could not find it; parts that do not exist yet are made as real folders."""
    part = Path(root)
    for name in Path(relative).parts:
        part = part / name
        if part.is_symlink():
            raise CamkitError(f"{what} '{part}' is a symbolic link: files are moved only into real "
                              f"folders inside '{root}'")
    return confined(root, relative, what)


def free_name(path: Path) -> Path:
    """`path` if nothing is there, else `stem-1.ext`, `stem-2.ext`, ... (first free one)."""
    if not path.exists() and not path.is_symlink():
        return path
    for i in range(1, 1_000_000):
        candidate = path.with_name(f"{path.stem}-{i}{path.suffix}")
        if not candidate.exists() and not candidate.is_symlink():
            return candidate
    raise CamkitError(f"no free file name near '{path}'")


def move_aside(src: Path, dest: Path) -> Path:
    """Move `src` to `dest`, or to a free name beside it when `dest` exists: an earlier file
    there is never overwritten. Returns where the file went."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    target = free_name(dest)
    os.replace(src, target)
    return target


def ensure_writable_dir(folder: Path, what: str = "output folder") -> Path | None:
    """Create `folder` (and missing parents) if needed and check that camkit can write into it.
    Returns the topmost folder this call created, or None (so a failed command can remove the
    empty folders it made, and only those)."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    created = missing[-1] if missing else None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_path(folder / "probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CamkitError(f"cannot write to {what} '{folder}' ({e.strerror or e})") from None
    return created


# The environment's refusals of a file operation, in words, with what to do: a full disk, a
# quota, a read-only mount, permissions. These are no bug of camkit's (not exit 1, "internal").
_ENVIRONMENT = {errno.ENOSPC: ("no space left on device", "free some space or choose another folder"),
                errno.EDQUOT: ("disk quota exceeded", "free some space or choose another folder"),
                errno.EROFS: ("read-only file system", "choose a writable folder"),
                errno.EACCES: ("permission denied", "check the permissions or choose another folder"),
                errno.EPERM: ("operation not permitted", "check the permissions or choose another folder")}
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})   # only a write can raise these


def os_error_line(e: BaseException, writing: str | None = None) -> str | None:
    """One sentence for an OSError the environment caused (`_ENVIRONMENT`), else None:
    "no space left on device writing the decode cache in 'c' (free some space ...)". `writing`
    names what was being written; without it the error's own file name is used, if any (a
    failed write() carries none)."""
    if not isinstance(e, OSError) or e.errno not in _ENVIRONMENT:
        return None
    reason, hint = _ENVIRONMENT[e.errno]
    where = f" writing {writing}" if writing else f" at '{e.filename}'" if e.filename else ""
    return f"{reason}{where} ({hint})"


def remove_if_empty(folder: Path, top: Path | None = None) -> None:
    """Remove `folder`, then its parents up to `top`, each only while empty: the folders a
    failed command created, never anything inside them."""
    for p in (folder, *folder.parents):
        try:
            p.rmdir()
        except OSError:
            return
        if top is None or p == top:
            return


def is_camkit_output(folder: Path) -> bool:
    """A run, CAM or report folder camkit wrote (directly or one level down, as runs/NAME/)."""
    return any((folder / m).is_file() or any(folder.glob(f"*/{m}")) for m in CAMKIT_OUTPUT_MARKERS)


# How many entries of a folder are looked at to decide whether it holds images: a class folder's
# first entries are images, so the check costs a few stat calls, whatever the folder's size.
_LOOK = 1000


def _holds_images(folder: Path, deep: bool) -> bool:
    """Whether one of the first _LOOK entries under `folder` (directly, or at any depth when
    `deep`) is an image file; hidden and `_` entries are not looked into."""
    seen, todo = 0, [folder]
    while todo and seen < _LOOK:
        try:
            with os.scandir(todo.pop()) as it:
                for entry in it:
                    seen += 1
                    if entry.name.startswith((".", "_")):
                        continue
                    if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                        return True
                    if deep and entry.is_dir(follow_symlinks=False):
                        todo.append(Path(entry.path))
                    if seen >= _LOOK:
                        break
        except OSError:
            continue
    return False


def _is_class_folder(folder: Path, deep: bool) -> bool:
    """A folder the next training would take as a class: visible (no '.' or '_' prefix), not
    camkit's own output, holding images."""
    return (not folder.name.startswith((".", "_")) and folder.is_dir() and _holds_images(folder, deep)
            and not is_camkit_output(folder))


def _looks_like_dataset(root: Path) -> bool:
    """A class-per-folder dataset by its shape alone: at least two visible sub-folders, and every
    one of them that is not camkit's own output holds images directly. (A home folder, where
    Documents holds none, is not one; the first folder without images ends the look.)"""
    try:
        subs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))]
    except OSError:
        return False
    classes = 0
    for sub in subs:
        if is_camkit_output(sub):
            continue
        if not _holds_images(sub, deep=False):
            return False
        classes += 1
    return classes >= 2


def class_folder_of(path: str | Path, roots: Sequence[str | Path | None] = ()) -> tuple[Path, Path] | None:
    """(class folder, dataset root) when `path` (existing or not) is a class folder of a dataset
    or inside one, else None. camkit output there would corrupt the next training: a folder
    holding cams.jsonl or model.json makes the whole class skipped, and an output's images
    (overlays, a Space's examples of every class) would be taken as the class's own.

    The rule, on the resolved path: some folder C on it (the path itself included) is a class
    folder (visible, not camkit output, holding images) of its parent R, where R is
    - one of `roots`, the datasets the caller knows (a run's data root from model.json, a
      Learner's data path): C then counts when it holds images at any depth; or
    - any folder shaped like a dataset (`_looks_like_dataset`): C holds images directly.
    A folder not yet made is no class, so `DATA/new` (a new sibling of the classes, which the
    next scan skips as camkit output) is allowed, while `DATA/bag/cams` is not."""
    target = Path(path).resolve()
    known = {Path(r).resolve() for r in roots if r is not None}
    for folder in (target, *target.parents):
        parent = folder.parent
        if parent == folder:
            break
        if parent in known and _is_class_folder(folder, deep=True):
            return folder, parent
        if _is_class_folder(folder, deep=False) and _looks_like_dataset(parent):
            return folder, parent
    return None


def refuse_inside_class_folder(path: str | Path, roots: Sequence[str | Path | None] = (),
                               what: str = "--out") -> None:
    """Raise a CamkitError when `path` is inside a dataset's class folder (`class_folder_of`):
    every camkit writer (train, cam, export_run, --export-space, the clean page) calls this
    before any work."""
    found = class_folder_of(path, roots)
    if found is not None:
        cls, root = found
        raise CamkitError(f"{what} '{path}' is inside the class folder '{cls.name}' of the dataset '{root}': "
                          "the next training would skip that class or take camkit's files as its images; "
                          "choose a folder outside the dataset's class folders")
