"""Baidu Images: the `acjson` API, `data[].objURL` (obfuscated, decoded as icrawler does) or
`hoverURL` / `thumbURL`. No licence per image."""

from __future__ import annotations

from typing import Iterator

from camkit.crawl.engines.base import Engine, ParseError, json_body, meta


def parse(body: bytes) -> Iterator[dict]:
    from icrawler.builtin.baidu import BaiduParser

    content = json_body(body.replace(b"\\'", b"'"))
    if not isinstance(content, dict):
        raise ParseError("no 'data' list")
    for item in content.get("data") or []:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("objURL"), str) and item["objURL"]:
            url = BaiduParser._decode_url(None, item["objURL"])
        else:
            url = item.get("hoverURL") or item.get("thumbURL")
        if isinstance(url, str) and url:
            yield {"file_url": url, "meta": meta()}


ENGINE = Engine("baidu", "https://image.baidu.com",
                "/search/acjson?tn=resultjson_com&ipn=rj&word={q}&pn={first}&rn={count}", 30, parse, max_pages=30)
