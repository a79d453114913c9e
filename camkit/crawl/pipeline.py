"""`crawl()`: classes through the engine chain, query by query, until each class folder holds
`max_num` images (top-up: when an engine runs dry the next one continues; the dedup covers the
overlap), every download under one FetchPolicy."""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from camkit.core.choices import License, choice, value
from camkit.core.files import ensure_writable_dir, refuse_inside_class_folder
from camkit.crawl.download import CamkitCrawler, VerifyingDownloader
from camkit.crawl.engines import ENGINES, Engine, EngineFeeder, EngineParser, SearchLog, engine_chain
from camkit.crawl.ledger import KeywordState, Ledger
from camkit.crawl.names import ClassQueries, classes_from, parse_bytes, parse_endpoints, slugify
from camkit.crawl.policy import FILE_TIMEOUT_FACTOR, AddressPolicy, FetchPolicy, HostGate
from camkit.crawl.progress import Progress
from camkit.crawl.verify import PHASH_THRESHOLD
from camkit.errors import CamkitError


@dataclass
class CrawlSummary:
    keyword: str
    folder: str
    requested: int
    saved: int
    engines: list[str]
    rejected: dict[str, int]
    timed_out: str | None = None
    queries: list[str] = field(default_factory=list)


class NothingSaved(CamkitError):
    """Some keyword ended with no image at all (the message says why, engine by engine).
    `summaries` keeps every keyword's CrawlSummary for library callers."""

    def __init__(self, message: str, summaries: list[CrawlSummary]):
        super().__init__(message)
        self.summaries = summaries


@dataclass
class _Settings:
    """What every class's and engine's run shares."""
    ledger: Ledger
    addresses: AddressPolicy
    policy: FetchPolicy
    gate: HostGate
    endpoints: dict[str, str]
    threads: int
    idle_timeout: float
    total_timeout: float
    progress: Progress


@dataclass
class _KeywordRun:
    state: KeywordState
    engines: list[str] = field(default_factory=list)
    timed_out: str | None = None
    why: dict[str, str] = field(default_factory=dict)   # engine -> what it gave, in words


def crawl(keywords: Sequence[str] = (), max_num: int = 100, out: str | Path = "data/images", engine: str = "auto",
          endpoint: str | Mapping[str, str] | Sequence[str] | None = None, threads: int = 8, min_size: int = 64,
          max_side: int | None = 512, max_bytes: str | int = "20MB", license: str | None = None,
          allow_private: bool = False, timeout: float = 10, retries: int = 2, backoff: float = 0.5,
          idle_timeout: float = 60, total_timeout: float = 3600, phash_threshold: int = PHASH_THRESHOLD,
          file_timeout: float | None = None, quiet: bool = False, queries: Sequence[str | ClassQueries] = (),
          per_host: int = 6, ignore_robots_tag: bool = False, max_wait: float = 30) -> list[CrawlSummary]:
    """Fill `out/<slug>/` with up to `max_num` verified, deduplicated images per class.

    A class is a keyword (searched as it is) or a `queries` entry `CLASS=QUERY[,QUERY...]`
    (every query lands in the one folder). Engines are tried in order (`engine='auto'`: Bing,
    Openverse, Baidu, Flickr with a key, Wikimedia; with `license`, the engines that report a
    licence per image, and images without a matching known licence are refused), each one
    continuing where the last ran dry. `endpoint` is a URL for every engine, or `ENGINE=URL`
    items (a mirror, a test server). Rerunning continues where the manifest left off (no URL
    or image is fetched twice). `timeout` bounds each network read; `file_timeout` (default
    3 x `timeout`) bounds each download in all; `idle_timeout` and `total_timeout` bound each
    class, and also end the downloads in flight. Raises NothingSaved (a CamkitError) when a
    class ends with no image in its folder, after the manifest is written, with the reason per
    engine tried. Progress goes to stderr (see Progress) unless `quiet` is set."""
    engine, license = value(engine), license if license is None else choice(License, license, "license")
    endpoints = parse_endpoints(endpoint, list(ENGINES))
    names = engine_chain(engine, license, endpoints)
    if "ddg" in names and importlib.util.find_spec("ddgs") is None:
        raise CamkitError("the ddg engine needs the ddgs package: pip install 'camkit[ddg]'")
    if max_num < 1 or threads < 1 or min_size < 1:
        raise CamkitError("--max-num, --threads and --min-size must be at least 1")
    policy = FetchPolicy(min_size=min_size, max_side=max_side, max_bytes=parse_bytes(max_bytes), timeout=timeout,
                         file_timeout=file_timeout or FILE_TIMEOUT_FACTOR * timeout, retries=retries, backoff=backoff,
                         max_wait=max_wait, per_host=per_host, license=license, robots_tag=not ignore_robots_tag)
    classes = classes_from(keywords, queries)
    slugs = [slugify(c.name) for c in classes]
    clash = next((s for s in slugs if slugs.count(s) > 1), None)
    if clash:
        raise CamkitError(f"two keywords map to the same folder '{clash}'; make them distinct")
    out = Path(out)
    refuse_inside_class_folder(out)   # DATA/bag/cats/*.jpg would become images of bag
    ensure_writable_dir(out, "output folder")
    s = _Settings(Ledger(out, phash_threshold), AddressPolicy(sorted(set(endpoints.values())), allow_private),
                  policy, HostGate(per_host), endpoints, threads, idle_timeout, total_timeout, Progress(not quiet))
    s.ledger.open()
    try:
        runs = [_crawl_class(c, slug, names, max_num, s) for c, slug in zip(classes, slugs)]
    finally:
        s.ledger.close()
    # built at the end: a later keyword can move an earlier one's image aside as ambiguous
    summaries = [CrawlSummary(r.state.keyword, str(r.state.folder), max_num, r.state.saved, r.engines,
                              dict(sorted(r.state.rejected.items())), r.timed_out, list(r.state.queries))
                 for r in runs]
    empty = [r for r in runs if r.state.saved <= 0]
    if empty:
        raise NothingSaved("no images saved for " + "; and for ".join(
            f"'{r.state.keyword}': " + "; ".join(f"{n}: {w}" for n, w in r.why.items()) for r in empty), summaries)
    return summaries


