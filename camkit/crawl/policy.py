"""What may be fetched, and how politely: the address policy (no private addresses), the one
frozen FetchPolicy every download shares, per-download deadlines, per-host concurrency and
back-off, `Retry-After` and `X-Robots-Tag`."""

from __future__ import annotations

import email.utils
import ipaddress
import socket
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

from camkit.version import __version__
from camkit.crawl.names import origin
from camkit.errors import CamkitError

# Browser-shaped (Bing and Baidu answer a bare client with another page layout) and naming
# camkit, as Wikimedia's User-Agent policy asks of every client.
USER_AGENT = f"Mozilla/5.0 (X11; Linux x86_64; compatible; camkit/{__version__}; image-dataset crawler)"
FILE_TIMEOUT_FACTOR = 3          # one download may take 3x --timeout in all (connect, body, retries)
REDIRECT_LIMIT = 5
REDIRECT_CODES = (301, 302, 303, 307, 308)
RETRY_STATUSES = (429, 503)       # "come back later": honour Retry-After
NOAI_DIRECTIVES = frozenset({"noai", "noimageai"})  # img2dataset's opt-out directives for images


class Rejected(Exception):
    """A file that must not enter the dataset; the message is the manifest status."""


@dataclass(frozen=True)
class FetchPolicy:
    """Everything a download is checked against, decided once per crawl and passed as one value.

    `timeout` bounds each network read; `file_timeout` bounds a download in all (redirects,
    retries and waits for `Retry-After` included); retry k waits `backoff * 2**(k-1)` seconds
    unless the server says how long (`Retry-After`, honoured up to `max_wait`). At most
    `per_host` downloads run against one host at a time. `license` (a licence class) refuses
    images without a matching known licence; `robots_tag` refuses images served with
    `X-Robots-Tag: noai` / `noimageai`."""
    min_size: int = 64
    max_side: int | None = 512
    max_bytes: int = 20 * 1024 ** 2
    timeout: float = 10.0
    file_timeout: float = 30.0
    retries: int = 2
    backoff: float = 0.5
    max_wait: float = 30.0
    per_host: int = 6
    license: str | None = None
    robots_tag: bool = True
    user_agent: str = USER_AGENT

    def __post_init__(self) -> None:
        if self.min_size < 1 or self.per_host < 1:
            raise CamkitError("--min-size and the per-host limit must be at least 1")
        if self.max_side is not None and self.max_side < self.min_size:
            raise CamkitError(f"--max-side ({self.max_side}) must not be below --min-size ({self.min_size})")
        if self.timeout <= 0 or self.file_timeout <= 0 or self.retries < 0 or self.backoff < 0:
            raise CamkitError("--timeout and --file-timeout must be positive, retries and backoff not negative")


# ---------------------------------------------------------------- addresses

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


# ---------------------------------------------------------------- time

class Deadline:
    """The time one download may take in all: connect, redirects, retries and body together.

    requests' timeout bounds each read, not the download, so a server sending one byte a second
    would hold a thread for ever; this is checked between reads instead, and `stop` (set when
    the crawl's own idle or total deadline passes) ends it early."""

    def __init__(self, seconds: float, stop: threading.Event):
        self.end, self.stop = time.monotonic() + seconds, stop

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self) -> None:
        if self.stop.is_set() or time.monotonic() > self.end:
            raise Rejected("timeout")

    def per_read(self, timeout: float) -> float:
        """requests' (connect, read) timeout for the next request: never past the deadline."""
        return max(0.05, min(timeout, self.left()))

    def sleep(self, seconds: float) -> None:
        self.stop.wait(min(seconds, max(0.0, self.left())))
        self.check()


def retry_after(headers, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), or None
    when there is none or it does not parse (RFC 9110 §10.2.3)."""
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def robots_tag_forbids(values: Iterable[str], agent: str = "camkit") -> bool:
    """Whether `X-Robots-Tag` values opt the image out of AI use: a `noai` or `noimageai`
    directive, either for every agent or prefixed with `camkit:` (as img2dataset reads it)."""
    for value in values:
        head, sep, tail = value.partition(":")
        scoped = bool(sep) and " " not in head.strip() and "," not in head
        if scoped and head.strip().lower() != agent:
            continue
        directives = {d.strip().lower() for d in (tail if scoped else value).split(",")}
        if directives & NOAI_DIRECTIVES:
            return True
    return False


# ---------------------------------------------------------------- per-host politeness

class HostGate:
    """At most `per_host` requests in flight to one host, and a shared "not before" time per
    host: when a host answers 429 / 503, every thread waits before asking it again, instead of
    each one hammering it on its own retry schedule."""

    def __init__(self, per_host: int):
        self.per_host = per_host
        self.lock = threading.Lock()
        self.slots: dict[str, threading.BoundedSemaphore] = {}
        self.not_before: dict[str, float] = defaultdict(float)

    def _slot(self, host: str) -> threading.BoundedSemaphore:
        with self.lock:
            if host not in self.slots:
                self.slots[host] = threading.BoundedSemaphore(self.per_host)
            return self.slots[host]

    def back_off(self, host: str, seconds: float) -> None:
        with self.lock:
            self.not_before[host] = max(self.not_before[host], time.monotonic() + seconds)

    @contextmanager
    def slot(self, host: str, deadline: Deadline) -> Iterator[None]:
        """Hold one of the host's slots, after its back-off; gives up with Rejected('timeout')
        when the download's deadline passes while waiting."""
        wait = self.not_before[host] - time.monotonic()
        if wait > 0:
            if wait > deadline.left():
                raise Rejected("rate_limited")
            deadline.sleep(wait)
        semaphore = self._slot(host)
        while not semaphore.acquire(timeout=0.1):
            deadline.check()
        try:
            yield
        finally:
            semaphore.release()
