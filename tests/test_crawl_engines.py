"""The engines, top-up, licences and credits, politeness and the health check, each against a
loopback server (tests/fake_engine.py, 127.0.0.1) speaking the engine's documented format."""

from __future__ import annotations

import csv
import importlib.machinery
import io
import json
import sys
import types

import pytest

from camkit.crawl import (HostGate, NothingSaved, crawl, credits, license_code, parse_endpoints, parse_query,
                          retry_after, robots_tag_forbids)
from camkit.errors import CamkitError
from camkit.report import crawl_credits
from fake_engine import FakeEngine, encode, smooth_image
from test_crawl import FAST, files_on_disk, manifest


def images(engine: FakeEngine, prefix: str, n: int, seed: int) -> list[str]:
    return [engine.add(f"/img/{prefix}{i}.jpg", encode(smooth_image(seed + i))) for i in range(n)]


def ok_records(out) -> list[dict]:
    return [r for r in manifest(out) if r["status"] == "ok"]


# ---------------------------------------------------------------- top-up and the engine chain

def test_auto_tops_up_a_dry_bing_from_openverse(engine, tmp_path):
    engine.result("bears", *images(engine, "b", 5, 2000))
    for url in images(engine, "o", 20, 2100):
        engine.openverse_result("bears", url)
    out = tmp_path / "i"
    [summary] = crawl(["bears"], max_num=20, out=out, endpoint=engine.endpoint, **FAST)
    assert summary.saved == 20 and summary.engines == ["bing", "openverse"]
    by_engine = [r["engine"] for r in ok_records(out)]
    assert by_engine.count("bing") == 5 and by_engine.count("openverse") == 15
    assert len(files_on_disk(out)) == 20 and "/search/acjson" not in engine.hits  # baidu never needed


def test_openverse_licence_fields_land_in_the_manifest(engine, tmp_path):
    [url] = images(engine, "o", 1, 2200)
    item = engine.openverse_result("owls", url, license="by", version="4.0", creator="Ödön Owl")
    out = tmp_path / "i"
    crawl(["owls"], max_num=1, out=out, endpoint=engine.endpoint, engine="openverse", **FAST)
    [rec] = ok_records(out)
    assert {k: rec[k] for k in ("source_page", "license", "license_code", "license_url", "creator", "attribution")} \
        == {"source_page": item["foreign_landing_url"], "license": "CC BY 4.0", "license_code": "by",
            "license_url": "https://creativecommons.org/licenses/by/4.0/", "creator": "Ödön Owl",
            "attribution": item["attribution"]}


def test_wikimedia_commons_answers_are_read_with_their_licence(engine, tmp_path):
    [jpg, clip] = images(engine, "w", 2, 2300)
    engine.wikimedia_result("owls", jpg, license="CC BY-SA 4.0", artist="Ann <b>Author</b>")
    engine.wikimedia_result("owls", clip, mime="video/webm")   # not a picture: never fetched
    out = tmp_path / "i"
    [summary] = crawl(["owls"], max_num=5, out=out, endpoint=engine.endpoint, engine="wikimedia", **FAST)
    assert summary.saved == 1 and "/img/w1.jpg" not in engine.hits
    [rec] = ok_records(out)
    assert rec["license"] == "CC BY-SA 4.0" and rec["license_code"] == "by-sa"
    assert rec["creator"] == "Ann Author"            # the HTML link and markup stripped
    assert rec["source_page"] == "https://commons.wikimedia.org/wiki/File:Owls_0.jpg"


def test_bing_results_keep_their_source_page_and_no_licence(engine, tmp_path):
    [url] = images(engine, "b", 1, 2400)
    engine.result("cats", url)
    out = tmp_path / "i"
    crawl(["cats"], max_num=1, out=out, endpoint=engine.endpoint, engine="bing", **FAST)
    [rec] = ok_records(out)
    assert rec["source_page"] == url + "/page" and rec["license"] is None and rec["creator"] is None


