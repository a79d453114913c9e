"""`camkit crawl --check`: one small query per engine, to see which engines answer today
before a long crawl (engines change their pages and their limits without notice)."""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

from camkit.crawl.engines import AUTO_ORDER, ENGINES, Engine, ParseError
from camkit.crawl.engines.base import page_failure
from camkit.crawl.names import parse_endpoints
from camkit.crawl.policy import USER_AGENT, retry_after
from camkit.errors import CamkitError

CHECK_QUERY = "cat"


@dataclass
class EngineCheck:
    engine: str
    ok: bool
    status: str        # "OK", "HTTP 429", "parse error (not JSON)", "connection refused ...", "skipped (...)"
    results: int
    seconds: float
    skipped: bool = False


def check_engines(endpoint: str | Mapping[str, str] | Sequence[str] | None = None, query: str = CHECK_QUERY,
                  timeout: float = 10) -> list[EngineCheck]:
    """One result page of `query` from every engine: OK with its number of results, the HTTP
    status, a parse error, or why it could not be asked (Flickr without a key, ddg without the
    ddgs package are skipped)."""
    endpoints = parse_endpoints(endpoint, list(ENGINES))
    return [_check(engine, endpoints.get(name), query, timeout) for name, engine in ENGINES.items()]


def _check(engine: Engine, base: str | None, query: str, timeout: float) -> EngineCheck:
    skip = _skip_reason(engine, base)
    if skip:
        return EngineCheck(engine.name, False, f"skipped ({skip})", 0, 0.0, skipped=True)
    import requests

    key = os.environ.get(engine.key_env, "") if engine.key_env else ""
    url = engine.page_url(base, query, 0, count=min(engine.page_size, 20), key=key)
    session = engine.session() if engine.session else requests.Session()
    if not engine.session:
        session.headers["User-Agent"] = USER_AGENT
    start = time.monotonic()
    try:
        response = session.get(url, timeout=(timeout, timeout))
    except Exception as e:  # noqa: BLE001  any failure is this engine's status, not the command's
        return EngineCheck(engine.name, False, page_failure(e).replace(" to the search page", "")
                           .replace(" at the search page", ""), 0, time.monotonic() - start)
    seconds = time.monotonic() - start
    if response.status_code != 200:
        wait = retry_after(response.headers)
        after = f" (Retry-After {wait:g} s)" if wait is not None else ""
        return EngineCheck(engine.name, False, f"HTTP {response.status_code}{after}", 0, seconds)
    try:
        n = sum(1 for _ in engine.parse(response.content))
    except ParseError as e:
        return EngineCheck(engine.name, False, f"parse error ({e})", 0, seconds)
    return EngineCheck(engine.name, n > 0, "OK" if n else "no results", n, seconds)


def _skip_reason(engine: Engine, base: str | None) -> str | None:
    if engine.key_env and not os.environ.get(engine.key_env) and base is None:
        return f"no {engine.key_env}"
    if engine.session is not None and importlib.util.find_spec("ddgs") is None:
        return "ddgs not installed: pip install 'camkit[ddg]'"
    if engine.session is not None and base is not None:
        return "cannot use an --endpoint"
    return None


def require_default_chain(checks: list[EngineCheck]) -> None:
    """Raise a CamkitError naming each engine's status, in `auto`'s order, when no engine of the
    default chain works (Flickr counts only with a key, as in `auto`)."""
    by_name = {c.engine: c for c in checks}
    chain = [by_name[n] for n in AUTO_ORDER if n in by_name and not by_name[n].skipped
             and (n != "flickr" or os.environ.get("FLICKR_API_KEY"))]
    if not any(c.ok for c in chain):
        raise CamkitError("the default engine chain is dead: " + "; ".join(f"{c.engine}: {c.status}" for c in chain))
