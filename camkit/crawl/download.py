"""The download pipeline: icrawler's Crawler and ImageDownloader, with every file fetched under
the FetchPolicy (address check per hop, per-host slots and back-off, Retry-After, the
X-Robots-Tag opt-out, a streamed byte cap, one deadline), verified, deduplicated and written
by the Ledger, and the crawl ended by idle and total deadlines."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack
from typing import Callable
from urllib.parse import urljoin, urlsplit

from icrawler import Crawler, ImageDownloader
from icrawler.storage import BaseStorage

from camkit.crawl.ledger import CREDIT_FIELDS, KeywordState, Ledger
from camkit.crawl.licenses import allowed
from camkit.crawl.policy import (REDIRECT_CODES, REDIRECT_LIMIT, RETRY_STATUSES, AddressPolicy, Deadline,
                                 FetchPolicy, HostGate, Rejected, retry_after, robots_tag_forbids)
from camkit.crawl.verify import verify_bytes


class VerifyingDownloader(ImageDownloader):
    """icrawler's downloader with camkit's in-flight checks; one task never kills a thread."""

    def __init__(self, *args, ledger: Ledger, state: KeywordState, addresses: AddressPolicy, policy: FetchPolicy,
                 gate: HostGate, engine: str, query: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.ledger, self.state, self.addresses, self.policy = ledger, state, addresses, policy
        self.gate, self.engine, self.query = gate, engine, query
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
        rec = self._verified(url, task.get("meta") or {})
        if rec["status"] == "enough":
            self.ledger.release_url(url)
        else:
            self.ledger.record(**rec)
        if self.reach_max_num():
            self.signal.set(reach_max_num=True)
        return rec["status"] == "ok"

    def _verified(self, url: str, meta: dict) -> dict:
        """Fetch, verify and accept one URL; the manifest record of what happened."""
        rec = {"keyword": self.state.keyword, "slug": self.state.slug, "engine": self.engine, "query": self.query,
               "url": url, **{k: meta.get(k) for k in CREDIT_FIELDS}, "license_code": meta.get("license_code")}
        try:
            if not allowed(meta.get("license_code"), self.policy.license):
                raise Rejected("unknown_license" if meta.get("license_code") is None else "license_not_allowed")
            data, content_type = self._fetch(url)
            v = verify_bytes(data, self.policy.min_size, self.policy.max_side)
            status, rel = self.ledger.accept(self.state, v, url)
            rec.update(status=status, file=rel, sha256=v.sha256, phash=f"{v.phash:016x}",
                       width=v.width, height=v.height, bytes=len(data), content_type=content_type)
        except Rejected as e:
            rec.update(status=str(e))
        except Exception as e:  # anything else is this file's problem, not the thread's
            rec.update(status="error", error=f"{type(e).__name__}: {e}"[:200])
        return rec

    def _fetch(self, url: str) -> tuple[bytes, str]:
        """GET with manual redirects (each hop checked), retries on timeouts, connection errors,
        5xx and 429 (waiting `Retry-After` when the server gives one and it fits the deadline,
        else backoff * 2**(k-1)), a content-type and X-Robots-Tag check, a streamed byte cap,
        and one deadline (`file_timeout`) over all of it."""
        import requests
        import urllib3

        p = self.policy
        deadline = Deadline(p.file_timeout, self.stop)
        wait = 0.0
        for attempt in range(p.retries + 1):
            if attempt:
                if wait > deadline.left() or wait > p.max_wait:
                    raise Rejected("rate_limited")
                deadline.sleep(wait)
            wait = p.backoff * 2 ** attempt
            try:
                with ExitStack() as held, self._open(url, deadline, held) as response:
                    code = response.status_code
                    if (code >= 500 or code == 429) and attempt < p.retries:
                        if code in RETRY_STATUSES:
                            told = retry_after(response.headers)
                            wait = wait if told is None else told
                            self.gate.back_off(_host(response.url or url), wait)
                        continue
                    return self._accept_response(response, deadline)
            except (requests.Timeout, urllib3.exceptions.TimeoutError):
                if attempt == p.retries:
                    raise Rejected("timeout") from None
            except (requests.ConnectionError, urllib3.exceptions.ProtocolError):
                if attempt == p.retries:
                    raise Rejected("connection_error") from None
        raise Rejected("http_5xx")

    def _accept_response(self, response, deadline: Deadline) -> tuple[bytes, str]:
        """The body of a final answer, or why it is refused."""
        if response.status_code != 200:
            raise Rejected(f"http_{response.status_code}")
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not content_type.startswith("image/"):
            raise Rejected("not_image_content_type")
        if self.policy.robots_tag and robots_tag_forbids(_header_values(response, "x-robots-tag")):
            raise Rejected("robots_noai")
        return self._read_body(response, deadline), content_type

    def _open(self, url: str, deadline: Deadline, held: ExitStack):
        """The response after following at most REDIRECT_LIMIT redirects, each hop checked
        against the address policy before anything is sent to it and made in one of its host's
        slots; the final host's slot goes to `held`, so it stays taken while the body is read."""
        current = url
        for _hop in range(REDIRECT_LIMIT + 1):
            deadline.check()
            self.addresses.check(current)
            t = deadline.per_read(self.policy.timeout)
            with ExitStack() as slot:
                slot.enter_context(self.gate.slot(_host(current), deadline))
                response = self.session.get(current, timeout=(t, t), stream=True, allow_redirects=False)
                if response.status_code in REDIRECT_CODES and "location" in response.headers:
                    response.close()
                    current = urljoin(current, response.headers["location"])
                    continue
                held.enter_context(slot.pop_all())
                return response
        raise Rejected("too_many_redirects")

    def _read_body(self, response, deadline: Deadline) -> bytes:
        """The body, streamed under the byte cap and the deadline. `read1` returns whatever has
        arrived (one socket read), so the deadline is checked at least once per read timeout
        even when the server sends a byte at a time."""
        max_bytes = self.policy.max_bytes
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


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _header_values(response, name: str) -> list[str]:
    """Every value of a header, repeated headers kept apart (requests joins them with ', ',
    which would lose the `agent:` scope of an X-Robots-Tag)."""
    raw = getattr(getattr(response, "raw", None), "headers", None)
    if raw is not None and hasattr(raw, "getlist"):
        return list(raw.getlist(name))
    value = response.headers.get(name)
    return [value] if value else []


