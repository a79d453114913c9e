"""Flickr: `flickr.photos.search` (needs FLICKR_API_KEY, read when a crawl starts), asked for
each photo's licence and owner; the licence filter is Flickr's own."""

from __future__ import annotations

from typing import Iterator

from camkit.crawl.engines.base import Engine, ParseError, json_body, meta
from camkit.crawl.licenses import FLICKR_LICENSES

NAMES = {"by": "CC BY 2.0", "by-sa": "CC BY-SA 2.0", "by-nd": "CC BY-ND 2.0", "by-nc": "CC BY-NC 2.0",
         "by-nc-sa": "CC BY-NC-SA 2.0", "by-nc-nd": "CC BY-NC-ND 2.0", "cc0": "CC0 1.0", "pdm": "Public Domain Mark 1.0"}


def parse(body: bytes) -> Iterator[dict]:
    content = json_body(body)
    if not isinstance(content, dict) or not isinstance(content.get("photos"), dict):
        message = content.get("message") if isinstance(content, dict) else None
        raise ParseError(f"no 'photos': {str(message)[:80]}" if message else "no 'photos'")
    for p in content["photos"].get("photo") or []:
        if not isinstance(p, dict) or not all(k in p for k in ("server", "id", "secret")):
            continue
        code = FLICKR_LICENSES.get(str(p.get("license", "")))
        owner = p.get("owner")
        page = f"https://www.flickr.com/photos/{owner}/{p['id']}" if owner else None
        yield {"file_url": f"https://live.staticflickr.com/{p['server']}/{p['id']}_{p['secret']}_b.jpg",
               "meta": meta(source_page=page, license=NAMES.get(code), license_code=code,
                            license_url=_deed(code), creator=p.get("ownername"))}


def _deed(code: str | None) -> str | None:
    if code in ("cc0", "pdm"):
        return {"cc0": "https://creativecommons.org/publicdomain/zero/1.0/",
                "pdm": "https://creativecommons.org/publicdomain/mark/1.0/"}[code]
    return f"https://creativecommons.org/licenses/{code}/2.0/" if code else None


ENGINE = Engine("flickr", "https://api.flickr.com",
                "/services/rest/?method=flickr.photos.search&text={q}&page={page}&per_page={count}"
                "&extras=license,owner_name&format=json&nojsoncallback=1&api_key={key}", 100, parse,
                max_pages=10, license_aware=True, key_env="FLICKR_API_KEY",
                licenses={"creativecommons": "&license=1,2,3,4,5,6,9,10", "publicdomain": "&license=9,10",
                          "commercial": "&license=4,5,6,9,10", "modification": "&license=1,2,4,5,9,10",
                          "noncommercial": "&license=1,2,3,4,5,6,9,10"})
