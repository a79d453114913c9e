"""Crawl image search engines into clean class folders, built on icrawler's Feeder/Parser/Downloader.

What camkit adds over icrawler: every file is verified in flight (content type, streamed size
cap, full decode, pixel cap, minimum size), written atomically, deduplicated across keywords
(exact and perceptual), logged in `manifest.jsonl` (which also makes a rerun resume), refused
when its URL resolves to a private address, and the crawl always ends (idle / total timeouts
and a deadline per download, all of which stop downloads in flight); a keyword left with no
image at all is an error that says why, engine by engine.

    crawl(["cats", "dogs"], max_num=100, out="data/images")
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TextIO
from urllib.parse import quote_plus, urljoin, urlsplit

import numpy as np
from icrawler import Crawler, Feeder, ImageDownloader, Parser
from PIL import Image, ImageOps

from camkit.errors import CamkitError
from camkit.files import atomic_write, confined, ensure_writable_dir, move_aside
from camkit.images import IMAGE_SUFFIXES, REJECTED, ImageRejected, decode, is_dataset_image, to_rgb

MANIFEST = "manifest.jsonl"
MAX_PIXELS = 50_000_000          # 50 MP: decodes fine, a 20000x20000 bomb does not pass
PHASH_THRESHOLD = 6              # Hamming distance (of 64 bits) for "near duplicate"
REDIRECT_LIMIT = 5
REDIRECT_CODES = (301, 302, 303, 307, 308)
SLUG_CHARS, SLUG_BYTES = 64, 200  # a folder name well under the 255-byte limit of file systems
FILE_TIMEOUT_FACTOR = 3          # one download may take 3x --timeout in all (connect, body, retries)


# ---------------------------------------------------------------- names and sizes

def slugify(keyword: str) -> str:
    """A folder name that reads like the keyword but cannot escape the output folder.

    Unicode letters and digits are kept (with their combining marks), NFC-normalised and
    casefolded, so `Café` and `café` (composed or not) share one folder and `日本語` stays
    itself; every other run of characters (separators, dots, control characters, symbols such as
    emoji) becomes one dash, trimmed at both ends, so there is no `/`, no `..` and no leading dot
    or underscore (`_rejected` stays camkit's). At most 64 characters and 200 UTF-8 bytes."""
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFC", keyword).casefold())
    kept: list[str] = []
    for ch in text:
        kind = unicodedata.category(ch)[0]
        keep = kind in "LN" or (kind == "M" and bool(kept) and kept[-1] != "-")
        kept.append(ch if keep else "-")
    slug = re.sub(r"-+", "-", "".join(kept)).strip("-")[:SLUG_CHARS]
    while len(slug.encode("utf-8")) > SLUG_BYTES:
        slug = slug[:-1]
    slug = slug.strip("-")
    if not slug:
        raise CamkitError(f"keyword {keyword!r} gives an empty folder name; use letters or digits")
    return slug


def parse_bytes(text: str | int) -> int:
    """'20MB', '500KB', '1.5GB' or a plain number of bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]?i?b?)\s*", str(text).lower())
    if not m:
        raise CamkitError(f"--max-bytes must look like 20MB, 500KB or 1000000, not '{text}'")
    unit = m.group(2).rstrip("b").rstrip("i")
    value = float(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[unit]
    if value < 1:
        raise CamkitError(f"--max-bytes must be positive, not '{text}'")
    return int(value)


# ---------------------------------------------------------------- hashing

def pixel_sha256(img: Image.Image) -> str:
    import hashlib

    return hashlib.sha256(f"{img.size}".encode() + img.tobytes()).hexdigest()


_DCT = None


def phash(img: Image.Image) -> int:
    """64-bit perceptual hash: the signs of the 8x8 lowest DCT frequencies of a 32x32 grey
    thumbnail against their median (robust to resizing and recompression)."""
    global _DCT
    if _DCT is None:
        n = np.arange(32)
        _DCT = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / 64)
    grey = np.asarray(img.convert("L").resize((32, 32), Image.LANCZOS), dtype=np.float64)
    low = (_DCT @ grey @ _DCT.T)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


# ---------------------------------------------------------------- verification

@dataclass
class Verified:
    image: Image.Image       # RGB, orientation applied, resized to max_side
    data: bytes              # what is written to disk
    ext: str
    sha256: str
    phash: int
    width: int
    height: int


class Rejected(Exception):
    """A file that must not enter the dataset; the message is the manifest status."""


def verify_bytes(data: bytes, min_size: int = 64, max_side: int | None = 512,
                 max_pixels: int = MAX_PIXELS) -> Verified:
    """Full decode and checks; raises Rejected('reason') for anything not a clean image."""
    try:
        img = decode(data, max_pixels)
    except ImageRejected as e:
        raise Rejected(e.reason) from None
    fmt = (img.format or "").upper()
    if min(img.size) < min_size:
        raise Rejected("too_small")
    img = to_rgb(ImageOps.exif_transpose(img))
    resized = bool(max_side and max(img.size) > max_side)
    if resized:
        img.thumbnail((max_side, max_side), Image.LANCZOS)
    if fmt == "JPEG" and not resized:
        out, ext = data, "jpg"       # keep the original bytes: no recompression loss
    else:
        buf = io.BytesIO()
        if fmt == "JPEG":
            img.save(buf, "JPEG", quality=92)
            ext = "jpg"
        else:
            img.save(buf, "PNG")
            ext = "png"
        out = buf.getvalue()
    return Verified(img, out, ext, pixel_sha256(img), phash(img), img.width, img.height)


# ---------------------------------------------------------------- address policy

def resolve(host: str) -> list[str]:
    """Addresses a host name resolves to (tests replace this function)."""
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})
    except (socket.gaierror, UnicodeError):
        return []


def is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast \
        or ip.is_unspecified


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, lower-case host, port with the scheme's default filled in) of an http(s) URL, or
    None for anything else: what an --endpoint exemption is compared on."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


class AddressPolicy:
    """Refuses URLs whose host resolves to loopback, private or link-local addresses.

    Exempt are the given origins only (the --endpoint's scheme + host + port: a test server or a
    mirror), not the rest of that host: a result or a redirect to another port of 127.0.0.1 is
    refused like any other private address. `allow_private` lifts the check altogether."""

    def __init__(self, allowed_origins: Iterable[str] = (), allow_private: bool = False):
        self.allow_private = allow_private
        self.allowed: set[tuple[str, str, int]] = set()
        for url in allowed_origins:
            o = origin(url)
            if o is None:
                raise CamkitError(f"an exempt origin must be an http(s) URL like http://127.0.0.1:8000, not '{url}'")
            self.allowed.add(o)

    @staticmethod
    def _addresses(host: str) -> list[str]:
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            return resolve(host)

    def check(self, url: str) -> None:
        """Raise Rejected('bad_url' | 'unresolvable' | 'private_address') unless `url` may be fetched."""
        o = origin(url)
        if o is None:
            raise Rejected("bad_url")
        if self.allow_private or o in self.allowed:
            return
        addresses = self._addresses(o[1])
        if not addresses:
            raise Rejected("unresolvable")
        if any(is_private(a) for a in addresses):
            raise Rejected("private_address")


# ---------------------------------------------------------------- shared crawl state

@dataclass
class KeywordState:
    keyword: str
    slug: str
    folder: Path
    target: int
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
    path = out / MANIFEST
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise CamkitError(f"cannot read manifest '{path}' ({e.strerror or e})") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(rec, dict):
            try:
                _check_record(out, rec)
            except CamkitError as e:
                raise CamkitError(f"manifest '{path}' line {number} is refused: {e}") from None
            records.append(rec)
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
        quarantined and this keyword's hit is recorded as ambiguous."""
        with self.lock:
            if url not in self.seen_urls:
                self.seen_urls.add(url)
                return True
            rel = self.url_files.get(url)
            if rel and rel.split("/")[0] != state.slug and rel in self.index.files:
                sha, ph = self._quarantine(rel)
                self.record(keyword=state.keyword, slug=state.slug, engine=engine, url=url, status="ambiguous",
                            file=None, twin=rel, sha256=sha, phash=f"{ph:016x}")
            return False

    def release_url(self, url: str) -> None:
        """Forget a claim whose image was not kept (the keyword already had enough): another
        keyword may still fetch it."""
        with self.lock:
            self.seen_urls.discard(url)

    def accept(self, state: KeywordState, v: Verified, url: str) -> tuple[str, str | None]:
        """Dedup, then write atomically under a new name. Returns (status, relative file)."""
        with self.lock:
            if state.saved >= state.target:
                return "enough", None
            kind, twin = self.index.match(v.sha256, v.phash)
            if kind == "ambiguous":
                return kind, None
            if twin is not None:
                if twin.split("/")[0] != state.slug:
                    self._quarantine(twin)
                    return "ambiguous", None
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

    def _quarantine(self, rel: str) -> tuple[str, int]:
        """An image found under two keywords belongs to neither: move the earlier copy aside
        (never delete, never overwrite an earlier reject) and remember its hashes so later copies
        are refused too. Returns those hashes."""
        sha, ph = self.index.remove(rel)
        self.index.ambiguous.append((sha, ph))
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
        return sha, ph


class HashIndex:
    """Exact (sha256 of pixels) and perceptual (pHash within a Hamming threshold) lookup."""

    def __init__(self, threshold: int = PHASH_THRESHOLD):
        self.threshold = threshold
        self.files: dict[str, tuple[str, int]] = {}     # rel -> (sha256, phash)
        self.by_sha: dict[str, str] = {}                # sha256 -> rel
        self.ambiguous: list[tuple[str, int]] = []

    def add(self, rel: str, sha: str, ph: int) -> None:
        self.files[rel] = (sha, ph)
        self.by_sha[sha] = rel

    def remove(self, rel: str) -> tuple[str, int]:
        sha, ph = self.files.pop(rel)
        self.by_sha.pop(sha, None)
        return sha, ph

    def match(self, sha: str, ph: int) -> tuple[str | None, str | None]:
        """('ambiguous', None), ('duplicate', rel), ('near_duplicate', rel) or (None, None)."""
        if any(s == sha or hamming(p, ph) <= self.threshold for s, p in self.ambiguous):
            return "ambiguous", None
        if sha in self.by_sha:
            return "duplicate", self.by_sha[sha]
        near = next((rel for rel, (_, p) in self.files.items() if hamming(p, ph) <= self.threshold), None)
        return ("near_duplicate", near) if near else (None, None)


# ---------------------------------------------------------------- engines

class EngineFeeder(Feeder):
    """Result-page URLs for an engine; `endpoint` swaps scheme and host (a mirror or test server)."""

    def feed(self, url_template: str, keyword: str, pages: int, page_size: int, extra: str = ""):
        for page in range(pages):
            if self.signal.get("reach_max_num"):
                break
            url = url_template.format(q=quote_plus(keyword), first=page * page_size, page=page + 1,
                                      count=page_size) + extra
            self.out_queue.put(url)


def _json_objects(text: str) -> Iterator[dict]:
    try:
        yield json.loads(text)
    except json.JSONDecodeError:
        return


class SearchLog:
    """What an engine's result pages gave (per page: fetched, or why not; and how many image
    URLs they listed), so that a crawl that saves nothing can say why, engine by engine."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pages: dict[str, str] = {}   # page URL -> "ok" or the failure (the last try's)
        self.results = 0

    def page(self, url: str, outcome: str) -> None:
        with self.lock:
            self.pages[url] = outcome

    def result(self) -> None:
        with self.lock:
            self.results += 1

    def why(self, rejected: dict[str, int], timed_out: str | None) -> str:
        """One clause: 'connection refused to the search page (2 pages)', '0 results',
        '3 results, none kept (http_404 2, too_small 1)', plus ', stopped by the idle timeout'."""
        failures = [o for o in self.pages.values() if o != "ok"]
        if failures and len(failures) == len(self.pages):
            n = len(failures)
            text = f"{max(set(failures), key=failures.count)} ({n} page{'s' * (n != 1)})"
        elif self.results == 0:
            text = "0 results"
        else:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items()))
            text = f"{self.results} result{'s' * (self.results != 1)}, " + (
                f"none kept ({reasons})" if reasons else "all already tried (in the manifest)")
        return text + (f", stopped by the {timed_out} timeout" if timed_out else "")


def _page_failure(error: Exception) -> str:
    """A search-page request's exception in words."""
    import requests

    text = str(error).lower()
    if isinstance(error, requests.Timeout):
        return "timeout at the search page"
    if isinstance(error, requests.ConnectionError):
        if "refused" in text:
            return "connection refused to the search page"
        if "resolve" in text or "name or service" in text or "getaddrinfo" in text:
            return "cannot resolve the search page's host"
        return "connection error to the search page"
    return f"{type(error).__name__} at the search page"


class _LoggedSession:
    """The crawler's session as the parser sees it: each result-page request goes to a SearchLog
    (icrawler's parser only logs a failed page, and camkit silences its logger)."""

    def __init__(self, session, log: SearchLog):
        self._session, self._log = session, log

    def get(self, url: str, **kwargs):
        try:
            response = self._session.get(url, **kwargs)
        except Exception as e:
            self._log.page(url, _page_failure(e))
            raise
        code = response.status_code
        self._log.page(url, "ok" if code == 200 else f"HTTP {code} from the search page")
        return response

    def __getattr__(self, name: str):
        return getattr(self._session, name)


class CamkitParser(Parser):
    """icrawler's Parser that reports its pages and results to a SearchLog."""

    def __init__(self, *args, log: SearchLog | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.log = log or SearchLog()
        self.session = _LoggedSession(self.session, self.log)

    def output(self, task, block=True, timeout=None):
        super().output(task, block, timeout)   # raises queue.Full (then icrawler retries): not counted
        self.log.result()


class BingParser(CamkitParser):
    """`div.imgpt > a[m]`, whose `m` attribute is JSON with `murl` — any image type (icrawler's
    own parser keeps only URLs containing '.jpg')."""

    def parse(self, response, **kwargs):
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(response.content.decode("utf-8", "ignore"), "html.parser")
        for a in soup.select("div.imgpt > a[m]"):
            for meta in _json_objects(a["m"]):
                if isinstance(meta, dict) and isinstance(meta.get("murl"), str):
                    yield {"file_url": meta["murl"]}


class BaiduParser(CamkitParser):
    """Baidu's acjson results: `data[].objURL` (obfuscated) or `hoverURL`/`thumbURL`."""

    def parse(self, response, **kwargs):
        from icrawler.builtin.baidu import BaiduParser as IcrawlerBaidu

        for content in _json_objects(response.content.decode("utf-8", "ignore").replace("\\'", "'")):
            for item in content.get("data", []) if isinstance(content, dict) else []:
                if not isinstance(item, dict):
                    continue
                if item.get("objURL"):
                    yield {"file_url": IcrawlerBaidu._decode_url(None, item["objURL"])}
                elif item.get("hoverURL") or item.get("thumbURL"):
                    yield {"file_url": item.get("hoverURL") or item["thumbURL"]}


class FlickrParser(CamkitParser):
    """flickr.photos.search JSON -> static image URLs (needs FLICKR_API_KEY)."""

    def parse(self, response, **kwargs):
        for content in _json_objects(response.content.decode("utf-8", "ignore")):
            for p in content.get("photos", {}).get("photo", []) if isinstance(content, dict) else []:
                if all(k in p for k in ("server", "id", "secret")):
                    yield {"file_url": f"https://live.staticflickr.com/{p['server']}/{p['id']}_{p['secret']}_b.jpg"}


class GoogleParser(CamkitParser):
    """Google Images embeds results as ["https://...", height, width] arrays in its scripts;
    icrawler's parser (file-extension regex over the page) stopped working in 2025."""

    PATTERN = re.compile(r'\["(https?://[^"\s]+)",(\d+),(\d+)\]')

    def parse(self, response, **kwargs):
        text = response.content.decode("utf-8", "ignore")
        seen = set()
        for url, h, w in self.PATTERN.findall(text):
            url = url.encode().decode("unicode_escape") if "\\u" in url else url
            if "gstatic.com" in url or url in seen or int(h) < 2 or int(w) < 2:
                continue
            seen.add(url)
            yield {"file_url": url}


@dataclass(frozen=True)
class Engine:
    name: str
    host: str
    path: str
    page_size: int
    parser: type[CamkitParser]


ENGINES = {
    "bing": Engine("bing", "https://www.bing.com", "/images/async?q={q}&first={first}&count={count}&mmasync=1", 35,
                   BingParser),
    "baidu": Engine("baidu", "https://image.baidu.com",
                    "/search/acjson?tn=resultjson_com&ipn=rj&word={q}&pn={first}&rn={count}", 30, BaiduParser),
    "flickr": Engine("flickr", "https://api.flickr.com",
                     "/services/rest/?method=flickr.photos.search&text={q}&page={page}&per_page={count}"
                     "&format=json&nojsoncallback=1&api_key=" + os.environ.get("FLICKR_API_KEY", ""), 100, FlickrParser),
    "google": Engine("google", "https://www.google.com", "/search?q={q}&tbm=isch&ijn={page}&start={first}", 100,
                     GoogleParser),
}
AUTO_ORDER = ("bing", "baidu", "google", "flickr")
LICENSES = {"bing": {"creativecommons": "+filterui:licenseType-Any", "publicdomain": "+filterui:license-L1",
                     "commercial": "+filterui:license-L2_L3_L4", "noncommercial": "+filterui:license-L2_L3_L4_L5_L6_L7"},
            "flickr": {"creativecommons": "1,2,3,4,5,6,9,10", "publicdomain": "9,10", "commercial": "4,5,6,9,10"}}


# ---------------------------------------------------------------- downloader

class Deadline:
    """The time one download may take in all: connect, redirects, retries and body together.

    requests' timeout bounds each read, not the download, so a server sending one byte a second
    would hold a thread for ever; this is checked between reads instead, and `stop` (set when
    the crawl's own idle or total deadline passes) ends it early."""

    def __init__(self, seconds: float, stop: threading.Event):
        self.end, self.stop = time.monotonic() + seconds, stop

    def check(self) -> None:
        if self.stop.is_set() or time.monotonic() > self.end:
            raise Rejected("timeout")

    def per_read(self, timeout: float) -> float:
        """requests' (connect, read) timeout for the next request: never past the deadline."""
        return max(0.05, min(timeout, self.end - time.monotonic()))

    def sleep(self, seconds: float) -> None:
        self.stop.wait(min(seconds, max(0.0, self.end - time.monotonic())))
        self.check()


class VerifyingDownloader(ImageDownloader):
    """icrawler's downloader with camkit's in-flight checks; one task never kills a thread."""

    def __init__(self, *args, ledger: Ledger | None = None, state: KeywordState | None = None,
                 policy: AddressPolicy | None = None, engine: str = "", options: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ledger, self.state, self.policy, self.engine = ledger, state, policy, engine
        self.options = options or {}
        self.stop = threading.Event()   # set by CamkitCrawler when the crawl times out

    def reach_max_num(self) -> bool:
        return self.signal.get("reach_max_num") or self.state.saved >= self.state.target

    def download(self, task, default_ext, timeout=5, max_retry=3, overwrite=False, **kwargs):
        url = task["file_url"]
        if self.reach_max_num():
            self.signal.set(reach_max_num=True)
            return False
        if not self.ledger.claim_url(url, self.state, self.engine):
            return False
        rec = self._verified(url, timeout)
        if rec["status"] == "enough":
            self.ledger.release_url(url)
        else:
            self.ledger.record(**rec)
        if self.reach_max_num():
            self.signal.set(reach_max_num=True)
        return rec["status"] == "ok"

    def _verified(self, url: str, timeout: float) -> dict:
        """Fetch, verify and accept one URL; the manifest record of what happened."""
        rec = {"keyword": self.state.keyword, "slug": self.state.slug, "engine": self.engine, "url": url}
        try:
            data, content_type = self._fetch(url, timeout)
            v = verify_bytes(data, self.options["min_size"], self.options["max_side"])
            status, rel = self.ledger.accept(self.state, v, url)
            rec.update(status=status, file=rel, sha256=v.sha256, phash=f"{v.phash:016x}",
                       width=v.width, height=v.height, bytes=len(data), content_type=content_type)
        except Rejected as e:
            rec.update(status=str(e))
        except Exception as e:  # anything else is this file's problem, not the thread's
            rec.update(status="error", error=f"{type(e).__name__}: {e}"[:200])
        return rec

    def _fetch(self, url: str, timeout: float) -> tuple[bytes, str]:
        """GET with manual redirects (each hop checked), retries with backoff on timeouts,
        connection errors and 5xx, a content-type check, a streamed byte cap, and one deadline
        (`file_timeout`, default 3x `timeout`) over all of it."""
        import requests
        import urllib3

        retries = self.options["retries"]
        deadline = Deadline(self.options["file_timeout"], self.stop)
        for attempt in range(retries + 1):
            if attempt:
                deadline.sleep(self.options["backoff"] * 2 ** (attempt - 1))
            try:
                with self._open(url, deadline, timeout) as response:
                    if response.status_code >= 500 and attempt < retries:
                        continue
                    if response.status_code != 200:
                        raise Rejected(f"http_{response.status_code}")
                    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                    if not content_type.startswith("image/"):
                        raise Rejected("not_image_content_type")
                    return self._read_body(response, deadline), content_type
            except (requests.Timeout, urllib3.exceptions.TimeoutError):
                if attempt == retries:
                    raise Rejected("timeout") from None
            except (requests.ConnectionError, urllib3.exceptions.ProtocolError):
                if attempt == retries:
                    raise Rejected("connection_error") from None
        raise Rejected("http_5xx")

    def _open(self, url: str, deadline: Deadline, timeout: float):
        """The response after following at most REDIRECT_LIMIT redirects, each hop checked
        against the address policy before anything is sent to it."""
        current = url
        for _hop in range(REDIRECT_LIMIT + 1):
            deadline.check()
            self.policy.check(current)
            t = deadline.per_read(timeout)
            response = self.session.get(current, timeout=(t, t), stream=True, allow_redirects=False)
            if response.status_code in REDIRECT_CODES and "location" in response.headers:
                response.close()
                current = urljoin(current, response.headers["location"])
                continue
            return response
        raise Rejected("too_many_redirects")

    def _read_body(self, response, deadline: Deadline) -> bytes:
        """The body, streamed under the byte cap and the deadline. `read1` returns whatever has
        arrived (one socket read), so the deadline is checked at least once per read timeout
        even when the server sends a byte at a time."""
        max_bytes = self.options["max_bytes"]
        length = response.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise Rejected("too_large")
        read = getattr(response.raw, "read1", None) or response.raw.read  # read1: urllib3 >= 2
        chunks, total = [], 0
        while True:
            deadline.check()
            chunk = read(64 * 1024, decode_content=True)
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > max_bytes:
                raise Rejected("too_large")
            chunks.append(chunk)


class CamkitCrawler(Crawler):
    """icrawler's Crawler with an idle and a total deadline (which also cut the downloads in
    flight short), and a quiet logger."""

    def __init__(self, *args, idle_timeout: float = 30, deadline: float | None = None,
                 on_tick: Callable[[], None] | None = None, **kwargs):
        self.idle_timeout, self.on_tick = idle_timeout, on_tick
        self.deadline = deadline if deadline is not None else time.monotonic() + 3600
        self.timed_out: str | None = None
        super().__init__(*args, log_level=logging.CRITICAL, **kwargs)

    def crawl(self, feeder_kwargs=None, parser_kwargs=None, downloader_kwargs=None):
        self.signal.reset()
        self.feeder.start(**(feeder_kwargs or {}))
        self.parser.start(**(parser_kwargs or {}))
        self.downloader.start(**(downloader_kwargs or {}))
        start = time.monotonic()
        try:
            while self.downloader.is_alive():
                if not self.feeder.is_alive():
                    self.signal.set(feeder_exited=True)
                if not self.parser.is_alive():
                    self.signal.set(parser_exited=True)
                self.timed_out = self.timed_out or self._timeout(start)
                if self.timed_out:
                    self.signal.set(reach_max_num=True)
                    self.downloader.stop.set()   # downloads in flight end at their next read
                if self.on_tick:
                    self.on_tick()
                time.sleep(0.05)
        finally:  # also on Ctrl-C: no download thread may go on writing after the crawl returns
            self.signal.set(reach_max_num=True)
            self.downloader.stop.set()
        for pool in (self.feeder, self.parser):
            if not pool.in_queue.empty():
                pool.clear_buffer()
        if not self.downloader.in_queue.empty():
            self.downloader.clear_buffer(True)

    def _timeout(self, start: float) -> str | None:
        """'total' past the keyword's deadline, 'idle' after idle_timeout without a manifest line."""
        now = time.monotonic()
        if now > self.deadline:
            return "total"
        if now - max(self.downloader.ledger.last_progress, start) > self.idle_timeout:
            return "idle"
        return None


# ---------------------------------------------------------------- progress

class Progress:
    """How a long stage shows progress, decided by where the text goes.

    On a terminal: one line repainted in place (`\\r`) at most every `interval` seconds (4 times
    a second). Anywhere else (a file, a pipe, a CI log): one line when a stage starts and one
    when it ends, never `\\r`, so a redirected crawl stays a few lines long."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, interval: float = 0.25):
        self.enabled, self.interval = enabled, interval
        self.stream = stream if stream is not None else sys.stderr
        self.tty = enabled and _isatty(self.stream)
        self._last, self._width = float("-inf"), 0

    def start(self, text: str) -> None:
        """A stage begins: painted on a terminal, one line elsewhere."""
        if self.tty:
            self._paint(text)
        elif self.enabled:
            print(text, file=self.stream, flush=True)

    def update(self, text: str) -> None:
        """Repaint on a terminal when the interval has passed; nothing elsewhere."""
        if self.tty and time.monotonic() - self._last >= self.interval:
            self._paint(text)

    def end(self, text: str) -> None:
        """A stage ends: painted and closed with a newline on a terminal, one line elsewhere."""
        if self.tty:
            self._paint(text)
            self.stream.write("\n")
            self._width = 0
        elif self.enabled:
            print(text, file=self.stream, flush=True)

    def _paint(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._last, self._width = time.monotonic(), len(text)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


# ---------------------------------------------------------------- public API

@dataclass
class CrawlSummary:
    keyword: str
    folder: str
    requested: int
    saved: int
    engines: list[str]
    rejected: dict[str, int]
    timed_out: str | None = None


class NothingSaved(CamkitError):
    """Some keyword ended with no image at all (the message says why, engine by engine).
    `summaries` keeps every keyword's CrawlSummary for library callers."""

    def __init__(self, message: str, summaries: list[CrawlSummary]):
        super().__init__(message)
        self.summaries = summaries


@dataclass
class _Settings:
    """What every keyword's and engine's run shares."""
    ledger: Ledger
    policy: AddressPolicy
    options: dict
    host: str | None
    threads: int
    timeout: float
    idle_timeout: float
    total_timeout: float
    license: str | None
    progress: Progress


@dataclass
class _KeywordRun:
    state: KeywordState
    engines: list[str] = field(default_factory=list)
    timed_out: str | None = None
    why: dict[str, str] = field(default_factory=dict)   # engine -> what it gave, in words


def crawl(keywords: Sequence[str], max_num: int = 100, out: str | Path = "data/images", engine: str = "auto",
          endpoint: str | None = None, threads: int = 8, min_size: int = 64, max_side: int | None = 512,
          max_bytes: str | int = "20MB", license: str | None = None, allow_private: bool = False,
          timeout: float = 10, retries: int = 2, backoff: float = 0.5, idle_timeout: float = 60,
          total_timeout: float = 3600, phash_threshold: int = PHASH_THRESHOLD,
          file_timeout: float | None = None, quiet: bool = False) -> list[CrawlSummary]:
    """Fill `out/<slug>/` with up to `max_num` verified, deduplicated images per keyword.

    Rerunning continues where the manifest left off (no URL or image is fetched twice).
    `timeout` bounds each network read; `file_timeout` (default 3 x `timeout`) bounds each
    download in all; `idle_timeout` and `total_timeout` bound each keyword, and also end the
    downloads in flight. Raises NothingSaved (a CamkitError) when a keyword ends with no image
    in its folder, after the manifest is written, with the reason per engine tried.
    Progress goes to stderr (see Progress) unless `quiet` is set."""
    names = _engine_names(engine, endpoint, license)
    if max_num < 1 or threads < 1 or min_size < 1:
        raise CamkitError("--max-num, --threads and --min-size must be at least 1")
    if max_side is not None and max_side < min_size:
        raise CamkitError(f"--max-side ({max_side}) must not be below --min-size ({min_size})")
    if endpoint and origin(endpoint) is None:
        raise CamkitError(f"--endpoint must be an http(s) URL like http://127.0.0.1:8000, not '{endpoint}'")
    slugs = [slugify(k) for k in keywords]
    clash = next((s for s in slugs if slugs.count(s) > 1), None)
    if clash:
        raise CamkitError(f"two keywords map to the same folder '{clash}'; make them distinct")
    out = Path(out)
    ensure_writable_dir(out, "output folder")
    options = dict(min_size=min_size, max_side=max_side, max_bytes=parse_bytes(max_bytes), retries=retries,
                   backoff=backoff, file_timeout=file_timeout or FILE_TIMEOUT_FACTOR * timeout)
    host = f"{urlsplit(endpoint).scheme}://{urlsplit(endpoint).netloc}" if endpoint else None
    settings = _Settings(Ledger(out, phash_threshold), AddressPolicy([endpoint] if endpoint else [], allow_private),
                         options, host, threads, timeout, idle_timeout, total_timeout, license,
                         Progress(not quiet))
    settings.ledger.open()
    try:
        runs = [_crawl_keyword(k, s, names, max_num, settings) for k, s in zip(keywords, slugs)]
    finally:
        settings.ledger.close()
    # built at the end: a later keyword can move an earlier one's image aside as ambiguous
    summaries = [CrawlSummary(r.state.keyword, str(r.state.folder), max_num, r.state.saved, r.engines,
                              dict(sorted(r.state.rejected.items())), r.timed_out) for r in runs]
    empty = [r for r in runs if r.state.saved <= 0]
    if empty:
        raise NothingSaved("no images saved for " + "; and for ".join(
            f"'{r.state.keyword}': " + "; ".join(f"{n}: {w}" for n, w in r.why.items()) for r in empty), summaries)
    return summaries


def _engine_names(engine: str, endpoint: str | None, license: str | None) -> list[str]:
    """The engines to try, in order, after checking the engine, API key and license options."""
    if engine != "auto" and engine not in ENGINES:
        raise CamkitError(f"unknown engine '{engine}'; choose from auto, {', '.join(ENGINES)}")
    if engine == "auto":
        names = [n for n in AUTO_ORDER if n != "flickr" or os.environ.get("FLICKR_API_KEY")]
    else:
        names = [engine]
    if "flickr" in names and not os.environ.get("FLICKR_API_KEY") and not endpoint:
        raise CamkitError("the flickr engine needs an API key in FLICKR_API_KEY")
    if license and not all(license in LICENSES.get(n, {}) for n in names):
        raise CamkitError(f"--license '{license}' is supported by bing ({', '.join(LICENSES['bing'])}) and flickr")
    return names


def _crawl_keyword(keyword: str, slug: str, names: list[str], max_num: int, s: _Settings) -> _KeywordRun:
    """One keyword through the engines in order: auto falls back only when an engine added
    nothing, and the keyword's total deadline is shared by all of them."""
    state = KeywordState(keyword, slug, s.ledger.out / slug, max_num)
    s.ledger.add_keyword(state)
    run, deadline = _KeywordRun(state), time.monotonic() + s.total_timeout
    for name in names:
        if state.saved >= max_num:
            break
        before, rejected_before = state.saved, dict(state.rejected)
        timed_out, log = _run_engine(ENGINES[name], state, s, deadline)
        run.engines.append(name)
        run.timed_out = run.timed_out or timed_out
        rejected = {k: v - rejected_before.get(k, 0) for k, v in state.rejected.items()
                    if v > rejected_before.get(k, 0)}
        run.why[name] = log.why(rejected, timed_out)
        if state.saved > before or timed_out == "total":
            break
    return run


def _run_engine(engine: Engine, state: KeywordState, s: _Settings, deadline: float) -> tuple[str | None, SearchLog]:
    """One engine's feeder/parser/downloader run for one keyword: (timeout that ended it, SearchLog)."""
    missing, log = state.target - state.saved, SearchLog()
    extra = ""
    if s.license and engine.name == "bing":
        extra = "&qft=" + quote_plus(LICENSES["bing"][s.license])
    elif s.license and engine.name == "flickr":
        extra = "&license=" + LICENSES["flickr"][s.license]
    pages = min(1000 // engine.page_size + 1, (3 * missing) // engine.page_size + 2)

    def line() -> str:
        bar = "#" * int(30 * state.saved / state.target)
        return (f"{state.keyword:<20} [{bar:<30}] {state.saved}/{state.target} saved, "
                f"{sum(state.rejected.values())} rejected ({engine.name})")

    s.progress.start(f"{state.keyword}: searching {engine.name} for {missing} images")
    crawler = CamkitCrawler(EngineFeeder, engine.parser, VerifyingDownloader, parser_threads=2,
                            downloader_threads=s.threads, idle_timeout=s.idle_timeout, deadline=deadline,
                            on_tick=lambda: s.progress.update(line()),
                            storage={"backend": "FileSystem", "root_dir": str(state.folder)},
                            extra_parser_args=dict(log=log),
                            extra_downloader_args=dict(ledger=s.ledger, state=state, policy=s.policy,
                                                       engine=engine.name, options=s.options))
    crawler.session.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) camkit"
    crawler.crawl(feeder_kwargs=dict(url_template=(s.host or engine.host) + engine.path, keyword=state.keyword,
                                     pages=pages, page_size=engine.page_size, extra=extra),
                  parser_kwargs=dict(queue_timeout=0.5, req_timeout=s.timeout, max_retry=s.options["retries"] + 1),
                  downloader_kwargs=dict(max_num=state.target, queue_timeout=0.5, req_timeout=s.timeout))
    stopped = f", stopped by the {crawler.timed_out} timeout" if crawler.timed_out else ""
    s.progress.end(f"{state.keyword}: {engine.name} done, {state.saved}/{state.target} saved, "
                   f"{sum(state.rejected.values())} rejected{stopped}")
    return crawler.timed_out, log


# ---------------------------------------------------------------- verify an existing folder

@dataclass
class VerifySummary:
    folder: str
    checked: int
    kept: int
    rejected: dict[str, int]


def verify(folder: str | Path, min_size: int = 64, phash_threshold: int = PHASH_THRESHOLD) -> VerifySummary:
    """The crawl's checks and dedup on a class-per-folder dataset already on disk. Rejects are
    moved to `folder/_rejected/<reason>/<class>/` (never deleted, and never over an earlier
    reject of the same name: that one is kept and the new one gets `name-1.ext`); a log goes to
    verify.jsonl."""
    root = Path(folder)
    if not root.is_dir():
        raise CamkitError(f"folder '{root}' does not exist")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "_"))
                     and d.resolve().is_relative_to(root.resolve()))
    if not classes:
        raise CamkitError(f"folder '{root}' has no class sub-folders")
    index = HashIndex(phash_threshold)
    moves: dict[Path, str] = {}
    seen: list[tuple[Path, str]] = []
    for cls in classes:
        for path in sorted(f for f in cls.rglob("*") if is_dataset_image(f, root)):
            rel = str(path.relative_to(root))
            seen.append((path, rel))
            try:
                v = verify_bytes(path.read_bytes(), min_size, max_side=None)
                kind, twin = index.match(v.sha256, v.phash)
                if twin is not None and Path(twin).parts[0] != cls.name:
                    moves[root / twin] = "ambiguous"
                    index.remove(twin)
                    index.ambiguous.append((v.sha256, v.phash))
                    kind = "ambiguous"
                if kind:
                    moves[path] = kind
                else:
                    index.add(rel, v.sha256, v.phash)
            except Rejected as e:
                moves[path] = str(e)
            except OSError:
                moves[path] = "unreadable"
            except Exception:  # noqa: BLE001  as in the crawl: this file's problem, not the command's
                moves[path] = "error"
    # logged once all are checked: an image kept at first may be moved aside as ambiguous later
    log = [{"file": rel, "status": moves.get(path, "ok")} for path, rel in seen]
    checked = len(seen)
    rejected: dict[str, int] = {}
    for path, reason in moves.items():  # never over an earlier reject of the same name
        move_aside(path, root / REJECTED / reason / path.relative_to(root))
        rejected[reason] = rejected.get(reason, 0) + 1
    with open(root / "verify.jsonl", "a", encoding="utf-8") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in log)
    return VerifySummary(str(root), checked, checked - sum(rejected.values()), dict(sorted(rejected.items())))