def test_several_queries_fill_one_class_folder(engine, tmp_path):
    engine.result("grizzly bear", *images(engine, "g", 2, 2500))
    engine.result("grizzly bear photo", *images(engine, "p", 2, 2600))
    out = tmp_path / "i"
    [summary] = crawl(queries=["grizzly=grizzly bear, grizzly bear photo"], max_num=4, out=out,
                      endpoint=engine.endpoint, engine="bing", **FAST)
    assert summary.saved == 4 and summary.queries == ["grizzly bear", "grizzly bear photo"]
    assert {f.split("/")[0] for f in files_on_disk(out)} == {"grizzly"}
    assert sorted(r["query"] for r in ok_records(out)) == ["grizzly bear"] * 2 + ["grizzly bear photo"] * 2


# ---------------------------------------------------------------- --license

def test_a_licence_class_keeps_only_matching_known_licences(engine, tmp_path):
    urls = images(engine, "l", 3, 2700)
    for url, lic in zip(urls, ("by-nc", "by", "cc0")):
        engine.openverse_result("owls", url, license=lic, version="1.0" if lic == "cc0" else "4.0")
    engine.result("owls", *images(engine, "b", 2, 2750))   # bing: no licence per image, never asked
    out = tmp_path / "i"
    [summary] = crawl(["owls"], max_num=5, out=out, endpoint=engine.endpoint, license="commercial", **FAST)
    assert summary.saved == 2 and summary.engines[0] == "openverse" and "bing" not in summary.engines
    assert {r["url"]: r["status"] for r in manifest(out) if r["url"] in urls} == \
        {urls[0]: "license_not_allowed", urls[1]: "ok", urls[2]: "ok"}
    assert "/img/l0.jpg" not in engine.hits and "/images/async" not in engine.hits
    assert any("license_type=commercial" in p for p in engine.requested_queries("/v1/images/"))


def test_naming_an_engine_without_licences_with_license_is_one_clear_error(engine, tmp_path):
    with pytest.raises(CamkitError, match="^bing gives no licence per image") as caught:
        crawl(["owls"], max_num=1, out=tmp_path / "i", endpoint=engine.endpoint, engine="bing",
              license="commercial", **FAST)
    assert "\n" not in str(caught.value) and engine.hits == {}


@pytest.mark.parametrize("text,code", [
    ("CC BY-SA 4.0", "by-sa"), ("by-nc-nd", "by-nc-nd"), ("CC0", "cc0"), ("cc0 1.0", "cc0"), ("pdm", "pdm"),
    ("Public domain", "pdm"), ("CC BY 2.0 de", "by"), ("Attribution-ShareAlike", "by-sa"), ("GFDL", None),
    ("", None), (None, None), ("CC BY-XX", None),
])
def test_licence_names_reduce_to_creative_commons_codes(text, code):
    assert license_code(text) == code


# ---------------------------------------------------------------- politeness

@pytest.mark.parametrize("where", ["image", "search page"])
def test_retry_after_is_waited_out_before_asking_again(engine, tmp_path, where):
    [url] = images(engine, "r", 1, 2800)
    if where == "image":
        engine.result("cats", url)
        path, name = "/img/r0.jpg", "bing"
    else:
        engine.openverse_result("cats", url)
        path, name = "/v1/images/", "openverse"
    engine.fail_first(path, 1, 429, {"Retry-After": "2"})
    out = tmp_path / "i"
    [summary] = crawl(["cats"], max_num=1, out=out, endpoint=engine.endpoint, engine=name,
                      **{**FAST, "timeout": 5})
    first, second = engine.times[path][:2]
    assert second - first >= 1.9 and summary.saved == 1   # the server's own clock: it was asked 2 s later
    assert [r["status"] for r in manifest(out)] == ["ok"]


