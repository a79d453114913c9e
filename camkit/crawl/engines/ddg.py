"""DuckDuckGo Images through the `ddgs` package (`pip install 'camkit[ddg]'`): optional, never
in the default chain (it works intermittently, and its image results come from Bing). ddgs
makes the requests itself, so this engine cannot be pointed at an --endpoint."""

from __future__ import annotations

import json
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

from camkit.crawl.engines.base import Engine, ParseError, json_body, meta
from camkit.errors import CamkitError


class _Response:
    def __init__(self, url: str, content: bytes):
        self.url, self.content, self.status_code, self.headers = url, content, 200, {}


class DdgsSession:
    """Looks like the `requests` session a parser uses: `get('ddg:?q=…&page=…&count=…')` runs
    `DDGS().images(...)` and answers its list as a JSON page."""

    def __init__(self):
        try:
            from ddgs import DDGS
        except ImportError:
            raise CamkitError("the ddg engine needs the ddgs package: pip install 'camkit[ddg]'") from None
        self.ddgs = DDGS

    def get(self, url: str, timeout: float | tuple = 10, **kwargs) -> _Response:
        q = parse_qs(urlsplit(url).query)
        t = timeout[0] if isinstance(timeout, tuple) else timeout
        results = self.ddgs(timeout=int(max(1, t))).images(q["q"][0], max_results=int(q["count"][0]),
                                                          page=int(q["page"][0]), backend="duckduckgo")
        return _Response(url, json.dumps(list(results)).encode())


def parse(body: bytes) -> Iterator[dict]:
    results = json_body(body)
    if not isinstance(results, list):
        raise ParseError("not a list of results")
    for r in results:
        if isinstance(r, dict) and isinstance(r.get("image"), str):
            yield {"file_url": r["image"], "meta": meta(source_page=r.get("url"))}


ENGINE = Engine("ddg", "ddg:", "?q={q}&page={page}&count={count}", 50, parse, max_pages=5, session=DdgsSession)
