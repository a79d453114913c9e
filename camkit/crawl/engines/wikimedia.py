"""Wikimedia Commons: the MediaWiki API searching the File: namespace, with each file's licence
and author from `extmetadata`.

`action=query&generator=search&gsrnamespace=6&prop=imageinfo&iiprop=url|extmetadata|size|mime`
answers `{"query": {"pages": [{title, imageinfo: [{url, thumburl, descriptionurl, mime,
extmetadata: {LicenseShortName, LicenseUrl, Artist, Attribution, …}}]}]}}` (formatversion=2;
the older object-of-pages form is read too). `iiurlwidth=1024` asks for a scaled copy: the
originals run to tens of megabytes."""

from __future__ import annotations

from typing import Iterator

from camkit.crawl.engines.base import Engine, ParseError, json_body, meta, plain_text
from camkit.crawl.licenses import license_code


def _value(ext: dict, key: str) -> str | None:
    field = ext.get(key)
    return plain_text(field.get("value")) if isinstance(field, dict) else None


def _pages(content: object) -> list[dict]:
    if not isinstance(content, dict):
        raise ParseError("not a MediaWiki API answer")
    if "error" in content:
        info = content["error"].get("info") if isinstance(content["error"], dict) else content["error"]
        raise ParseError(f"API error: {str(info)[:80]}")
    pages = (content.get("query") or {}).get("pages", [])
    if isinstance(pages, dict):
        pages = list(pages.values())
    if not isinstance(pages, list):
        raise ParseError("no 'query.pages'")
    return sorted((p for p in pages if isinstance(p, dict)), key=lambda p: p.get("index", 0))


def parse(body: bytes) -> Iterator[dict]:
    for page in _pages(json_body(body)):
        infos = page.get("imageinfo")
        info = infos[0] if isinstance(infos, list) and infos and isinstance(infos[0], dict) else None
        if info is None or not str(info.get("mime", "image/")).startswith("image/"):
            continue  # audio, video, PDF: not a picture
        url = info.get("thumburl") or info.get("url")
        if not isinstance(url, str):
            continue
        ext = info.get("extmetadata") if isinstance(info.get("extmetadata"), dict) else {}
        short = _value(ext, "LicenseShortName")
        yield {"file_url": url,
               "meta": meta(source_page=info.get("descriptionurl"), license=short,
                            license_code=license_code(short) or license_code(_value(ext, "License")),
                            license_url=_value(ext, "LicenseUrl"), creator=_value(ext, "Artist"),
                            attribution=_value(ext, "Attribution"))}


ENGINE = Engine("wikimedia", "https://commons.wikimedia.org",
                "/w/api.php?action=query&format=json&formatversion=2&generator=search&gsrsearch={q}"
                "&gsrnamespace=6&gsrlimit={count}&gsroffset={first}&prop=imageinfo"
                "&iiprop=url|extmetadata|size|mime&iiurlwidth=1024", 20, parse, max_pages=25,
                min_interval=0.2, license_aware=True)