def test_a_retry_after_beyond_the_budget_gives_up_at_once(engine, tmp_path):
    [url] = images(engine, "r", 1, 2850)
    engine.result("cats", url)
    engine.fail_first("/img/r0.jpg", 5, 503, {"Retry-After": "120"})
    out = tmp_path / "i"
    with pytest.raises(NothingSaved, match=r"none kept \(rate_limited 1\)"):
        crawl(["cats"], max_num=1, out=out, endpoint=engine.endpoint, engine="bing", **FAST)
    assert engine.hits["/img/r0.jpg"] == 1


@pytest.mark.parametrize("tag,ignore,status", [
    ("noai", False, "robots_noai"), ("noimageai, noindex", False, "robots_noai"),
    ("camkit: noai", False, "robots_noai"), ("otherbot: noai", False, "ok"), ("noindex", False, "ok"),
    ("noai", True, "ok"),
])
def test_x_robots_tag_noai_is_honoured_unless_ignored(engine, tmp_path, tag, ignore, status):
    url = engine.add("/img/tagged.jpg", encode(smooth_image(2900)), headers={"X-Robots-Tag": tag})
    engine.result("cats", url, *images(engine, "f", 1, 2901))
    out = tmp_path / "i"
    crawl(["cats"], max_num=2, out=out, endpoint=engine.endpoint, engine="bing", ignore_robots_tag=ignore, **FAST)
    assert {r["url"]: r["status"] for r in manifest(out)}[url] == status


@pytest.mark.parametrize("values,forbids", [
    (["noai"], True), (["NoImageAI"], True), (["googlebot: noindex", "camkit: noimageai"], True),
    (["googlebot: noai"], False), (["noindex, nofollow"], False), ([], False),
])
def test_robots_tag_directives(values, forbids):
    assert robots_tag_forbids(values) is forbids


@pytest.mark.parametrize("per_host,most", [(2, 2), (8, 8)])
def test_downloads_per_host_are_capped(tmp_path, per_host, most):
    with FakeEngine() as engine:
        urls = [engine.add(f"/img/s{i}.jpg", encode(smooth_image(3000 + i)), delay=0.3) for i in range(8)]
        engine.result("cats", *urls)
        crawl(["cats"], max_num=8, out=tmp_path / "i", endpoint=engine.endpoint, engine="bing",
              **{**FAST, "threads": 8}, per_host=per_host)
    assert engine.max_active <= most
    assert engine.max_active == 2 if per_host == 2 else engine.max_active > 2


def test_retry_after_parses_seconds_and_dates():
    assert retry_after({"retry-after": "7"}) == 7.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0) == 10.0
    assert retry_after({"retry-after": "soon"}) is None and retry_after({}) is None


def test_a_host_in_back_off_makes_every_thread_wait():
    import threading

    from camkit.crawl import Deadline, Rejected

    gate = HostGate(4)
    gate.back_off("example.org", 60)
    with pytest.raises(Rejected, match="rate_limited"):
        with gate.slot("example.org", Deadline(5, threading.Event())):
            pass
    with gate.slot("other.org", Deadline(5, threading.Event())):
        pass


# ---------------------------------------------------------------- bad input: one clear line each

def test_engines_answering_something_else_than_json_say_so(engine, tmp_path):
    engine.add("/v1/images/", b"<html>maintenance</html>", "text/html")
    engine.add("/w/api.php", b"<html>maintenance</html>", "text/html")
    with pytest.raises(NothingSaved) as caught:
        crawl(["cats"], max_num=1, out=tmp_path / "i", endpoint=engine.endpoint, **FAST)
    assert str(caught.value) == ("no images saved for 'cats': bing: 0 results; "
                                 "openverse: parse error (not JSON) from the search page (2 pages); baidu: 0 results; "
                                 "wikimedia: parse error (not JSON) from the search page (2 pages)")


@pytest.mark.parametrize("text", ["grizzly", "=grizzly bear", "grizzly=", "grizzly= , ,"])
def test_malformed_queries_are_refused(text):
    with pytest.raises(CamkitError, match=r"^--query must look like 'grizzly=grizzly bear,grizzly bear photo'"):
        parse_query(text)


