"""Bing Images: `/images/async` result pages, each image an `a[m]` whose `m` attribute is JSON
with `murl` (the image) and `purl` (the page it is on). Any image type is kept (icrawler's own
parser keeps only URLs containing '.jpg'). Bing gives no licence per image."""

from __future__ import annotations

import json
from typing import Iterator

from camkit.core.files import parse_json
from camkit.crawl.engines.base import Engine, ParseError, meta


def parse(body: bytes) -> Iterator[dict]:
    from bs4 import BeautifulSoup

    text = body.decode("utf-8", "ignore")
    if text.lstrip()[:1] in ("{", "["):
        raise ParseError("JSON where an HTML result page was expected")
    for a in BeautifulSoup(text, "html.parser").select("div.imgpt > a[m]"):
        try:
            m = parse_json(a["m"])
        except json.JSONDecodeError:
            continue
        if isinstance(m, dict) and isinstance(m.get("murl"), str):
            page = m.get("purl") if isinstance(m.get("purl"), str) else None
            yield {"file_url": m["murl"], "meta": meta(source_page=page)}


ENGINE = Engine("bing", "https://www.bing.com", "/images/async?q={q}&first={first}&count={count}&mmasync=1", 35,
                parse, max_pages=30,
                licenses={"creativecommons": "&qft=" + "+filterui:licenseType-Any",
                          "publicdomain": "&qft=" + "+filterui:license-L1",
                          "commercial": "&qft=" + "+filterui:license-L2_L3_L4",
                          "noncommercial": "&qft=" + "+filterui:license-L2_L3_L4_L5_L6_L7"})
