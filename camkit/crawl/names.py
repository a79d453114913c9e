"""What the user types, checked once: keywords become folder names, `--query` becomes a class
with several searches, `--endpoint` becomes a URL per engine, `--max-bytes` a number."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from camkit.errors import CamkitError

SLUG_CHARS, SLUG_BYTES = 64, 200  # a folder name well under the 255-byte limit of file systems


def slugify(keyword: str) -> str:
    """A folder name that reads like the keyword but cannot escape the output folder.

    Unicode letters and digits are kept (with their combining marks), NFC-normalised and
    casefolded, so `Café` and `café` (composed or not) share one folder and `日本語` stays
    itself; every other run of characters (separators, dots, control characters, symbols such as
    emoji) becomes one dash, trimmed at both ends, so there is no `/`, no `..` and no leading dot
    or underscore (`_rejected` stays camkit's). At most 64 characters and 200 UTF-8 bytes."""
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFC", keyword).casefold())
    kept: list[str] = []
    for ch in text:
        kind = unicodedata.category(ch)[0]
        keep = kind in "LN" or (kind == "M" and bool(kept) and kept[-1] != "-")
        kept.append(ch if keep else "-")
    slug = re.sub(r"-+", "-", "".join(kept)).strip("-")[:SLUG_CHARS]
    while len(slug.encode("utf-8")) > SLUG_BYTES:
        slug = slug[:-1]
    slug = slug.strip("-")
    if not slug:
        raise CamkitError(f"keyword {keyword!r} gives an empty folder name; use letters or digits")
    return slug


def parse_bytes(text: str | int) -> int:
    """'20MB', '500KB', '1.5GB' or a plain number of bytes (K, M, G are powers of 1024)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]?i?b?)\s*", str(text).lower())
    if not m:
        raise CamkitError(f"--max-bytes must look like 20MB, 500KB or 1000000, not '{text}'")
    unit = m.group(2).rstrip("b").rstrip("i")
    value = float(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[unit]
    if value < 1:
        raise CamkitError(f"--max-bytes must be positive, not '{text}'")
    return int(value)


@dataclass(frozen=True)
class ClassQueries:
    """One class folder and the searches that fill it (the fastai course searches 'grizzly bear'
    and 'grizzly bear photo' for one class)."""
    name: str
    queries: tuple[str, ...]


def parse_query(text: str) -> ClassQueries:
    """`CLASS=QUERY[,QUERY...]`, e.g. `grizzly=grizzly bear,grizzly bear photo`: the class is
    what comes before the first `=`, the queries are separated by commas (blank ones dropped)."""
    name, sep, rest = text.partition("=")
    queries = tuple(q.strip() for q in rest.split(",") if q.strip())
    if not sep or not name.strip() or not queries:
        raise CamkitError(f"--query must look like 'grizzly=grizzly bear,grizzly bear photo' "
                          f"(CLASS=QUERY[,QUERY...]), not {text!r}")
    return ClassQueries(name.strip(), queries)


def classes_from(keywords: Iterable[str] = (), queries: Iterable[str | ClassQueries] = ()) -> list[ClassQueries]:
    """Positional keywords (one class, one search each) followed by the `--query` classes."""
    out = [ClassQueries(k, (k,)) for k in keywords]
    out += [q if isinstance(q, ClassQueries) else parse_query(q) for q in queries]
    if not out:
        raise CamkitError("give at least one keyword or --query")
    return out


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, lower-case host, port with the scheme's default filled in) of an http(s) URL, or
    None for anything else: what an --endpoint exemption is compared on."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80)


def parse_endpoints(endpoint: str | Mapping[str, str] | Sequence[str] | None, engines: Sequence[str]) -> dict[str, str]:
    """{engine: base URL (scheme://host[:port])} from `--endpoint`.

    Each item is `ENGINE=URL` (that engine only) or a bare `URL` (every engine: one mirror or
    one test server speaking all their formats). Unknown engine names and non-http(s) URLs are
    refused with one line."""
    if endpoint is None:
        return {}
    if isinstance(endpoint, Mapping):
        items = [(k, v) for k, v in endpoint.items()]
    else:
        items = [_split_endpoint(e, engines) for e in ([endpoint] if isinstance(endpoint, str) else endpoint)]
    result: dict[str, str] = {}
    for name, url in items:
        if name is not None and name not in engines:
            raise CamkitError(f"unknown engine '{name}' in --endpoint; choose from {', '.join(engines)}")
        if origin(url) is None:
            raise CamkitError(f"--endpoint must be an http(s) URL like http://127.0.0.1:8000, not '{url}'")
        parts = urlsplit(url)
        base = f"{parts.scheme}://{parts.netloc}"
        for n in ([name] if name else engines):
            result[n] = base
    return result


def _split_endpoint(text: str, engines: Sequence[str]) -> tuple[str | None, str]:
    """('bing', 'http://…') for `bing=http://…`; (None, text) for a bare URL."""
    name, sep, url = text.partition("=")
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name) and "://" not in name:
        return name.lower(), url
    return None, text