def test_endpoints_per_engine_and_for_all():
    names = ["bing", "openverse"]
    assert parse_endpoints(["openverse=http://127.0.0.1:9/x?y=1"], names) == {"openverse": "http://127.0.0.1:9"}
    assert parse_endpoints("http://h:1", names) == {"bing": "http://h:1", "openverse": "http://h:1"}


@pytest.mark.parametrize("args,message", [
    (("cats", "--endpoint", "altavista=http://127.0.0.1:9"), "unknown engine 'altavista' in --endpoint"),
    (("cats", "--endpoint", "bing=ftp://x"), "--endpoint must be an http(s) URL"),
    (("--query", "grizzly"), "--query must look like"),
    (("--max-num", "3",), "give at least one keyword or --query"),
    (("cats", "--engine", "google", "--license", "commercial"), "google gives no licence per image"),
    (("cats", "--license", "free"), "'free' is not one of"),
])
def test_crawl_cli_bad_input_is_one_line(cli, tmp_path, args, message):
    code, out, err = cli("crawl", *args, "--out", tmp_path / "o")
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_the_ddg_engine_without_its_package_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ddgs", None)   # as if not installed
    code, out, err = cli("crawl", "cats", "--engine", "ddg", "--out", tmp_path / "o")
    assert code == 2 and err == "error: the ddg engine needs the ddgs package: pip install 'camkit[ddg]'\n"


def test_the_ddg_engine_reads_what_ddgs_returns(engine, tmp_path, monkeypatch):
    urls = images(engine, "d", 2, 3100)
    calls = []

    class DDGS:  # the ddgs 9 interface: DDGS(timeout=...).images(query, max_results=, page=, backend=)
        def __init__(self, timeout=5):
            pass

        def images(self, query, max_results=10, page=1, backend="auto"):
            calls.append((query, page, backend))
            return [{"title": "a cat", "image": u, "thumbnail": u, "url": u + "/page", "height": 120, "width": 160,
                     "source": "Bing"} for u in urls] if page == 1 else []

    module = types.ModuleType("ddgs")
    module.DDGS, module.__spec__ = DDGS, importlib.machinery.ModuleSpec("ddgs", None)
    monkeypatch.setitem(sys.modules, "ddgs", module)
    out = tmp_path / "i"
    [summary] = crawl(["cats"], max_num=2, out=out, engine="ddg", endpoint=[f"bing={engine.endpoint}"],
                      **{**FAST, "allow_private": True})
    assert summary.saved == 2 and calls[0] == ("cats", 1, "duckduckgo")
    assert sorted(r["source_page"] for r in ok_records(out)) == sorted(u + "/page" for u in urls)


# ---------------------------------------------------------------- --check

def test_check_prints_each_engines_status(cli, engine):
    engine.result("cat", *images(engine, "c", 3, 3200))
    engine.openverse_result("cat", engine.url("/img/c0.jpg"))
    engine.add("/w/api.php", b"<html>down</html>", "text/html")
    engine.add("/search/acjson", b"busy", "text/plain", status=503, headers={"Retry-After": "60"})
    code, out, err = cli("crawl", "--check", "--endpoint", engine.endpoint, "--timeout", "2")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0, err
    assert lines["bing"].split()[1:4] == ["OK", "3", "results,"]
    assert lines["openverse"].split()[1:4] == ["OK", "1", "results,"]
    assert lines["baidu"].split()[1:] == ["HTTP", "503", "(Retry-After", "60", "s)"]
    assert lines["wikimedia"].split()[1:] == ["parse", "error", "(not", "JSON)"]
    assert set(lines) == {"bing", "baidu", "flickr", "google", "openverse", "wikimedia", "ddg"}


def test_check_exits_non_zero_when_the_default_chain_is_dead(cli, engine):
    code, out, err = cli("crawl", "--check", "--endpoint", engine.endpoint, "--timeout", "2")
    assert code == 2 and err.startswith("error: the default engine chain is dead: bing: no results; "
                                        "openverse: no results; baidu: no results; wikimedia: no results"), err
    assert err.count("\n") == 1