def _crawl_class(c: ClassQueries, slug: str, names: list[str], max_num: int, s: _Settings) -> _KeywordRun:
    """One class through the engines in order, every query on each, until the folder is full:
    an engine that runs dry hands over to the next (top-up); the total deadline is shared."""
    state = KeywordState(c.name, slug, s.ledger.out / slug, max_num, c.queries)
    s.ledger.add_keyword(state)
    run, deadline = _KeywordRun(state), time.monotonic() + s.total_timeout
    for name in names:
        if state.saved >= max_num:
            break
        log, rejected_before, timed_out = SearchLog(), dict(state.rejected), None
        for query in c.queries:
            if state.saved >= max_num or timed_out == "total":
                break
            timed_out = _run_engine(ENGINES[name], query, state, s, deadline, log) or timed_out
        run.engines.append(name)
        run.timed_out = run.timed_out or timed_out
        rejected = {k: v - rejected_before.get(k, 0) for k, v in state.rejected.items()
                    if v > rejected_before.get(k, 0)}
        run.why[name] = log.why(rejected, timed_out)
        if timed_out == "total":
            break
    return run


def _run_engine(engine: Engine, query: str, state: KeywordState, s: _Settings, deadline: float,
                log: SearchLog) -> str | None:
    """One engine's feeder/parser/downloader run for one query: the timeout that ended it, if any."""
    p, missing = s.policy, state.target - state.saved
    pages = min(engine.max_pages, (3 * missing) // engine.page_size + 2)

    def line() -> str:
        bar = "#" * int(30 * state.saved / state.target)
        return (f"{state.keyword:<20} [{bar:<30}] {state.saved}/{state.target} saved, "
                f"{sum(state.rejected.values())} rejected ({engine.name})")

    searched = f" ('{query}')" if query != state.keyword else ""
    s.progress.start(f"{state.keyword}: searching {engine.name}{searched} for {missing} images")
    crawler = CamkitCrawler(EngineFeeder, EngineParser, VerifyingDownloader, parser_threads=2,
                            downloader_threads=s.threads, idle_timeout=s.idle_timeout, deadline=deadline,
                            on_tick=lambda: s.progress.update(line()),
                            extra_parser_args=dict(engine=engine, log=log, session_options=dict(
                                retries=p.retries, backoff=p.backoff, max_wait=p.max_wait)),
                            extra_downloader_args=dict(ledger=s.ledger, state=state, addresses=s.addresses, policy=p,
                                                       gate=s.gate, engine=engine.name, query=query))
    crawler.session.headers["User-Agent"] = p.user_agent
    key = os.environ.get(engine.key_env, "") if engine.key_env else ""
    crawler.crawl(feeder_kwargs=dict(engine=engine, base=s.endpoints.get(engine.name), query=query, pages=pages,
                                     key=key, license_class=p.license),
                  parser_kwargs=dict(queue_timeout=0.5, req_timeout=p.timeout, max_retry=p.retries + 1),
                  downloader_kwargs=dict(max_num=state.target, queue_timeout=0.5, req_timeout=p.timeout))
    stopped = f", stopped by the {crawler.timed_out} timeout" if crawler.timed_out else ""
    s.progress.end(f"{state.keyword}: {engine.name} done, {state.saved}/{state.target} saved, "
                   f"{sum(state.rejected.values())} rejected{stopped}")
    return crawler.timed_out
