"""The crawl's shared state and its log: `manifest.jsonl` (one line per URL tried, with the
licence and credits of every kept image), read back and checked on a rerun, and the Ledger the
download threads share behind one lock."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from camkit.core.files import append_json_line, atomic_write, confined, move_aside, parse_json, read_text
from camkit.core.images import IMAGE_SUFFIXES, REJECTED
from camkit.crawl.verify import PHASH_THRESHOLD, HashIndex, Verified
from camkit.errors import CamkitError

MANIFEST = "manifest.jsonl"
MOVE_STATUSES = ("cleaned", "relabelled", "restored")  # a file moved after the crawl (camkit clean)
CREDIT_FIELDS = ("source_page", "license", "license_url", "creator", "attribution")


@dataclass
class KeywordState:
    """One class folder being filled: its name, searches, target and counts."""
    keyword: str
    slug: str
    folder: Path
    target: int
    queries: tuple[str, ...] = ()
    saved: int = 0
    next_index: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


def read_manifest(out: Path) -> list[dict]:
    """The records of `out/manifest.jsonl` (none when there is none yet), each one checked.

    The manifest is a file anyone may have edited, and a rerun moves files it names, so every
    path in it must stay inside `out` (no absolute path, no `..`, no symlink leading out) and
    every hash it gives must parse: one bad line stops the crawl with a CamkitError naming the
    manifest and the line, before anything is created or moved. A line cut short by a kill is
    skipped."""
    path = Path(out) / MANIFEST
    records = []
    for number, rec in _records(path):
        try:
            _check_record(Path(out), rec)
        except CamkitError as e:
            raise CamkitError(f"manifest '{path}' line {number} is refused: {e}") from None
        records.append(rec)
    return records


def status_counts(out: Path) -> dict[tuple[str, str], int]:
    """How many manifest lines each (keyword, status) has, for a report: `{("cats", "saved"): 96,
    ("cats", "small"): 3, ...}`, sorted. Nothing here moves or opens the files the lines name, so
    the records are counted as they are (not checked as `read_manifest` checks them); a line that
    is not a JSON object is skipped, and a missing field counts as '?'."""
    counts = Counter((str(rec.get("keyword", "?")), str(rec.get("status", "?")))
                     for _, rec in _records(Path(out) / MANIFEST))
    return dict(sorted(counts.items()))


def _records(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) of every line of `path` that is a JSON object; none when the file
    does not exist. A line cut short by a kill, or any other non-object line, is skipped."""
    if not path.exists():
        return []
    try:
        lines = read_text(path, "a manifest", errors="replace").splitlines()
    except OSError as e:
        raise CamkitError(f"cannot read manifest '{path}' ({e.strerror or e})") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            rec = parse_json(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(rec, dict):
            records.append((number, rec))
    return records


def _check_record(out: Path, rec: dict) -> None:
    """Raise a CamkitError when a manifest record names a path outside `out` or a bad hash."""
    for key in ("file", "moved_from"):
        if rec.get(key) is not None:
            confined(out, rec[key], "manifest entry")
    if rec.get("status") == "ok" and rec.get("file") is not None:
        if len(Path(rec["file"]).parts) != 2 or Path(rec["file"]).suffix.lower() not in IMAGE_SUFFIXES:
            raise CamkitError(f"entry '{rec['file']}' is not an image in a class folder")
    uses_hashes = (rec.get("status") == "ok" and rec.get("file") is not None) or \
        (rec.get("status") == "ambiguous" and rec.get("sha256"))
    sha, ph = rec.get("sha256"), rec.get("phash")
    if uses_hashes and not (isinstance(sha, str) and isinstance(ph, str) and re.fullmatch(r"[0-9a-f]{1,16}", ph)):
        raise CamkitError(f"entry for '{rec.get('file')}' has a missing or malformed sha256 or phash")



def note_move(out: str | Path, status: str, file: str, moved_from: str, time: str) -> bool:
    """Tell the manifest of the crawl folder `out` that one of its files moved after the crawl
    (`status` one of MOVE_STATUSES; `file` and `moved_from` relative to `out`), durably (fsynced,
    a line cut by a crash mended first). A folder no crawl made has no manifest: nothing is
    created and False is returned. The ledger owns the manifest's format; `camkit clean` calls
    this rather than writing the lines itself."""
    if status not in MOVE_STATUSES:
        raise ValueError(f"manifest move status must be one of {', '.join(MOVE_STATUSES)}, not {status!r}")
    path = Path(out) / MANIFEST
    if not path.is_file():
        return False
    append_json_line(path, {"status": status, "file": file, "moved_from": moved_from, "time": time})
    return True

class Ledger:
    """Everything the downloader threads share, behind one lock: the manifest, the URLs already
    tried (and which file each saved one became), the accepted images' hashes (dedup across
    keywords) and per-keyword counts."""

    def __init__(self, out: Path, phash_threshold: int = PHASH_THRESHOLD):
        self.out = out
        self.lock = threading.RLock()
        self.index = HashIndex(phash_threshold)
        self.seen_urls: set[str] = set()
        self.url_files: dict[str, str] = {}   # URL -> the file (relative to out) it was saved as
        self.keywords: dict[str, KeywordState] = {}
        self.last_progress = time.monotonic()
        self._manifest: TextIO | None = None

    def open(self) -> None:
        """Resume from the manifest (checked line by line first, see read_manifest), then open it
        for appending."""
        for rec in read_manifest(self.out):
            self._remember(rec)
        path = self.out / MANIFEST
        try:
            self._manifest = open(path, "a", encoding="utf-8")
        except OSError as e:
            raise CamkitError(f"cannot write manifest '{path}' ({e.strerror or e})") from None

    def _remember(self, rec: dict) -> None:
        """Take one (checked) manifest record into the URL set and the hash index."""
        url = rec.get("url")
        if isinstance(url, str):
            self.seen_urls.add(url)
        if rec.get("sha256") and rec.get("status") == "ambiguous":
            self.index.ambiguous.append((rec["sha256"], int(rec["phash"], 16)))
        elif rec.get("status") == "ok" and rec.get("file") and (self.out / rec["file"]).is_file():
            self.index.add(rec["file"], rec["sha256"], int(rec["phash"], 16))
            if isinstance(url, str):
                self.url_files[url] = rec["file"]

    def close(self) -> None:
        if self._manifest:
            self._manifest.close()
            self._manifest = None

    def add_keyword(self, state: KeywordState) -> None:
        """Create (or reuse) the keyword's folder and count the images it already holds.

        Nothing in it is deleted: files are written through `atomic_write`, whose temp names
        (`.camkit-tmp-*`) are never counted, so a killed run leaves at most a hidden temp file and
        a user's own `.tmp-*` files are none of camkit's business."""
        folder = confined(self.out, state.slug, "class folder")  # a symlink leading out is refused
        try:
            folder.mkdir(parents=True, exist_ok=True)
            names = [f.name for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        except OSError as e:
            raise CamkitError(f"cannot create class folder '{folder}' ({e.strerror or e})") from None
        state.saved = sum(1 for n in names if f"{state.slug}/{n}" in self.index.files)
        numbers = [int(Path(n).stem) for n in names if Path(n).stem.isdigit()]
        state.next_index = max(numbers, default=0) + 1
        self.keywords[state.slug] = state

    def record(self, **rec) -> None:
        with self.lock:
            self._manifest.write(json.dumps(rec) + "\n")
            self._manifest.flush()
            self.last_progress = time.monotonic()
            state = self.keywords.get(rec.get("slug", ""))
            if state is not None and rec["status"] != "ok":
                state.rejected[rec["status"]] = state.rejected.get(rec["status"], 0) + 1

    def claim_url(self, url: str, state: KeywordState, engine: str) -> bool:
        """Whether `state`'s keyword should fetch `url` (each URL is fetched once per output folder).

        A URL already saved under another keyword (in this run or, through the manifest, an
        earlier one) is not fetched again, but it makes the image ambiguous: the earlier copy is
        set aside and this keyword's hit is recorded as ambiguous."""
        with self.lock:
            if url not in self.seen_urls:
                self.seen_urls.add(url)
                return True
            rel = self.url_files.get(url)
            if rel and rel.split("/")[0] != state.slug and rel in self.index.files:
                sha, ph = self.index.set_aside(rel)
                self._move_aside(rel, sha, ph)
                self.record(keyword=state.keyword, slug=state.slug, engine=engine, url=url, status="ambiguous",
                            file=None, twin=rel, sha256=sha, phash=f"{ph:016x}")
            return False

    def release_url(self, url: str) -> None:
        """Forget a claim whose image was not kept (the keyword already had enough): another
        keyword may still fetch it."""
        with self.lock:
            self.seen_urls.discard(url)

    def accept(self, state: KeywordState, v: Verified, url: str) -> tuple[str, str | None]:
        """Dedup (HashIndex.judge), then write atomically under a new name: (status, relative file)."""
        with self.lock:
            if state.saved >= state.target:
                return "enough", None
            kind, twin = self.index.judge(state.slug, v.sha256, v.phash)
            if twin is not None:
                self._move_aside(twin, *self.index.ambiguous[-1])
            if kind:
                return kind, None
            rel = self._write(state, v)
            self.index.add(rel, v.sha256, v.phash)
            self.url_files[url] = rel
            state.saved += 1
            return "ok", rel

    @staticmethod
    def _write(state: KeywordState, v: Verified) -> str:
        """Write the image under the next free number (never over an existing file), atomically
        (a temp file renamed into place: nothing half-written ever looks complete)."""
        while True:
            name = f"{state.next_index:06d}.{v.ext}"
            state.next_index += 1
            target = state.folder / name
            if not target.exists() and not target.is_symlink():
                break
        atomic_write(target, v.data)
        return f"{state.slug}/{name}"

    def _move_aside(self, rel: str, sha: str, ph: int) -> None:
        """An image found under two keywords belongs to neither: move the earlier copy to
        `_rejected/ambiguous/` (never delete, never over an earlier reject) and log the move."""
        slug = rel.split("/")[0]
        src, moved = confined(self.out, rel, "manifest entry"), None
        if src.is_file():
            dest = move_aside(src, self.out / REJECTED / "ambiguous" / rel)
            moved = dest.relative_to(self.out).as_posix()
            if slug in self.keywords:
                self.keywords[slug].saved -= 1
        state = self.keywords.get(slug)
        self.record(keyword=state.keyword if state else slug, slug=slug, engine=None, url=None,
                    status="ambiguous", file=moved, moved_from=rel, sha256=sha, phash=f"{ph:016x}")
