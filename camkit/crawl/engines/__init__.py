"""The search engines camkit can crawl, one module each, and the order `auto` tries them in."""

from __future__ import annotations

import os

from camkit.core.choices import Engine as EngineChoice
from camkit.core.choices import choice
from camkit.crawl.engines import baidu, bing, ddg, flickr, google, openverse, wikimedia
from camkit.crawl.engines.base import Engine, EngineFeeder, EngineParser, ParseError, SearchLog
from camkit.errors import CamkitError

ENGINES: dict[str, Engine] = {e.name: e for e in (bing.ENGINE, baidu.ENGINE, flickr.ENGINE, google.ENGINE,
                                                   openverse.ENGINE, wikimedia.ENGINE, ddg.ENGINE)}
# Bing's /images/async still answers in 2026; Openverse and Wikimedia are official APIs with a
# licence per image; Baidu works; Flickr needs a key; Google only when named (fragile HTML);
# ddg only when named (an optional package, intermittent, its results come from Bing).
AUTO_ORDER = ("bing", "openverse", "baidu", "flickr", "wikimedia")
LICENSE_ORDER = ("openverse", "wikimedia", "flickr")


def engine_chain(engine: str, license: str | None, endpoints: dict[str, str]) -> list[str]:
    """The engines to try, in order, for `--engine` (a name or 'auto') and `--license`.

    auto: AUTO_ORDER, Flickr only when FLICKR_API_KEY is set (a named flickr may
    also run against an --endpoint); with a licence class only the engines that give a licence per image, those first
    (any other engine's images would all be refused for want of a known licence)."""
    engine = choice(EngineChoice, engine, "engine")
    keyed = bool(os.environ.get("FLICKR_API_KEY"))
    if engine == "auto":
        names = [n for n in (LICENSE_ORDER if license else AUTO_ORDER) if n != "flickr" or keyed]
    else:
        names = [engine]
    if "flickr" in names and not keyed and "flickr" not in endpoints:
        raise CamkitError("the flickr engine needs an API key in FLICKR_API_KEY")
    if license and engine != "auto" and not ENGINES[engine].license_aware:
        raise CamkitError(f"{engine} gives no licence per image, so --license would refuse all its images; "
                          f"use {', '.join(LICENSE_ORDER)} or --engine auto")
    if "ddg" in endpoints and "ddg" in names:
        raise CamkitError("the ddg engine searches through the ddgs package and cannot use an --endpoint")
    return names


__all__ = ["AUTO_ORDER", "ENGINES", "LICENSE_ORDER", "Engine", "EngineFeeder", "EngineParser", "ParseError",
           "SearchLog", "engine_chain"]