# ---------------------------------------------------------------- credits

@pytest.fixture
def credited(engine, tmp_path):
    """A crawl of two Openverse images and one Bing image (no licence)."""
    for i, url in enumerate(images(engine, "o", 2, 3300)):
        engine.openverse_result("owls", url, license=("by", "cc0")[i], version=("4.0", "1.0")[i],
                                creator=("Ann | <b>Owl</b>", "=HYPERLINK(1)")[i])
    engine.result("owls", *images(engine, "b", 1, 3350))
    out = tmp_path / "data"
    crawl(["owls"], max_num=3, out=out, endpoint=engine.endpoint, **FAST)
    return out


def test_credits_markdown_escapes_and_counts(cli, credited):
    code, out, err = cli("credits", credited)
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("| owls/")]
    assert len(rows) == 3
    assert any("Ann \\| &lt;b&gt;Owl&lt;/b&gt;" in r and "[CC BY 4.0](<https://creativecommons.org/licenses/by/4.0/>)"
               in r for r in rows)
    assert out.rstrip().splitlines()[-1] == "1 CC BY 4.0, 1 CC0 1.0, 1 unknown"


def test_credits_csv_and_json(cli, credited):
    code, out, _ = cli("credits", credited, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 3
    assert {r["creator"] for r in rows} == {"Ann | <b>Owl</b>", "'=HYPERLINK(1)", ""}   # no formula runs
    code, out, _ = cli("credits", credited, "--json")
    data = json.loads(out)
    assert data["licenses"] == {"CC BY 4.0": 1, "CC0 1.0": 1, "unknown": 1}
    assert {c["engine"] for c in data["credits"]} == {"openverse", "bing"}


def test_images_moved_out_are_no_longer_credited(credited):
    first = credits(credited)[0]
    (credited / first.file).rename(credited / "elsewhere.jpg")
    assert first.file not in {c.file for c in credits(credited)} and len(credits(credited)) == 2


def test_credits_of_a_folder_without_a_crawl_is_one_line(cli, tmp_path):
    code, out, err = cli("credits", tmp_path)
    assert code == 2 and err == f"error: '{tmp_path}' has no manifest.jsonl (credits come from a camkit crawl)\n"


def test_the_report_section_shows_licence_counts_and_escaped_credits(credited):
    page = crawl_credits(credited)
    assert "Licences: CC BY 4.0 1, CC0 1.0 1, unknown 1." in page
    assert "Ann | &lt;b&gt;Owl&lt;/b&gt;" in page and "<b>Owl" not in page
    assert crawl_credits(credited.parent) == ""


def test_flickr_search_answers_carry_licence_and_owner():
    from camkit.crawl.engines import flickr

    body = json.dumps({"photos": {"page": 1, "pages": 1, "perpage": 2, "total": 2, "photo": [
        {"id": "5", "owner": "12@N0", "secret": "ab", "server": "65", "farm": 66, "title": "owl", "ispublic": 1,
         "license": "4", "ownername": "Olga"},
        {"id": "6", "owner": "13@N0", "secret": "cd", "server": "65", "title": "owl", "license": "0"}]},
        "stat": "ok"}).encode()
    first, second = list(flickr.parse(body))
    assert first == {"file_url": "https://live.staticflickr.com/65/5_ab_b.jpg", "meta": {
        "source_page": "https://www.flickr.com/photos/12@N0/5", "license": "CC BY 2.0", "license_code": "by",
        "license_url": "https://creativecommons.org/licenses/by/2.0/", "creator": "Olga", "attribution": None}}
    assert second["meta"]["license_code"] is None   # "All Rights Reserved" is no CC licence
    with pytest.raises(flickr.ParseError, match="Invalid API Key"):
        list(flickr.parse(b'{"stat": "fail", "code": 100, "message": "Invalid API Key (Key has invalid format)"}'))
