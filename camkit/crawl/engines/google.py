"""Google Images (only when named: its HTML changes often, icrawler#135). Results are embedded
in the page's scripts as ["https://...", height, width] arrays; icrawler's file-extension regex
stopped working in 2025. No licence per image."""

from __future__ import annotations

import re
from typing import Iterator

from camkit.crawl.engines.base import Engine, meta

PATTERN = re.compile(r'\["(https?://[^"\s]+)",(\d+),(\d+)\]')


def parse(body: bytes) -> Iterator[dict]:
    text = body.decode("utf-8", "ignore")
    seen = set()
    for url, h, w in PATTERN.findall(text):
        url = url.encode().decode("unicode_escape") if "\\u" in url else url
        if "gstatic.com" in url or url in seen or int(h) < 2 or int(w) < 2:
            continue
        seen.add(url)
        yield {"file_url": url, "meta": meta()}


ENGINE = Engine("google", "https://www.google.com", "/search?q={q}&tbm=isch&ijn={page}&start={first}", 100, parse,
                max_pages=10)
