"""`camkit crawl`, `camkit verify` and `camkit credits`: the dataset-building commands, thin
typed layers over camkit.crawl (errors go through the one boundary in `_boundary`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from camkit.cli._options import JsonOpt, emit, stdout_for
from camkit.core.choices import CreditsFormat, Engine, License
from camkit.errors import CamkitError


def crawl(
    keywords: Annotated[Optional[List[str]], typer.Argument(help="one class folder per keyword, e.g. cats dogs")] = None,
    query: Annotated[Optional[List[str]], typer.Option(help="a class searched with several queries: "
                                                       "'grizzly=grizzly bear,grizzly bear photo' (repeatable)")] = None,
    max_num: Annotated[int, typer.Option(help="images wanted per class (a rerun continues to this)")] = 100,
    out: Annotated[Path, typer.Option(help="dataset folder")] = Path("data/images"),
    engine: Annotated[Engine, typer.Option(help="search engine; auto: bing, openverse, baidu, flickr (with "
                                           "FLICKR_API_KEY), wikimedia, each topping up the last")] = Engine.auto,
    endpoint: Annotated[Optional[List[str]], typer.Option(help="ENGINE=URL (or a URL for every engine): a mirror "
                                                          "or test server (repeatable)")] = None,
    threads: Annotated[int, typer.Option(help="download threads")] = 8,
    per_host: Annotated[int, typer.Option(help="downloads at a time from one host")] = 6,
    min_size: Annotated[int, typer.Option(help="reject images whose shorter side is smaller")] = 64,
    max_side: Annotated[int, typer.Option(help="resize so the longer side is at most this (0: keep)")] = 512,
    max_bytes: Annotated[str, typer.Option(help="reject files larger than this (streamed, stops early)")] = "20MB",
    license: Annotated[Optional[License], typer.Option(help="keep only images with a known licence of this class "
                                                       "(licence-aware engines only)")] = None,
    ignore_robots_tag: Annotated[bool, typer.Option(help="fetch images whose server says X-Robots-Tag: "
                                                    "noai / noimageai")] = False,
    allow_private: Annotated[bool, typer.Option(help="allow image URLs on private/loopback addresses")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to connect, and to wait for each piece of a response")] = 10.0,
    file_timeout: Annotated[Optional[float], typer.Option(help="seconds for a whole download, redirects, retries "
                                                          "and Retry-After waits included (default 3 x --timeout)")] = None,
    idle_timeout: Annotated[float, typer.Option(help="stop a class after this long without any result")] = 60.0,
    total_timeout: Annotated[float, typer.Option(help="stop a class after this long in all")] = 3600.0,
    check: Annotated[bool, typer.Option("--check", help="ask every engine one small query, print its status, exit "
                                        "non-zero when the default chain is dead")] = False,
    as_json: JsonOpt = False,
):
    """Search images for each class into verified, deduplicated folders with their licences."""
    if check:
        return _check(endpoint, timeout, as_json)
    if not keywords and not query:
        raise CamkitError("give at least one keyword or --query (or --check)")
    from camkit.crawl import crawl as crawl_fn  # here, not at the top: icrawler is for crawling only (start-up time)

    with stdout_for(as_json):
        summaries = crawl_fn(keywords or [], queries=query or [], max_num=max_num, out=out, engine=engine.value,
                             endpoint=endpoint or None, threads=threads, per_host=per_host, min_size=min_size,
                             max_side=max_side or None, max_bytes=max_bytes, license=license.value if license else None,
                             ignore_robots_tag=ignore_robots_tag, allow_private=allow_private, timeout=timeout,
                             file_timeout=file_timeout, idle_timeout=idle_timeout, total_timeout=total_timeout,
                             quiet=as_json)
    if as_json:
        emit([asdict(s) for s in summaries])
        return
    print(f"{'keyword':<20} {'requested':>9} {'saved':>6}  rejected by reason")
    for s in summaries:
        reasons = ", ".join(f"{k} {v}" for k, v in s.rejected.items()) or "-"
        print(f"{s.keyword:<20} {s.requested:>9} {s.saved:>6}  {reasons}"
              + (f"  (stopped: {s.timed_out} timeout)" if s.timed_out else ""))
    print(f"manifest: {out / 'manifest.jsonl'}  (credits: camkit credits {out})")


def _check(endpoint: list[str] | None, timeout: float, as_json: bool) -> None:
    from camkit.crawl import check_engines, require_default_chain

    checks = check_engines(endpoint or None, timeout=timeout)
    if as_json:
        emit([asdict(c) for c in checks])
    else:
        for c in checks:
            results = f"{c.results} results, {c.seconds:.1f} s" if c.ok else ""
            print(f"{c.engine:<10} {c.status:<40} {results}".rstrip())
    require_default_chain(checks)


def verify(
    folder: Annotated[Path, typer.Argument(help="class-per-folder dataset")],
    min_size: Annotated[int, typer.Option(help="reject images whose shorter side is smaller")] = 64,
    as_json: JsonOpt = False,
):
    """The crawl's checks and dedup on an existing folder; rejects go to FOLDER/_rejected/."""
    from camkit.crawl import verify as verify_fn

    summary = verify_fn(folder, min_size=min_size)
    if as_json:
        emit(asdict(summary))
        return
    reasons = ", ".join(f"{k} {v}" for k, v in summary.rejected.items()) or "none"
    print(f"checked {summary.checked}, kept {summary.kept}; moved to {folder / '_rejected'}: {reasons}")


def credits(
    folder: Annotated[Path, typer.Argument(help="a folder camkit crawl filled (with its manifest.jsonl)")],
    format: Annotated[CreditsFormat, typer.Option("--format", help="markdown table or CSV")] = CreditsFormat.markdown,
    as_json: JsonOpt = False,
):
    """Credits of the crawled images still in the folder: creator, licence, source page."""
    from camkit.crawl import credits as credits_fn
    from camkit.crawl import licence_line, license_counts, to_csv, to_markdown

    items = credits_fn(folder)
    if as_json:
        emit({"licenses": license_counts(items), "credits": [asdict(c) | {"line": c.line} for c in items]})
    elif format is CreditsFormat.csv:
        print(to_csv(items), end="")
    else:
        print(to_markdown(items), end="")
        print(("\n" if items else "") + licence_line(items))


def register(app: typer.Typer) -> None:
    """Add the three commands to the `camkit` app, in this order."""
    for command in (crawl, verify, credits):
        app.command()(command)


__all__ = ["register"]
