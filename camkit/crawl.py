"""Crawl image search engines into clean class folders, built on icrawler's Feeder/Parser/Downloader.

What camkit adds over icrawler: every file is verified in flight (content type, streamed size
cap, full decode, pixel cap, minimum size), written atomically, deduplicated across keywords
(exact and perceptual), logged in `manifest.jsonl` (which also makes a rerun resume), refused
when its URL resolves to a private address, and the crawl always ends (idle / total timeouts).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence
from urllib.parse import quote_plus, urljoin, urlsplit

import numpy as np
from icrawler import Crawler, Feeder, ImageDownloader, Parser
from PIL import Image, ImageOps

from camkit.errors import CamkitError
from camkit.images import IMAGE_SUFFIXES, ImageRejected, decode, to_rgb

MANIFEST = "manifest.jsonl"
REJECTED = "_rejected"
MAX_PIXELS = 50_000_000          # 50 MP: decodes fine, a 20000x20000 bomb does not pass
PHASH_THRESHOLD = 6              # Hamming distance (of 64 bits) for "near duplicate"
REDIRECT_LIMIT = 5
REDIRECT_CODES = (301, 302, 303, 307, 308)


# ---------------------------------------------------------------- names and sizes

def slugify(keyword: str) -> str:
    """A folder name that cannot escape the output folder: lowercase letters, digits and
    dashes; no separators, no '..', no leading dot."""
    slug = re.sub(r"[^a-z0-9]+", "-", keyword.strip().lower()).strip("-")[:64].strip("-")
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


class AddressPolicy:
    """Refuses URLs whose host resolves to loopback, private or link-local addresses, except
    the endpoint's own addresses (a test server or mirror) or when allow_private is set."""

    def __init__(self, allowed_hosts: Iterable[str] = (), allow_private: bool = False):
        self.allow_private = allow_private
        self.allowed = {a for h in allowed_hosts for a in self._addresses(h)}

    @staticmethod
    def _addresses(host: str) -> list[str]:
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            return resolve(host)

    def check(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Rejected("bad_url")
        if self.allow_private:
            return
        addresses = self._addresses(parts.hostname)
        if not addresses:
            raise Rejected("unresolvable")
        if any(is_private(a) and a not in self.allowed for a in addresses):
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


class Ledger:
    """Everything the downloader threads share, behind one lock: the manifest, the URLs already
    tried, the accepted images' hashes (dedup across keywords) and per-keyword counts."""

    def __init__(self, out: Path, phash_threshold: int = PHASH_THRESHOLD):
        self.out = out
        self.lock = threading.RLock()
        self.index = HashIndex(phash_threshold)
        self.seen_urls: set[str] = set()
        self.keywords: dict[str, KeywordState] = {}
        self.last_progress = time.monotonic()
        self._manifest = None

    def open(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / MANIFEST
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                self.seen_urls.add(rec.get("url") or "")
                if rec.get("sha256") and rec.get("status") == "ambiguous":
                    self.index.ambiguous.append((rec["sha256"], int(rec["phash"], 16)))
                elif rec.get("status") == "ok" and rec.get("file") and (self.out / rec["file"]).exists():
                    self.index.add(rec["file"], rec["sha256"], int(rec["phash"], 16))
        self._manifest = open(path, "a", encoding="utf-8")

    def close(self) -> None:
        if self._manifest:
            self._manifest.close()
            self._manifest = None

    def add_keyword(self, state: KeywordState) -> None:
        state.folder.mkdir(parents=True, exist_ok=True)
        for tmp in state.folder.glob(".tmp-*"):
            tmp.unlink()  # our own partial writes from a killed run, never a user's file
        existing = [f for f in state.folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        state.saved = sum(1 for f in existing if f"{state.slug}/{f.name}" in self.index.files)
        numbers = [int(f.stem) for f in existing if f.stem.isdigit()]
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

    def claim_url(self, url: str) -> bool:
        with self.lock:
            if url in self.seen_urls:
                return False
            self.seen_urls.add(url)
            return True

    def accept(self, state: KeywordState, v: Verified) -> tuple[str, str | None]:
        """Dedup, then write atomically (temp file + rename). Returns (status, relative file)."""
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
            name = f"{state.next_index:06d}.{v.ext}"
            state.next_index += 1
            tmp = state.folder / f".tmp-{name}"
            tmp.write_bytes(v.data)
            os.replace(tmp, state.folder / name)
            rel = f"{state.slug}/{name}"
            self.index.add(rel, v.sha256, v.phash)
            state.saved += 1
            return "ok", rel

    def _quarantine(self, rel: str) -> None:
        """An image found under two keywords belongs to neither: move the earlier copy aside
        (never delete) and remember its hashes so later copies are refused too."""
        sha, ph = self.index.remove(rel)
        self.index.ambiguous.append((sha, ph))
        slug = rel.split("/")[0]
        src, dest = self.out / rel, self.out / REJECTED / "ambiguous" / rel
        if src.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            if slug in self.keywords:
                self.keywords[slug].saved -= 1
        state = self.keywords.get(slug)
        self.record(keyword=state.keyword if state else slug, slug=slug, engine=None, url=None,
                    status="ambiguous", file=f"{REJECTED}/ambiguous/{rel}", moved_from=rel,
                    sha256=sha, phash=f"{ph:016x}")


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


class BingParser(Parser):
    """`div.imgpt > a[m]`, whose `m` attribute is JSON with `murl` — any image type (icrawler's
    own parser keeps only URLs containing '.jpg')."""

    def parse(self, response, **kwargs):
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(response.content.decode("utf-8", "ignore"), "html.parser")
        for a in soup.select("div.imgpt > a[m]"):
            for meta in _json_objects(a["m"]):
                if isinstance(meta, dict) and isinstance(meta.get("murl"), str):
                    yield {"file_url": meta["murl"]}


class BaiduParser(Parser):
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


class FlickrParser(Parser):
    """flickr.photos.search JSON -> static image URLs (needs FLICKR_API_KEY)."""

    def parse(self, response, **kwargs):
        for content in _json_objects(response.content.decode("utf-8", "ignore")):
            for p in content.get("photos", {}).get("photo", []) if isinstance(content, dict) else []:
                if all(k in p for k in ("server", "id", "secret")):
                    yield {"file_url": f"https://live.staticflickr.com/{p['server']}/{p['id']}_{p['secret']}_b.jpg"}


class GoogleParser(Parser):
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
    parser: type[Parser]


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

class VerifyingDownloader(ImageDownloader):
    """icrawler's downloader with camkit's in-flight checks; one task never kills a thread."""

    def __init__(self, *args, ledger: Ledger | None = None, state: KeywordState | None = None,
                 policy: AddressPolicy | None = None, engine: str = "", options: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ledger, self.state, self.policy, self.engine = ledger, state, policy, engine
        self.options = options or {}

    def reach_max_num(self) -> bool:
        return self.signal.get("reach_max_num") or self.state.saved >= self.state.target

    def download(self, task, default_ext, timeout=5, max_retry=3, overwrite=False, **kwargs):
        url = task["file_url"]
        if self.reach_max_num():
            self.signal.set(reach_max_num=True)
            return False
        if not self.ledger.claim_url(url):
            return False
        rec = {"keyword": self.state.keyword, "slug": self.state.slug, "engine": self.engine, "url": url}
        try:
            data, content_type = self._fetch(url, timeout)
            v = verify_bytes(data, self.options["min_size"], self.options["max_side"])
            status, rel = self.ledger.accept(self.state, v)
            rec.update(status=status, file=rel, sha256=v.sha256, phash=f"{v.phash:016x}",
                       width=v.width, height=v.height, bytes=len(data), content_type=content_type)
        except Rejected as e:
            rec.update(status=str(e))
        except Exception as e:  # anything else is this file's problem, not the thread's
            rec.update(status="error", error=f"{type(e).__name__}: {e}"[:200])
        if rec["status"] != "enough":
            self.ledger.record(**rec)
        if self.reach_max_num():
            self.signal.set(reach_max_num=True)
        return rec["status"] == "ok"

    def _fetch(self, url: str, timeout: float) -> tuple[bytes, str]:
        """GET with manual redirects (each hop checked), retries with backoff on timeouts,
        connection errors and 5xx, content-type check and a streamed byte cap."""
        import requests

        max_bytes, retries = self.options["max_bytes"], self.options["retries"]
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(self.options["backoff"] * 2 ** (attempt - 1))
            current = url
            try:
                for _hop in range(REDIRECT_LIMIT + 1):
                    self.policy.check(current)
                    response = self.session.get(current, timeout=(timeout, timeout), stream=True,
                                                allow_redirects=False)
                    if response.status_code in REDIRECT_CODES and "location" in response.headers:
                        response.close()
                        current = urljoin(current, response.headers["location"])
                        continue
                    break
                else:
                    raise Rejected("too_many_redirects")
                with response:
                    if response.status_code >= 500 and attempt < retries:
                        continue
                    if response.status_code != 200:
                        raise Rejected(f"http_{response.status_code}")
                    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
                    if not content_type.startswith("image/"):
                        raise Rejected("not_image_content_type")
                    length = response.headers.get("content-length")
                    if length and length.isdigit() and int(length) > max_bytes:
                        raise Rejected("too_large")
                    chunks, total = [], 0
                    for chunk in response.iter_content(64 * 1024):
                        total += len(chunk)
                        if total > max_bytes:
                            raise Rejected("too_large")
                        chunks.append(chunk)
                    return b"".join(chunks), content_type
            except (requests.Timeout, requests.ConnectionError) as e:
                if attempt == retries:
                    raise Rejected("timeout" if isinstance(e, requests.Timeout) else "connection_error") from None
        raise Rejected("http_5xx")


class CamkitCrawler(Crawler):
    """icrawler's Crawler with an idle and a total deadline, and a quiet logger."""

    def __init__(self, *args, idle_timeout: float = 30, total_timeout: float = 3600,
                 on_tick=None, **kwargs):
        self.idle_timeout, self.total_timeout, self.on_tick = idle_timeout, total_timeout, on_tick
        self.timed_out: str | None = None
        super().__init__(*args, log_level=logging.CRITICAL, **kwargs)

    def crawl(self, feeder_kwargs=None, parser_kwargs=None, downloader_kwargs=None):
        self.signal.reset()
        self.feeder.start(**(feeder_kwargs or {}))
        self.parser.start(**(parser_kwargs or {}))
        self.downloader.start(**(downloader_kwargs or {}))
        start = time.monotonic()
        ledger = self.downloader.ledger
        while self.downloader.is_alive():
            if not self.feeder.is_alive():
                self.signal.set(feeder_exited=True)
            if not self.parser.is_alive():
                self.signal.set(parser_exited=True)
            now = time.monotonic()
            if now - start > self.total_timeout:
                self.timed_out = "total"
            elif now - max(ledger.last_progress, start) > self.idle_timeout:
                self.timed_out = "idle"
            if self.timed_out:
                self.signal.set(reach_max_num=True)
            if self.on_tick:
                self.on_tick()
            time.sleep(0.05)
        for pool in (self.feeder, self.parser):
            if not pool.in_queue.empty():
                pool.clear_buffer()
        if not self.downloader.in_queue.empty():
            self.downloader.clear_buffer(True)


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


def crawl(keywords: Sequence[str], max_num: int = 100, out: str | Path = "data/images", engine: str = "auto",
          endpoint: str | None = None, threads: int = 8, min_size: int = 64, max_side: int | None = 512,
          max_bytes: str | int = "20MB", license: str | None = None, allow_private: bool = False,
          timeout: float = 10, retries: int = 2, backoff: float = 0.5, idle_timeout: float = 60,
          total_timeout: float = 3600, phash_threshold: int = PHASH_THRESHOLD, progress: bool = True
          ) -> list[CrawlSummary]:
    """Fill `out/<slug>/` with up to `max_num` verified, deduplicated images per keyword.

    Rerunning continues where the manifest left off (no URL or image is fetched twice)."""
    if not keywords:
        raise CamkitError("give at least one keyword")
    if max_num < 1 or threads < 1 or min_size < 1:
        raise CamkitError("--max-num, --threads and --min-size must be at least 1")
    if max_side is not None and max_side < min_size:
        raise CamkitError(f"--max-side ({max_side}) must not be below --min-size ({min_size})")
    names = list(ENGINES) if engine == "auto" else [engine]
    if engine != "auto" and engine not in ENGINES:
        raise CamkitError(f"unknown engine '{engine}'; choose from auto, {', '.join(ENGINES)}")
    if engine == "auto":
        names = [n for n in AUTO_ORDER if n != "flickr" or os.environ.get("FLICKR_API_KEY")]
    if "flickr" in names and not os.environ.get("FLICKR_API_KEY") and not endpoint:
        raise CamkitError("the flickr engine needs an API key in FLICKR_API_KEY")
    if license and not all(license in LICENSES.get(n, {}) for n in names):
        raise CamkitError(f"--license '{license}' is supported by bing ({', '.join(LICENSES['bing'])}) and flickr")
    host = None
    if endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CamkitError(f"--endpoint must be an http(s) URL like http://127.0.0.1:8000, not '{endpoint}'")
        host = f"{parts.scheme}://{parts.netloc}"
    slugs = [slugify(k) for k in keywords]
    clash = next((s for s in slugs if slugs.count(s) > 1), None)
    if clash:
        raise CamkitError(f"two keywords map to the same folder '{clash}'; make them distinct")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CamkitError(f"cannot create output folder '{out}' ({e.strerror or e})") from None
    options = dict(min_size=min_size, max_side=max_side, max_bytes=parse_bytes(max_bytes), retries=retries,
                   backoff=backoff)
    policy = AddressPolicy([urlsplit(endpoint).hostname] if endpoint else [], allow_private)
    ledger = Ledger(out, phash_threshold)
    ledger.open()
    runs: list[tuple[KeywordState, list[str], str | None]] = []
    try:
        for keyword, slug in zip(keywords, slugs):
            state = KeywordState(keyword, slug, out / slug, max_num)
            ledger.add_keyword(state)
            used, timed_out = [], None
            for name in names:
                if state.saved >= max_num:
                    break
                before = state.saved
                used.append(name)
                timed_out = _run_engine(ENGINES[name], keyword, state, ledger, policy, options, host, threads,
                                        timeout, idle_timeout, total_timeout, license, progress)
                if state.saved > before or timed_out == "total":
                    break  # auto falls back only when an engine returned nothing
            if progress:
                print(file=sys.stderr)
            runs.append((state, used, timed_out))
    finally:
        ledger.close()
    # built at the end: a later keyword can move an earlier one's image aside as ambiguous
    return [CrawlSummary(st.keyword, str(st.folder), max_num, st.saved, used, dict(sorted(st.rejected.items())),
                         timed_out) for st, used, timed_out in runs]


def _run_engine(engine: Engine, keyword: str, state: KeywordState, ledger: Ledger, policy: AddressPolicy,
                options: dict, host: str | None, threads: int, timeout: float, idle_timeout: float,
                total_timeout: float, license: str | None, progress: bool) -> str | None:
    missing = state.target - state.saved
    if missing <= 0:
        return None
    extra = ""
    if license and engine.name == "bing":
        extra = "&qft=" + quote_plus(LICENSES["bing"][license])
    elif license and engine.name == "flickr":
        extra = "&license=" + LICENSES["flickr"][license]
    pages = min(1000 // engine.page_size + 1, (3 * missing) // engine.page_size + 2)

    def tick():
        if progress:
            done = state.saved
            bar = "#" * int(30 * done / state.target)
            print(f"\r{state.keyword:<20} [{bar:<30}] {done}/{state.target} saved, "
                  f"{sum(state.rejected.values())} rejected ({engine.name})", end="", file=sys.stderr)

    crawler = CamkitCrawler(EngineFeeder, engine.parser, VerifyingDownloader, parser_threads=2,
                            downloader_threads=threads, idle_timeout=idle_timeout, total_timeout=total_timeout,
                            on_tick=tick, storage={"backend": "FileSystem", "root_dir": str(state.folder)},
                            extra_downloader_args=dict(ledger=ledger, state=state, policy=policy,
                                                       engine=engine.name, options=options))
    crawler.session.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) camkit"
    crawler.crawl(feeder_kwargs=dict(url_template=(host or engine.host) + engine.path, keyword=keyword,
                                     pages=pages, page_size=engine.page_size, extra=extra),
                  parser_kwargs=dict(queue_timeout=0.5, req_timeout=timeout, max_retry=options["retries"] + 1),
                  downloader_kwargs=dict(max_num=state.target, queue_timeout=0.5, req_timeout=timeout))
    tick()
    return crawler.timed_out


# ---------------------------------------------------------------- verify an existing folder

@dataclass
class VerifySummary:
    folder: str
    checked: int
    kept: int
    rejected: dict[str, int]


def verify(folder: str | Path, min_size: int = 64, phash_threshold: int = PHASH_THRESHOLD) -> VerifySummary:
    """The crawl's checks and dedup on a class-per-folder dataset already on disk. Rejects are
    moved to `folder/_rejected/<reason>/<class>/` (never deleted); a log goes to verify.jsonl."""
    root = Path(folder)
    if not root.is_dir():
        raise CamkitError(f"folder '{root}' does not exist")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    if not classes:
        raise CamkitError(f"folder '{root}' has no class sub-folders")
    index = HashIndex(phash_threshold)
    moves: dict[Path, str] = {}
    log = []
    checked = 0
    for cls in classes:
        for path in sorted(f for f in cls.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES):
            checked += 1
            rel = str(path.relative_to(root))
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
            log.append({"file": rel, "status": moves.get(path, "ok")})
    rejected: dict[str, int] = {}
    for path, reason in moves.items():
        dest = root / REJECTED / reason / path.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        rejected[reason] = rejected.get(reason, 0) + 1
    with open(root / "verify.jsonl", "a", encoding="utf-8") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in log)
    return VerifySummary(str(root), checked, checked - sum(rejected.values()), dict(sorted(rejected.items())))
