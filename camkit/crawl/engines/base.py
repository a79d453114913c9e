"""What every engine shares: its description (`Engine`), the feeder of result-page URLs, the
one parser that hands each page to the engine's `parse` function, and the search log that says
why an engine gave nothing.

An engine module (icrawler's `builtin/bing.py` layout, reduced to what differs) defines a
`parse(body) -> Iterator[dict]` that turns one result page into tasks `{"file_url": …,
"meta": {source_page, license, license_code, license_url, creator, attribution}}` and raises
ParseError for a page that is not in its format, plus an `ENGINE = Engine(...)`."""

from __future__ import annotations

import html
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import quote_plus

from icrawler import Feeder, Parser

from camkit.core.files import parse_json
from camkit.crawl.policy import RETRY_STATUSES, retry_after


class ParseError(Exception):
    """A result page that is not in the engine's format (the message says how, in a few words)."""


@dataclass(frozen=True)
class Engine:
    """One search engine: where its result pages are, how big they are, how to read them.

    `path` is formatted with q (the quoted query), first (0-based offset), page (1-based),
    count and key (the API key read from `key_env` when the crawl starts, never at import).
    `licenses` maps a --license class to a query suffix (the engine filters on its side);
    `license_aware` engines give a licence per image. `min_interval` spaces result-page
    requests (Openverse allows about one a second without a key)."""
    name: str
    host: str
    path: str
    page_size: int
    parse: Callable[[bytes], Iterator[dict]]
    max_pages: int = 30
    min_interval: float = 0.0
    license_aware: bool = False
    licenses: dict[str, str] = field(default_factory=dict)
    key_env: str | None = None
    session: Callable[[], object] | None = None   # a stand-in for requests (ddg: the ddgs package)

    def page_url(self, base: str | None, query: str, page: int, count: int | None = None, key: str = "",
                 license_class: str | None = None) -> str:
        """The URL of result page `page` (0-based) for `query`."""
        count = count or self.page_size
        url = (base or self.host) + self.path.format(q=quote_plus(query), first=page * count, page=page + 1,
                                                     count=count, key=quote_plus(key))
        return url + (self.licenses.get(license_class, "") if license_class else "")


def json_body(body: bytes) -> object:
    """The page as JSON, or ParseError('not JSON')."""
    try:
        return parse_json(body.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        raise ParseError("not JSON") from None


def plain_text(value: object, limit: int = 300) -> str | None:
    """Text from an API field that may hold HTML (Wikimedia's Artist is a link): tags removed,
    entities decoded, whitespace collapsed, at most `limit` characters; None when empty."""
    if not isinstance(value, str):
        return None
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]*>", " ", value))).strip()
    return text[:limit] or None


def meta(source_page=None, license=None, license_code=None, license_url=None, creator=None,
         attribution=None) -> dict:
    """The credit fields of one image, each a short string or None."""
    fields = dict(source_page=source_page, license=license, license_code=license_code, license_url=license_url,
                  creator=creator, attribution=attribution)
    return {k: (v[:500] if isinstance(v, str) and v.strip() else None) for k, v in fields.items()}


# ---------------------------------------------------------------- feeding and parsing

class EngineFeeder(Feeder):
    """Result-page URLs for one query, one page after the other."""

    def feed(self, engine: Engine, base: str | None, query: str, pages: int, key: str = "",
             license_class: str | None = None):
        for page in range(pages):
            if self.signal.get("reach_max_num"):
                break
            self.out_queue.put(engine.page_url(base, query, page, key=key, license_class=license_class))


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

    def merge(self, other: "SearchLog") -> None:
        with self.lock:
            self.pages.update(other.pages)
            self.results += other.results

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


def page_failure(error: Exception) -> str:
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
    return f"{type(error).__name__} at the search page" + (f" ({str(error)[:80]})" if str(error) else "")


class PoliteSession:
    """The crawler's session as a parser sees it: result-page requests spaced by the engine's
    `min_interval`, 429 / 503 answers waited out (`Retry-After`, else exponential back-off, at
    most `max_wait` seconds each, `retries` times), and each page's outcome in a SearchLog
    (icrawler's parser only logs a failed page, and camkit silences its logger)."""

    def __init__(self, session, log: SearchLog, min_interval: float = 0.0, retries: int = 2,
                 backoff: float = 0.5, max_wait: float = 30.0, stop: threading.Event | None = None):
        self._session, self._log = session, log
        self.min_interval, self.retries, self.backoff, self.max_wait = min_interval, retries, backoff, max_wait
        self.stop = stop or threading.Event()
        self._lock, self._next = threading.Lock(), 0.0

    def _pace(self) -> None:
        """Wait for this engine's next free moment; re-checked after each wait, because a 429
        seen by another thread meanwhile moves that moment later."""
        while True:
            with self._lock:
                now = time.monotonic()
                if self._next <= now:
                    self._next = now + self.min_interval
                    return
                wait = self._next - now
            if self.stop.wait(wait):
                return

    def _hold(self, seconds: float) -> None:
        """No request to this engine before `seconds` from now (the server asked for it)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)

    def get(self, url: str, **kwargs):
        attempt = 0
        while True:
            self._pace()
            try:
                response = self._session.get(url, **kwargs)
            except Exception as e:
                self._log.page(url, page_failure(e))
                raise
            response.camkit_url = url   # the page as logged (requests re-quotes response.url)
            code = response.status_code
            wait = retry_after(response.headers) if code in RETRY_STATUSES else None
            if code in RETRY_STATUSES and attempt < self.retries and not self.stop.is_set():
                wait = self.backoff * 2 ** attempt if wait is None else wait
                if wait <= self.max_wait:
                    self._hold(wait)   # every thread of this engine waits, not only this one
                    attempt += 1
                    continue
            self._log.page(url, "ok" if code == 200 else f"HTTP {code} from the search page"
                           + (f" (Retry-After {wait:g} s)" if wait is not None and code != 200 else ""))
            return response

    def __getattr__(self, name: str):
        return getattr(self._session, name)


class EngineParser(Parser):
    """icrawler's Parser for any engine: the page goes to the engine's `parse`; a page in the
    wrong format is logged as a parse error (a changed engine says so instead of '0 results')."""

    def __init__(self, *args, engine: Engine, log: SearchLog, session_options: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.engine, self.log = engine, log
        base = engine.session() if engine.session else self.session
        self.session = PoliteSession(base, log, engine.min_interval, **(session_options or {}))

    def parse(self, response, **kwargs):
        if response.status_code != 200:
            return
        try:
            tasks = list(self.engine.parse(response.content))
        except ParseError as e:
            self.log.page(getattr(response, "camkit_url", response.url), f"parse error ({e}) from the search page")
            return
        yield from tasks

    def output(self, task, block=True, timeout=None):
        super().output(task, block, timeout)   # raises queue.Full (then icrawler retries): not counted
        self.log.result()
