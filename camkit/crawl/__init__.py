"""Crawl image search engines into clean class folders, built on icrawler's Feeder/Parser/Downloader.

What camkit adds over icrawler: more engines tried in turn, each topping up where the last ran
dry (Bing, Openverse, Baidu, Flickr, Wikimedia; Google and DuckDuckGo when named); a licence,
creator and source page per image where the engine gives them (`camkit credits`); every file
verified in flight (content type, streamed size cap, full decode, pixel cap, minimum size),
written atomically, deduplicated across classes (exact and perceptual), logged in
`manifest.jsonl` (which also makes a rerun resume), refused when its URL resolves to a private
address or its server opts out of AI use (`X-Robots-Tag: noai`); polite (a camkit User-Agent,
per-host limits, `Retry-After` honoured); and the crawl always ends (idle / total timeouts and a
deadline per download). A class left with no image at all is an error that says why.

    crawl(["cats", "dogs"], max_num=100, out="data/images")
    crawl(queries=["grizzly=grizzly bear,grizzly bear photo"], max_num=100, license="commercial")

Modules: names (user input), policy (addresses, FetchPolicy, politeness), verify (one file,
twins, a folder), ledger (manifest), licenses, engines/ (one per engine), download (the
pipeline's threads), pipeline (crawl), check (--check), credits, progress.
"""

from importlib import import_module as _import_module
from typing import TYPE_CHECKING

from camkit.crawl.credits import Credit, credits, licence_line, license_counts, to_csv, to_markdown
from camkit.crawl.ledger import MANIFEST, HashIndex, KeywordState, Ledger, read_manifest
from camkit.crawl.licenses import LICENSE_CLASSES, license_code
from camkit.crawl.names import ClassQueries, origin, parse_bytes, parse_endpoints, parse_query, slugify
from camkit.crawl.policy import (AddressPolicy, Deadline, FetchPolicy, HostGate, Rejected, is_private, resolve,
                                 retry_after, robots_tag_forbids)
from camkit.crawl.progress import Progress
from camkit.crawl.verify import (MAX_PIXELS, PHASH_THRESHOLD, Verified, VerifySummary, hamming, phash, pixel_sha256,
                                 verify, verify_bytes)

# What needs icrawler (and with it requests and bs4) is imported on first use (PEP 562), so that
# `camkit verify` and `camkit credits` start without it; the rest above is eager, and `verify` and
# `credits` stay the functions, not the sub-modules of the same names.
_LAZY = {
    "camkit.crawl.check": ("EngineCheck", "check_engines", "require_default_chain"),
    "camkit.crawl.download": ("CamkitCrawler", "VerifyingDownloader"),
    "camkit.crawl.engines": ("AUTO_ORDER", "ENGINES", "LICENSE_ORDER", "Engine", "SearchLog"),
    "camkit.crawl.pipeline": ("CrawlSummary", "NothingSaved", "crawl"),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}

if TYPE_CHECKING:  # the same names for static readers (type checkers, the API reference)
    from camkit.crawl.check import EngineCheck, check_engines, require_default_chain
    from camkit.crawl.download import CamkitCrawler, VerifyingDownloader
    from camkit.crawl.engines import AUTO_ORDER, ENGINES, LICENSE_ORDER, Engine, SearchLog
    from camkit.crawl.pipeline import CrawlSummary, NothingSaved, crawl


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_import_module(_HOME[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "AUTO_ORDER", "ENGINES", "LICENSE_CLASSES", "LICENSE_ORDER", "MANIFEST", "MAX_PIXELS", "PHASH_THRESHOLD",
    "AddressPolicy", "CamkitCrawler", "ClassQueries", "CrawlSummary", "Credit", "Deadline", "Engine", "EngineCheck",
    "FetchPolicy", "HashIndex", "HostGate", "KeywordState", "Ledger", "NothingSaved", "Progress", "Rejected",
    "SearchLog", "Verified", "VerifySummary", "VerifyingDownloader", "check_engines", "crawl", "credits", "hamming",
    "is_private", "licence_line", "license_code", "license_counts", "origin", "parse_bytes", "parse_endpoints", "parse_query", "phash",
    "pixel_sha256", "read_manifest", "require_default_chain", "resolve", "slugify", "to_csv", "to_markdown", "verify",
    "verify_bytes",
]


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
