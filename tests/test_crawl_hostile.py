"""The crawler against hostile input: edited manifests, slow servers, other loopback ports,
reused names, one URL under two keywords, engines that give nothing, noisy progress, Unicode
and hostile keywords, unwritable output folders. Every server is on 127.0.0.1."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

import camkit.crawl as crawl_mod
from camkit.crawl import NothingSaved, Progress, crawl, slugify, verify, verify_bytes
from camkit.errors import CamkitError
from fake_engine import FakeEngine, encode, smooth_image
from helpers import free_port
from test_crawl import FAST, files_on_disk, manifest


@pytest.fixture
def other_engine():
    """A second loopback server on another port: the crawler must never reach it."""
    with FakeEngine() as e:
        yield e


def hashes(data: bytes) -> dict:
    v = verify_bytes(data, min_size=32)
    return {"sha256": v.sha256, "phash": f"{v.phash:016x}"}


def write_manifest(out: Path, *records: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message, message
    return message


# ---------------------------------------------------------------- 1. manifest paths stay inside out/

@pytest.mark.parametrize("variant", ["dotdot", "absolute", "class_dotdot", "symlinked_class", "moved_from"])
def test_manifest_paths_outside_the_output_folder_are_refused(engine, tmp_path, variant):
    data = encode(smooth_image(500))
    secret = tmp_path / "x.jpg"              # outside the output folder
    secret.write_bytes(data)
    out = tmp_path / "images"
    out.mkdir()
    hostile = {"keyword": "cats", "slug": "cats", "engine": "bing", "url": "http://old.test/2.jpg",
               "status": "ok", **hashes(data)}
    if variant == "dotdot":
        hostile["file"] = "../x.jpg"
    elif variant == "absolute":
        hostile["file"] = str(secret)
    elif variant == "class_dotdot":
        hostile["file"] = "cats/../../x.jpg"
    elif variant == "symlinked_class":
        (tmp_path / "elsewhere").mkdir()
        secret = tmp_path / "elsewhere" / "x.jpg"
        secret.write_bytes(data)
        (out / "cats").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        hostile["file"] = "cats/x.jpg"
    else:
        hostile.update(status="ambiguous", url=None, file="_rejected/ambiguous/cats/x.jpg", moved_from="../x.jpg")
    write_manifest(out, {"keyword": "cats", "slug": "cats", "engine": "bing", "url": "http://old.test/1.jpg",
                         "status": "http_404"}, hostile)
    engine.result("dogs", engine.add("/img/same.jpg", data))  # the same pixels, under another keyword
    with pytest.raises(CamkitError) as caught:
        crawl(["dogs"], max_num=1, out=out, endpoint=engine.endpoint, **FAST)
    message = one_line_error(caught)
    assert f"manifest '{out / 'manifest.jsonl'}' line 2 is refused" in message and "leaves its folder" in message
    assert secret.read_bytes() == data                       # nothing moved
    assert not (out / "dogs").exists() and not (out / "_rejected").exists()  # nothing created
    assert engine.hits == {}                                  # nothing fetched


@pytest.mark.parametrize("record", [
    {"status": "ok", "file": "cats/1.jpg", "sha256": "ab", "phash": "not-hex"},
    {"status": "ok", "file": "cats/1.jpg"},
    {"status": "ok", "file": "manifest.jsonl", "sha256": "ab", "phash": "00ff"},
    {"status": "ok", "file": 7, "sha256": "ab", "phash": "00ff"},
])
def test_malformed_manifest_lines_are_refused_with_their_line(engine, tmp_path, record):
    out = tmp_path / "images"
    write_manifest(out, {"url": "http://old.test/1.jpg", **record})
    with pytest.raises(CamkitError, match=r"manifest '.*manifest\.jsonl' line 1 is refused") as caught:
        crawl(["cats"], max_num=1, out=out, endpoint=engine.endpoint, **FAST)
    one_line_error(caught)
    assert not (out / "cats").exists()


def test_a_class_folder_symlinked_outside_is_refused(engine, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "images"
    out.mkdir()
    (out / "cats").symlink_to(elsewhere, target_is_directory=True)
    engine.result("cats", engine.add("/img/a.jpg", encode(smooth_image(501))))
    with pytest.raises(CamkitError, match="class folder 'cats' leaves its folder") as caught:
        crawl(["cats"], max_num=1, out=out, endpoint=engine.endpoint, **FAST)
    one_line_error(caught)
    assert list(elsewhere.iterdir()) == []


# ---------------------------------------------------------------- 2. a slow body cannot outlive the deadlines

def dribbling(engine: FakeEngine, interval: float) -> str:
    """An image URL whose body arrives one byte every `interval` s (for 30 s at most)."""
    return engine.add("/img/drip.jpg", encode(smooth_image(600)), dribble=interval, dribble_for=30)


@pytest.mark.parametrize("interval", [1.0, 0.1])
def test_a_dribbling_body_is_cut_at_the_file_deadline(engine, tmp_path, interval):
    slow, good = dribbling(engine, interval), engine.add("/img/good.jpg", encode(smooth_image(601)))
    engine.result("cats", slow, good)
    out = tmp_path / "i"
    start = time.monotonic()
    [summary] = crawl(["cats"], max_num=5, out=out, endpoint=engine.endpoint, engine="bing",
                      **{**FAST, "timeout": 5, "idle_timeout": 10, "total_timeout": 15, "file_timeout": 2})
    assert time.monotonic() - start < 2 + 5
    status = {r["url"]: r["status"] for r in manifest(out)}
    assert status == {slow: "timeout", good: "ok"}
    assert summary.saved == 1 and summary.timed_out is None and len(files_on_disk(out)) == 1


def test_the_default_file_deadline_is_three_timeouts(engine, tmp_path):
    slow, good = dribbling(engine, 0.2), engine.add("/img/good.jpg", encode(smooth_image(602)))
    engine.result("cats", slow, good)
    start = time.monotonic()
    crawl(["cats"], max_num=5, out=tmp_path / "i", endpoint=engine.endpoint, engine="bing",
          **{**FAST, "timeout": 0.5, "idle_timeout": 30, "total_timeout": 60})
    assert time.monotonic() - start < 1.5 + 5
    assert {r["url"]: r["status"] for r in manifest(tmp_path / "i")}[slow] == "timeout"


@pytest.mark.parametrize("which", ["total", "idle"])
def test_the_crawl_deadlines_stop_downloads_in_flight(engine, tmp_path, which):
    slow, good = dribbling(engine, 1.0), engine.add("/img/good.jpg", encode(smooth_image(603)))
    engine.result("cats", good, slow)
    limits = {"total": dict(idle_timeout=30, total_timeout=3), "idle": dict(idle_timeout=2, total_timeout=60)}[which]
    out = tmp_path / "i"
    start = time.monotonic()
    [summary] = crawl(["cats"], max_num=5, out=out, endpoint=engine.endpoint, engine="bing",
                      **{**FAST, "timeout": 5, **limits})  # the file deadline (15 s) comes later
    assert time.monotonic() - start < 3 + 5
    assert summary.timed_out == which and summary.saved == 1
    assert {r["url"]: r["status"] for r in manifest(out)} == {good: "ok", slow: "timeout"}


def test_a_crawl_of_only_a_dribbling_image_ends_and_says_why(engine, tmp_path):
    slow = dribbling(engine, 1.0)
    engine.result("cats", slow)
    start = time.monotonic()
    with pytest.raises(NothingSaved) as caught:
        crawl(["cats"], max_num=5, out=tmp_path / "i", endpoint=engine.endpoint, engine="bing",
              **{**FAST, "timeout": 5, "idle_timeout": 10, "total_timeout": 3})
    assert time.monotonic() - start < 3 + 5
    assert one_line_error(caught) == ("no images saved for 'cats': bing: 1 result, none kept (timeout 1), "
                                      "stopped by the total timeout")
    assert caught.value.summaries[0].timed_out == "total"


# ---------------------------------------------------------------- 3. the --endpoint exemption is one origin

@pytest.mark.parametrize("url,allowed", [
    ("http://127.0.0.1:8000/a.jpg", True), ("HTTP://127.0.0.1:8000/b.png?x=1", True),
    ("http://127.0.0.1:8001/a.jpg", False), ("https://127.0.0.1:8000/a.jpg", False),
    ("http://localhost:8000/a.jpg", False), ("http://localhost:8001/a.jpg", False),
    ("http://127.0.0.1/a.jpg", False), ("http://127.0.0.2:8000/a.jpg", False),
])
def test_address_policy_exempts_the_endpoint_origin_only(url, allowed):
    policy = crawl_mod.AddressPolicy(["http://127.0.0.1:8000"])
    if allowed:
        policy.check(url)
    else:
        with pytest.raises(crawl_mod.Rejected, match="private_address"):
            policy.check(url)


def test_an_endpoint_without_a_port_exempts_the_default_port_only():
    policy = crawl_mod.AddressPolicy(["http://127.0.0.1"])
    policy.check("http://127.0.0.1:80/a.jpg")
    with pytest.raises(crawl_mod.Rejected, match="private_address"):
        policy.check("http://127.0.0.1:8080/a.jpg")


@pytest.mark.parametrize("variant", ["other_port", "redirect", "localhost_other_port", "other_scheme"])
def test_results_and_redirects_to_other_loopback_origins_are_refused(engine, other_engine, tmp_path, variant):
    secret = other_engine.add("/img/secret.jpg", encode(smooth_image(700)))
    good = engine.add("/img/good.jpg", encode(smooth_image(701)))
    url = {"other_port": secret,
           "redirect": engine.add("/img/hop.jpg", b"", status=302, headers={"Location": secret}),
           "localhost_other_port": f"http://localhost:{other_engine.port}/img/secret.jpg",
           "other_scheme": f"https://127.0.0.1:{engine.port}/img/good.jpg?tls"}[variant]
    engine.result("cats", url, good)
    out = tmp_path / "i"
    [summary] = crawl(["cats"], max_num=5, out=out, endpoint=engine.endpoint, engine="bing", **FAST)
    assert other_engine.hits == {}
    assert {r["url"]: r["status"] for r in manifest(out)} == {url: "private_address", good: "ok"}
    assert summary.saved == 1


# ---------------------------------------------------------------- 4. never overwrite, never delete

@pytest.mark.parametrize("reason", ["truncated", "not_an_image", "duplicate"])
def test_verify_twice_keeps_both_rejects_of_the_same_name(tmp_path, reason):
    root = tmp_path / "data"
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
    smooth_image(1).save(root / "cats" / "keep.png")
    smooth_image(2).save(root / "dogs" / "keep.png")

    def bad(seed: int) -> bytes:
        if reason == "truncated":
            return encode(smooth_image(seed))[:900]
        if reason == "not_an_image":
            return f"<html>{seed}</html>".encode()
        return encode(smooth_image(1), "PNG") + b"\0" * seed  # keep.png's pixels, other bytes

    name = "x.png"  # sorted after keep.png: keep.png is the original, x.png the reject
    (root / "cats" / name).write_bytes(first := bad(3))
    assert verify(root, min_size=32).rejected == {reason: 1}
    (root / "cats" / name).write_bytes(second := bad(4))
    assert verify(root, min_size=32).rejected == {reason: 1}
    moved = root / "_rejected" / reason / "cats"
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == {name: first, "x-1.png": second}


def test_quarantine_never_overwrites_an_earlier_reject(engine, tmp_path):
    out = tmp_path / "images"
    sentinel = out / "_rejected" / "ambiguous" / "cats" / "000001.jpg"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_bytes(b"an earlier reject")
    shared = encode(smooth_image(900))
    engine.result("cats", engine.add("/img/s1.jpg", shared), engine.add("/img/c.jpg", encode(smooth_image(901))))
    engine.result("dogs", engine.add("/img/s2.jpg", shared), engine.add("/img/d.jpg", encode(smooth_image(902))))
    crawl(["cats", "dogs"], max_num=5, out=out, endpoint=engine.endpoint, engine="bing", **{**FAST, "threads": 1})
    assert sentinel.read_bytes() == b"an earlier reject"
    assert (sentinel.parent / "000001-1.jpg").read_bytes() == shared
    [moved] = [r for r in manifest(out) if r.get("moved_from")]
    assert moved == {**moved, "moved_from": "cats/000001.jpg", "file": "_rejected/ambiguous/cats/000001-1.jpg"}


def test_a_users_tmp_files_survive_a_crawl(engine, tmp_path):
    out = tmp_path / "images"
    (out / "cats").mkdir(parents=True)
    mine = {".tmp-notes.txt": b"my notes", ".tmp-1.jpg": encode(smooth_image(950)), ".tmp-000001.jpg": b"half"}
    for name, data in mine.items():
        (out / "cats" / name).write_bytes(data)
    engine.result("cats", *(engine.add(f"/img/{i}.jpg", encode(smooth_image(960 + i))) for i in range(3)))
    [summary] = crawl(["cats"], max_num=3, out=out, endpoint=engine.endpoint, **FAST)
    assert summary.saved == 3 and len(files_on_disk(out)) == 3
    assert {n: (out / "cats" / n).read_bytes() for n in mine} == mine
    assert not list(out.rglob(".camkit-tmp-*"))  # camkit's own temp files were renamed into place


# ---------------------------------------------------------------- 5. one URL under two keywords

@pytest.mark.parametrize("resumed", [False, True])
def test_the_same_url_under_two_keywords_is_ambiguous(engine, tmp_path, resumed):
    shared = engine.add("/img/shared.jpg", encode(smooth_image(1000)))
    cats = [engine.add(f"/img/c{i}.jpg", encode(smooth_image(1010 + i))) for i in range(2)]
    dogs = [engine.add(f"/img/d{i}.jpg", encode(smooth_image(1020 + i))) for i in range(2)]
    engine.result("cats", shared, *cats)
    engine.result("dogs", dogs[0], shared, dogs[1])
    out = tmp_path / "images"
    options = dict(max_num=10, out=out, endpoint=engine.endpoint, engine="bing", **FAST)
    if resumed:  # the manifest has the URL under cats; a later run finds it under dogs
        assert crawl(["cats"], **options)[0].saved == 3
        [s_dogs] = crawl(["dogs"], **options)
    else:
        _, s_dogs = crawl(["cats", "dogs"], **options)
    assert s_dogs.saved == 2 and len(list((out / "cats").iterdir())) == 2
    assert engine.hits["/img/shared.jpg"] == 1  # not fetched again
    records = manifest(out)
    [moved] = [r for r in records if r.get("moved_from")]
    assert moved["status"] == "ambiguous" and moved["moved_from"].startswith("cats/")
    assert (out / moved["file"]).is_file() and not (out / moved["moved_from"]).exists()
    assert [r["status"] for r in records if r["url"] == shared and r["slug"] == "dogs"] == ["ambiguous"]


# ---------------------------------------------------------------- 6. a crawl that saves nothing fails

def test_a_dead_endpoint_is_an_error_that_says_why(tmp_path):
    out = tmp_path / "i"
    with pytest.raises(NothingSaved) as caught:
        crawl(["cats"], max_num=5, out=out, endpoint=f"http://127.0.0.1:{free_port()}", **FAST)
    message = one_line_error(caught)
    assert message == ("no images saved for 'cats': bing: connection refused to the search page (2 pages); "
                       "openverse: connection refused to the search page (2 pages); "
                       "baidu: connection refused to the search page (2 pages); "
                       "wikimedia: connection refused to the search page (2 pages)"), message
    assert isinstance(caught.value, CamkitError) and caught.value.summaries[0].saved == 0
    assert (out / "manifest.jsonl").exists()


def test_every_result_rejected_is_an_error_with_the_reasons(engine, tmp_path):
    engine.result("cats", engine.url("/img/missing.jpg"),
                  engine.add("/img/tiny.png", encode(smooth_image(1100, (16, 16)), "PNG"), "image/png"),
                  engine.add("/img/page.jpg", b"<html></html>", "text/html"))
    with pytest.raises(NothingSaved) as caught:
        crawl(["cats"], max_num=5, out=tmp_path / "i", endpoint=engine.endpoint, engine="bing", **FAST)
    assert one_line_error(caught) == ("no images saved for 'cats': bing: 3 results, none kept "
                                      "(http_404 1, not_image_content_type 1, too_small 1)")


def test_only_the_empty_keyword_is_named_and_every_summary_is_kept(engine, tmp_path):
    engine.result("cats", engine.add("/img/a.jpg", encode(smooth_image(1200))))
    with pytest.raises(NothingSaved, match=r"^no images saved for 'dogs': bing: 0 results$") as caught:
        crawl(["cats", "dogs"], max_num=2, out=tmp_path / "i", endpoint=engine.endpoint, engine="bing", **FAST)
    assert [(s.keyword, s.saved) for s in caught.value.summaries] == [("cats", 1), ("dogs", 0)]


def test_images_from_an_earlier_run_count(engine, tmp_path):
    engine.result("cats", *(engine.add(f"/img/{i}.jpg", encode(smooth_image(1300 + i))) for i in range(2)))
    out = tmp_path / "i"
    crawl(["cats"], max_num=2, out=out, endpoint=engine.endpoint, **FAST)
    [again] = crawl(["cats"], max_num=5, out=out, endpoint=f"http://127.0.0.1:{free_port()}", engine="bing", **FAST)
    assert again.saved == 2


# ---------------------------------------------------------------- 7. progress that suits its stream

def test_progress_to_a_file_is_a_few_lines_without_carriage_returns(tmp_path, capsys):
    with FakeEngine(latency=0.1) as engine:  # slow enough for many ticks
        for k, kw in enumerate(("cats", "dogs")):
            engine.result(kw, *(engine.add(f"/img/{kw}{i}.jpg", encode(smooth_image(1500 + 10 * k + i)))
                                for i in range(3)))
        crawl(["cats", "dogs"], max_num=3, out=tmp_path / "i", endpoint=engine.endpoint, engine="bing",
              **{**FAST, "quiet": False})
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 4 and lines[0].startswith("cats: searching bing") and "3/3 saved" in lines[1], err


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_repaints_at_most_four_times_a_second():
    stream = FakeTerminal()
    progress = Progress(True, stream)
    start = time.monotonic()
    progress.start("begin")
    while time.monotonic() - start < 1.0:
        progress.update("working")
    progress.end("done")
    elapsed = time.monotonic() - start
    assert stream.getvalue().count("\r") <= 2 + elapsed * 4 + 1 and stream.getvalue().endswith("done   \n")


@pytest.mark.parametrize("enabled,expected", [(True, "begin\ndone\n"), (False, "")])
def test_progress_elsewhere_is_start_and_end_lines_only(enabled, expected):
    stream = io.StringIO()
    progress = Progress(enabled, stream)
    progress.start("begin")
    for _ in range(1000):
        progress.update("working")
    progress.end("done")
    assert stream.getvalue() == expected


# ---------------------------------------------------------------- 8. Unicode keywords, hostile keywords

@pytest.mark.parametrize("keyword,slug", [
    ("日本語", "日本語"), ("кошка", "кошка"), ("café", "café"), ("Café", "café"), ("CAFE\u0301", "café"),
    ("Straße", "strasse"), ("../x", "x"), ("a/b", "a-b"), (".hidden", "hidden"), ("\x00cats", "cats"),
    ("cats\u202e\u200bdogs", "cats-dogs"), ("a..b", "a-b"), ("_x", "x"), ("x" * 200, "x" * 64),
])
def test_keywords_keep_their_letters_and_nothing_else(keyword, slug):
    assert slugify(keyword) == slug


@pytest.mark.parametrize("keyword", ["\x00", "🐱🐶", "..", "../..", " \t", "_", "\u0301"])
def test_keywords_without_letters_or_digits_are_refused(keyword):
    with pytest.raises(CamkitError, match="empty folder name"):
        slugify(keyword)


def test_long_keywords_fit_any_file_system():
    slug = slugify("\U00020000" * 200)  # a CJK letter of 4 UTF-8 bytes
    assert len(slug) <= 64 and len(slug.encode()) <= 200


@pytest.mark.parametrize("keywords", [["café", "Café"], ["café", "cafe\u0301"]])
def test_keywords_that_differ_only_in_case_or_normalisation_clash(engine, tmp_path, keywords):
    with pytest.raises(CamkitError, match="same folder 'café'"):
        crawl(keywords, max_num=1, out=tmp_path / "i", endpoint=engine.endpoint, **FAST)


def test_unicode_keywords_crawl_into_their_own_folders(engine, tmp_path):
    for i, kw in enumerate(("日本語", "кошка")):
        engine.result(kw, engine.add(f"/img/u{i}.jpg", encode(smooth_image(1400 + i))))
    out = tmp_path / "i"
    summaries = crawl(["日本語", "кошка"], max_num=1, out=out, endpoint=engine.endpoint, engine="bing", **FAST)
    assert [s.saved for s in summaries] == [1, 1]
    assert files_on_disk(out) == {"日本語/000001.jpg", "кошка/000001.jpg"}


# ---------------------------------------------------------------- an output folder camkit cannot write

@pytest.mark.parametrize("where", ["proc", "under_a_file", "class_is_a_file", "manifest_is_a_folder"])
def test_an_unwritable_output_folder_is_a_one_line_error(engine, tmp_path, where):
    out = tmp_path / "images"
    if where == "proc":
        out = Path("/proc/camkit-crawl-test")
    elif where == "under_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "images"
    elif where == "class_is_a_file":
        out.mkdir()
        (out / "cats").write_text("x")
    else:
        (out / "manifest.jsonl").mkdir(parents=True)
    with pytest.raises(CamkitError, match="^cannot ") as caught:
        crawl(["cats"], max_num=1, out=out, endpoint=engine.endpoint, **FAST)
    one_line_error(caught)


def test_the_cli_exits_2_with_one_error_line_when_nothing_is_saved(cli, tmp_path):
    code, out, err = cli("crawl", "cats", "--max-num", "2", "--out", tmp_path / "o", "--engine", "bing",
                         "--endpoint", f"http://127.0.0.1:{free_port()}", "--timeout", "1")
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and errors == ["error: no images saved for 'cats': bing: connection refused to the search "
                                    "page (2 pages)"] and err.endswith(errors[0] + "\n"), err
    assert "\r" not in err and len(err.splitlines()) == 3  # start and end of the one stage, then the error


# ---------------------------------------------------------------- credits from an edited manifest

HOSTILE_HTML = "<img src=x onerror=alert(1)>"


@pytest.fixture
def hostile_credits(tmp_path):
    """A folder whose manifest gives HTML in every credit field, the licence included."""
    out = tmp_path / "images"
    (out / "cats").mkdir(parents=True)
    data = encode(smooth_image(700))
    (out / "cats" / "000001.jpg").write_bytes(data)
    write_manifest(out, {"keyword": "cats", "slug": "cats", "engine": "bing", "url": "http://a.test/1.jpg",
                         "status": "ok", "file": "cats/000001.jpg", **hashes(data), "license": HOSTILE_HTML,
                         "creator": HOSTILE_HTML, "license_url": f"https://a.test/{HOSTILE_HTML}",
                         "source_page": f"https://a.test/{HOSTILE_HTML}"})
    return out


def test_credits_markdown_escapes_every_field_the_licence_counts_included(cli, hostile_credits):
    code, out, err = cli("credits", hostile_credits)
    assert code == 0, err
    assert "<img" not in out and "onerror=alert(1)&gt;" in out
    assert out.rstrip().splitlines()[-1] == "1 &lt;img src=x onerror=alert(1)&gt;"


def test_the_report_section_escapes_every_credit_field(hostile_credits):
    from camkit.report import crawl_credits

    page = crawl_credits(hostile_credits)
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_verify_sets_an_image_over_the_size_cap_aside_unread(tmp_path):
    import tracemalloc

    from camkit.core.images import MAX_IMAGE_BYTES

    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "1.jpg").write_bytes(encode(smooth_image(800)))
    with open(tmp_path / "cats" / "2.png", "wb") as f:   # sparse: no disk used
        f.truncate(MAX_IMAGE_BYTES + 1)
    tracemalloc.start()
    try:
        summary = verify(tmp_path, min_size=32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.rejected == {"too_large": 1} and summary.kept == 1
    assert (tmp_path / "_rejected" / "too_large" / "cats" / "2.png").is_file()
    assert peak < 50_000_000
