"""Who made the crawled images and under which licence: the credits of every image still in a
class folder, read from the crawl's manifest, as Markdown, CSV or JSON."""

from __future__ import annotations

import csv
import io
from urllib.parse import quote
from dataclasses import asdict, dataclass
from pathlib import Path

from camkit.crawl.ledger import read_manifest
from camkit.crawl.names import origin
from camkit.errors import CamkitError

COLUMNS = ("file", "creator", "license", "license_url", "source_page", "attribution", "engine", "url")


@dataclass(frozen=True)
class Credit:
    file: str
    creator: str | None
    license: str | None
    license_url: str | None
    source_page: str | None
    attribution: str | None
    engine: str | None
    url: str | None

    @property
    def line(self) -> str:
        """The attribution to print: the engine's own, else 'creator, licence, source'."""
        if self.attribution:
            return self.attribution
        parts = [f"by {self.creator}" if self.creator else "creator unknown",
                 self.license or "licence unknown"]
        return ", ".join(parts) + (f", from {self.source_page}" if self.source_page else "")


def credits(folder: str | Path) -> list[Credit]:
    """One Credit per image the manifest saved that is still in its class folder (an image
    moved aside as ambiguous, or by `camkit clean`, is no longer credited), sorted by file."""
    root = Path(folder)
    if not (root / "manifest.jsonl").is_file():
        raise CamkitError(f"'{root}' has no manifest.jsonl (credits come from a camkit crawl)")
    found: dict[str, Credit] = {}
    for rec in read_manifest(root):
        if rec.get("status") == "ok" and isinstance(rec.get("file"), str) and (root / rec["file"]).is_file():
            found[rec["file"]] = Credit(rec["file"], *(_text(rec.get(k)) for k in COLUMNS[1:]))
    return [found[f] for f in sorted(found)]


def license_counts(items: list[Credit]) -> dict[str, int]:
    """Images per licence ('unknown' when the engine gave none), most common first."""
    counts: dict[str, int] = {}
    for c in items:
        counts[c.license or "unknown"] = counts.get(c.license or "unknown", 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def to_markdown(items: list[Credit]) -> str:
    """A Markdown table (file | creator | licence | source); cells escaped, only http(s) links."""
    rows = ["| file | creator | licence | source |", "| --- | --- | --- | --- |"]
    for c in items:
        licence = _link(c.license or "unknown", c.license_url)
        rows.append(f"| {_md(c.file)} | {_md(c.creator or 'unknown')} | {licence} | "
                    f"{_link('page', c.source_page) if c.source_page else '-'} |")
    return "\n".join(rows) + "\n"


def licence_line(items: list[Credit]) -> str:
    """The line under the Markdown table: images per licence, each licence escaped like a cell
    (a licence is whatever the engine or an edited manifest says)."""
    return ", ".join(f"{n} {_md(k)}" for k, n in license_counts(items).items()) if items else "no images"


def to_csv(items: list[Credit]) -> str:
    """CSV with a header; a cell a spreadsheet would run as a formula is prefixed with a quote."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for c in items:
        writer.writerow([_cell(v) for v in asdict(c).values()])
    return buf.getvalue()


def _text(value: object) -> str | None:
    return " ".join(value.split())[:500] or None if isinstance(value, str) else None


def _md(text: str) -> str:
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            .replace("[", "\\[").replace("]", "\\]"))


# what stays as it is in a link: RFC 3986's reserved characters and '%' (no double encoding);
# '<', '>', quotes, spaces and backticks are percent-encoded, so no URL leaves its <...>
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


def _link(text: str, url: str | None) -> str:
    if url and origin(url) is not None:
        return f"[{_md(text)}](<{quote(url, safe=_URL_SAFE)}>)"
    return _md(text)


def _cell(value: str | None) -> str:
    text = value or ""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
