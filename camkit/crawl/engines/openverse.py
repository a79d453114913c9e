"""Openverse (openverse.org, WordPress): openly licensed images through its public API, no key.

`GET /v1/images/?q=&page=&page_size=` answers `{"results": [{url, foreign_landing_url, creator,
license, license_version, license_url, attribution, …}]}`. Without a key: 20 results a page,
about one request a second, 20 pages deep at most."""

from __future__ import annotations

from typing import Iterator

from camkit.crawl.engines.base import Engine, ParseError, json_body, meta
from camkit.crawl.licenses import license_code


def license_name(code: str | None, version: object) -> str | None:
    """('by-sa', '2.0') -> 'CC BY-SA 2.0'; ('cc0', '1.0') -> 'CC0 1.0'; ('pdm', …) -> 'Public Domain Mark 1.0'."""
    if not code:
        return None
    v = f" {version}" if isinstance(version, str) and version else ""
    if code == "cc0":
        return "CC0" + v
    if code == "pdm":
        return "Public Domain Mark" + v
    return f"CC {code.upper()}{v}"


def parse(body: bytes) -> Iterator[dict]:
    content = json_body(body)
    if not isinstance(content, dict) or not isinstance(content.get("results"), list):
        raise ParseError("no 'results' list")
    for r in content["results"]:
        if not isinstance(r, dict) or not isinstance(r.get("url"), str):
            continue
        code = license_code(r.get("license"))
        yield {"file_url": r["url"],
               "meta": meta(source_page=r.get("foreign_landing_url"),
                            license=license_name(code, r.get("license_version")) or r.get("license"),
                            license_code=code, license_url=r.get("license_url"), creator=r.get("creator"),
                            attribution=r.get("attribution"))}


ENGINE = Engine("openverse", "https://api.openverse.org", "/v1/images/?q={q}&page={page}&page_size={count}", 20,
                parse, max_pages=20, min_interval=1.0, license_aware=True,
                licenses={"creativecommons": "", "publicdomain": "&license=cc0,pdm",
                          "commercial": "&license_type=commercial", "modification": "&license_type=modification",
                          "noncommercial": ""})