class NoStorage(BaseStorage):
    """camkit writes its files itself (atomically, through the Ledger): icrawler gets no folder."""

    def write(self, id, data):  # pragma: no cover  (VerifyingDownloader never calls it)
        raise RuntimeError("camkit writes crawled files through its Ledger")

    def exists(self, id):
        return False

    def max_file_idx(self):
        return 0


class CamkitCrawler(Crawler):
    """icrawler's Crawler with an idle and a total deadline (which also cut the downloads in
    flight short), and a quiet logger."""

    def __init__(self, *args, idle_timeout: float = 30, deadline: float | None = None,
                 on_tick: Callable[[], None] | None = None, **kwargs):
        self.idle_timeout, self.on_tick = idle_timeout, on_tick
        self.deadline = deadline if deadline is not None else time.monotonic() + 3600
        self.timed_out: str | None = None
        super().__init__(*args, log_level=logging.CRITICAL, storage=NoStorage(), **kwargs)

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
                    self._stop()
                if self.on_tick:
                    self.on_tick()
                time.sleep(0.05)
        finally:  # also on Ctrl-C: no download thread may go on writing after the crawl returns
            self.signal.set(reach_max_num=True)
            self._stop()
        for pool in (self.feeder, self.parser):
            if not pool.in_queue.empty():
                pool.clear_buffer()
        if not self.downloader.in_queue.empty():
            self.downloader.clear_buffer(True)

    def _stop(self) -> None:
        """Downloads in flight end at their next read; result-page waits end at once."""
        self.downloader.stop.set()
        stop = getattr(getattr(self.parser, "session", None), "stop", None)
        if stop is not None:
            stop.set()

    def _timeout(self, start: float) -> str | None:
        """'total' past the keyword's deadline, 'idle' after idle_timeout without a manifest line."""
        now = time.monotonic()
        if now > self.deadline:
            return "total"
        if now - max(self.downloader.ledger.last_progress, start) > self.idle_timeout:
            return "idle"
        return None
