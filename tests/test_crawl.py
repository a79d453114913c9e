"""The crawler against a real HTTP server on 127.0.0.1 speaking Bing's result format."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

import camkit.crawl as crawl_mod
import camkit.crawl.policy as policy_mod
from camkit.crawl import crawl, slugify, verify
from camkit.errors import CamkitError
from fake_engine import FakeEngine, encode, noise_image, png_bomb, smooth_image

FAST = dict(timeout=1.0, retries=1, backoff=0.05, idle_timeout=10, total_timeout=60, quiet=True,
            threads=4, min_size=32)


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def files_on_disk(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.glob("*/*") if p.is_file() and not p.name.startswith(".")
            and p.parts[-2] != "_rejected" and p.suffix != ".jsonl"}


@pytest.fixture
def private_resolver(monkeypatch):
    """Stub DNS: '*.internal.test' resolves to a private address, 127.0.0.1 stays itself.
    Nothing is ever sent to the private address: the crawler must refuse before connecting."""
    real = policy_mod.resolve

    def fake(host):
        return ["10.20.30.40"] if host.endswith("internal.test") else real(host)

    monkeypatch.setattr(policy_mod, "resolve", fake)


@pytest.fixture
def faulty_results(engine, private_resolver):
    """One good image of each format, and one of every fault."""
    e = engine
    good = {
        "a.jpg": (encode(smooth_image(1)), "image/jpeg"),
        "b.png": (encode(smooth_image(2), "PNG"), "image/png"),
        "c.gif": (encode(smooth_image(3).convert("P"), "GIF"), "image/gif"),
        "d.webp": (encode(smooth_image(4), "WEBP"), "image/webp"),
        "e.jpg": (encode(smooth_image(5)), "image/jpeg"),
    }
    urls = {name: e.add(f"/img/{name}", body, ctype) for name, (body, ctype) in good.items()}
    jpeg = encode(smooth_image(1))
    faults = {
        "missing": e.url("/img/missing.jpg"),
        "http_500": e.add("/img/err.jpg", b"oops", "text/plain", status=500),
        "timeout": e.add("/img/slow.jpg", encode(smooth_image(9)), delay=3.0),
        "truncated": e.add("/img/trunc.jpg", encode(smooth_image(10))[:1500]),
        "html": e.add("/img/page.jpg", b"<html><body>hi</body></html>", "text/html"),
        "html_lying": e.add("/img/lying.jpg", b"<html><body>hi</body></html>", "image/jpeg"),
        "bomb": e.add("/img/bomb.png", png_bomb(), "image/png"),
        "too_large": e.add("/img/big.jpg", encode(noise_image(11), quality=95), length=False),
        "duplicate": e.add("/img/copy.jpg", jpeg),
        "near_duplicate": e.add("/img/resized.jpg", encode(smooth_image(1).resize((320, 240)), quality=80)),
        "redirect_loop": e.add("/img/loop.jpg", b"", status=302, headers={"Location": "/img/loop.jpg"}),
        "private": "http://cdn.internal.test/cat.jpg",
        "tiny": e.add("/img/tiny.png", encode(smooth_image(12, (16, 16)), "PNG"), "image/png"),
    }
    e.result("cats", urls["a.jpg"], faults["missing"], urls["b.png"], faults["http_500"], faults["timeout"],
             faults["truncated"], urls["c.gif"], faults["html"], faults["html_lying"], faults["bomb"],
             faults["too_large"], faults["duplicate"], faults["near_duplicate"], faults["redirect_loop"],
             urls["d.webp"], faults["private"], faults["tiny"], urls["e.jpg"])
    return e, urls, faults


def test_only_valid_unique_images_land(faulty_results, tmp_path):
    e, urls, faults = faulty_results
    out = tmp_path / "images"
    [summary] = crawl(["cats"], max_num=50, out=out, endpoint=e.endpoint, engine="bing", max_bytes="1MB", **FAST)
    assert summary.saved == 5, manifest(out)  # a.jpg b.png c.gif d.webp e.jpg
    records = {r["url"]: r for r in manifest(out)}
    expected = {faults["missing"]: "http_404", faults["http_500"]: "http_500", faults["timeout"]: "timeout",
                faults["truncated"]: "truncated", faults["html"]: "not_image_content_type",
                faults["html_lying"]: "not_an_image", faults["bomb"]: "too_many_pixels",
                faults["too_large"]: "too_large", faults["duplicate"]: "duplicate",
                faults["near_duplicate"]: "near_duplicate", faults["redirect_loop"]: "too_many_redirects",
                faults["private"]: "private_address", faults["tiny"]: "too_small"}
    assert {u: records[u]["status"] for u in expected} == expected
    assert all(records[u]["status"] == "ok" for u in urls.values())
    # the manifest matches the files on disk, and every file decodes completely
    ok = {r["file"] for r in records.values() if r["status"] == "ok"}
    assert ok == files_on_disk(out)
    for rel in ok:
        with Image.open(out / rel) as img:
            img.load()
        r = next(r for r in records.values() if r.get("file") == rel)
        assert img.size == (r["width"], r["height"]) and {"sha256", "phash", "bytes", "engine"} <= set(r)
    assert summary.rejected["duplicate"] == 1 and summary.timed_out is None
    assert e.hits.get("/img/loop.jpg", 0) <= 6  # the loop was cut, not followed forever


def test_no_thread_dies_and_the_crawl_ends(faulty_results, tmp_path):
    e, _, _ = faulty_results
    before = threading.active_count()
    start = time.monotonic()
    crawl(["cats"], max_num=50, out=tmp_path / "i", endpoint=e.endpoint, engine="bing", max_bytes="1MB", **FAST)
    assert time.monotonic() - start < 30
    time.sleep(0.5)
    assert threading.active_count() <= before + 1


def test_image_under_both_keywords_is_kept_out_of_both(engine, tmp_path):
    shared = engine.add("/img/shared.jpg", encode(smooth_image(50)))
    shared_again = engine.add("/img/shared2.jpg", encode(smooth_image(50)))
    cats = [engine.add(f"/img/c{i}.jpg", encode(smooth_image(100 + i))) for i in range(3)]
    dogs = [engine.add(f"/img/d{i}.jpg", encode(smooth_image(200 + i))) for i in range(3)]
    engine.result("cats", shared, *cats)
    engine.result("dogs", *dogs, shared_again)
    out = tmp_path / "images"
    s_cats, s_dogs = crawl(["cats", "dogs"], max_num=10, out=out, endpoint=engine.endpoint, engine="bing", **FAST)
    assert s_cats.saved == 3 and s_dogs.saved == 3
    assert len(list((out / "cats").iterdir())) == 3 and len(list((out / "dogs").iterdir())) == 3
    moved = list((out / "_rejected" / "ambiguous").rglob("*.jpg"))
    assert len(moved) == 1  # moved aside, not deleted
    statuses = [r["status"] for r in manifest(out)]
    assert statuses.count("ambiguous") == 2


def test_rerun_resumes_without_refetching(engine, tmp_path):
    urls = [engine.add(f"/img/{i}.jpg", encode(smooth_image(300 + i))) for i in range(12)]
    engine.result("cats", *urls)
    out = tmp_path / "images"
    assert crawl(["cats"], max_num=5, out=out, endpoint=engine.endpoint, **FAST)[0].saved == 5
    in_manifest = {r["url"] for r in manifest(out)}
    hits_before = {u: engine.hits.get(f"/img/{i}.jpg", 0) for i, u in enumerate(urls)}
    [again] = crawl(["cats"], max_num=8, out=out, endpoint=engine.endpoint, **FAST)
    assert again.saved == 8 and len(files_on_disk(out)) == 8
    refetched = [u for i, u in enumerate(urls) if u in in_manifest and engine.hits[f"/img/{i}.jpg"] > hits_before[u]]
    assert len(in_manifest) >= 5 and refetched == []
    assert len([r for r in manifest(out) if r["status"] == "ok"]) == 8


def test_kill_and_resume_ends_with_the_exact_count(tmp_path):
    with FakeEngine(latency=0.05) as engine:
        urls = [engine.add(f"/img/{i}.jpg", encode(smooth_image(400 + i))) for i in range(60)]
        engine.result("cats", *urls)
        out = tmp_path / "images"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
        proc = subprocess.Popen([sys.executable, "-m", "camkit.cli", "crawl", "cats", "--max-num", "40",
                                 "--out", str(out), "--endpoint", engine.endpoint, "--threads", "2",
                                 "--min-size", "32"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (out / "manifest.jsonl").exists() and len((out / "manifest.jsonl").read_text().splitlines()) >= 8:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = files_on_disk(out)
        assert 0 < len(partial) < 40
        for rel in partial:  # nothing half-written looks complete
            with Image.open(out / rel) as img:
                img.load()
        [summary] = crawl(["cats"], max_num=40, out=out, endpoint=engine.endpoint, **FAST)
    assert summary.saved == 40 and len(files_on_disk(out)) == 40
    assert not list((out / "cats").glob(".tmp-*"))
    ok = [r for r in manifest(out) if r["status"] == "ok"]
    assert len(ok) == 40 and len({r["url"] for r in ok}) == 40


def test_engine_that_returns_nothing_ends_quickly(engine, tmp_path):
    """...and says so: a crawl that saves nothing is an error, with the reason per engine."""
    start = time.monotonic()
    with pytest.raises(CamkitError, match="no images saved for 'nothing': bing: 0 results") as caught:
        crawl(["nothing"], max_num=5, out=tmp_path / "i", endpoint=engine.endpoint, **FAST)
    assert time.monotonic() - start < 15
    [summary] = caught.value.summaries
    assert summary.saved == 0


def test_auto_falls_back_to_the_next_engine(engine, tmp_path, monkeypatch):
    """bing finds nothing and openverse is not there (404), so auto moves on to baidu's JSON."""
    img = engine.add("/img/x.jpg", encode(smooth_image(7)))
    engine.add("/search/acjson", json.dumps({"data": [{"hoverURL": img}, {}]}).encode(), "application/json")
    [summary] = crawl(["zebra"], max_num=1, out=tmp_path / "i", engine="auto", endpoint=engine.endpoint, **FAST)
    assert summary.engines == ["bing", "openverse", "baidu"] and summary.saved == 1


@pytest.mark.parametrize("keyword,slug", [("../x", "x"), ("cats", "cats"), (".hidden", "hidden"),
                                          ("a/b\\c", "a-b-c"), ("Hot Dogs!", "hot-dogs")])
def test_keywords_become_safe_slugs(keyword, slug):
    assert slugify(keyword) == slug


def test_hostile_keywords_cannot_escape_the_output_folder(engine, tmp_path):
    out = tmp_path / "images"
    engine.result("../../escape", engine.add("/img/escape.jpg", encode(smooth_image(80))))
    crawl(["../../escape"], max_num=1, out=out, endpoint=engine.endpoint, **FAST)
    assert (out / "escape").is_dir() and not (tmp_path / "escape").exists()
    with pytest.raises(CamkitError, match="same folder"):
        crawl(["Cats", "cats!"], max_num=1, out=out, endpoint=engine.endpoint, **FAST)
    with pytest.raises(CamkitError, match="empty folder name"):
        crawl(["../.."], max_num=1, out=out, endpoint=engine.endpoint, **FAST)


def test_private_addresses_allowed_only_when_asked(engine, private_resolver, tmp_path, monkeypatch):
    assert crawl_mod.AddressPolicy(allow_private=True).check("http://x.internal.test/a.jpg") is None
    with pytest.raises(crawl_mod.Rejected, match="private_address"):
        crawl_mod.AddressPolicy().check("http://x.internal.test/a.jpg")
    with pytest.raises(crawl_mod.Rejected, match="private_address"):
        crawl_mod.AddressPolicy().check("http://169.254.169.254/latest/meta-data")
    with pytest.raises(crawl_mod.Rejected, match="private_address"):
        crawl_mod.AddressPolicy().check(engine.url("/img/a.jpg"))  # no --endpoint there: loopback refused
    crawl_mod.AddressPolicy([engine.endpoint]).check(engine.url("/img/a.jpg"))  # the endpoint's origin only


def test_max_side_resizes_and_images_are_rgb(engine, tmp_path):
    big = engine.add("/img/big.png", encode(smooth_image(60, (1200, 600)).convert("RGBA"), "PNG"), "image/png")
    engine.result("cats", big)
    out = tmp_path / "i"
    crawl(["cats"], max_num=1, out=out, endpoint=engine.endpoint, max_side=300, **FAST)
    [f] = files_on_disk(out)
    with Image.open(out / f) as img:
        assert img.size == (300, 150) and img.mode == "RGB"


def test_crawl_cli_errors(cli, tmp_path):
    for args, message in [
        (("crawl", "cats", "--engine", "altavista"), "'altavista' is not one of"),  # the CLI's Enum choice
        (("crawl", "cats", "--max-bytes", "lots"), "--max-bytes must look like"),
        (("crawl", "cats", "--endpoint", "ftp://x"), "--endpoint must be an http(s) URL"),
        (("crawl", "cats", "--max-num", "0"), "must be at least 1"),
    ]:
        code, out, err = cli(*args, "--out", tmp_path / "o")
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_crawl_cli_json_summary(engine, cli, tmp_path):
    engine.result("cats", engine.add("/img/a.jpg", encode(smooth_image(70))))
    code, out, err = cli("crawl", "cats", "--max-num", "1", "--out", tmp_path / "o", "--endpoint",
                         engine.endpoint, "--min-size", "32", "--json")
    assert code == 0, err
    [summary] = json.loads(out)
    assert summary["saved"] == 1 and summary["requested"] == 1 and summary["engines"] == ["bing"]


def test_verify_moves_rejects_aside_and_never_deletes(tmp_path):
    root = tmp_path / "data"
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
    smooth_image(1).save(root / "cats" / "a.jpg")
    smooth_image(1).save(root / "cats" / "a_copy.png")  # JPEG vs PNG pixels differ: near, not exact
    smooth_image(2).save(root / "cats" / "b.jpg")
    smooth_image(3).save(root / "dogs" / "c.jpg")
    smooth_image(2).resize((320, 240)).save(root / "dogs" / "b_big.jpg")
    (root / "dogs" / "junk.jpg").write_text("<html>")
    (root / "dogs" / "cut.jpg").write_bytes(encode(smooth_image(4))[:900])
    before = {p.name for p in root.rglob("*") if p.is_file()}
    summary = verify(root, min_size=32)
    assert summary.checked == 7 and summary.kept == 2
    assert summary.rejected == {"ambiguous": 2, "near_duplicate": 1, "not_an_image": 1, "truncated": 1}
    assert {p.name for p in (root / "cats").iterdir()} == {"a.jpg"}
    assert {p.name for p in (root / "dogs").iterdir()} == {"c.jpg"}
    after = {p.name for p in root.rglob("*") if p.is_file()} - {"verify.jsonl"}
    assert after == before


def test_the_ledger_notes_a_later_move_in_its_own_manifest_and_creates_none(tmp_path):
    """camkit clean tells the crawl's manifest of its moves through the ledger, which owns the format."""
    from camkit.crawl.ledger import MANIFEST, note_move, read_manifest

    assert note_move(tmp_path, "cleaned", "_rejected/cat/001.jpg", "cat/001.jpg", "t0") is False
    assert not (tmp_path / MANIFEST).exists()  # a folder no crawl made gains no manifest
    (tmp_path / MANIFEST).write_text('{"status": "ok", "file": "cat/001.jpg", "sha256": "ab", "phash": "0f"}\n{"cut')
    assert note_move(tmp_path, "relabelled", "dog/001.jpg", "cat/001.jpg", "t1") is True
    records = read_manifest(tmp_path)  # the cut line is mended, not glued to the new record
    assert records[-1] == {"status": "relabelled", "file": "dog/001.jpg", "moved_from": "cat/001.jpg", "time": "t1"}
    assert len(records) == 2 and (tmp_path / MANIFEST).read_text().count("\n") == 3
    with pytest.raises(ValueError, match="one of cleaned, relabelled, restored, not 'deleted'"):
        note_move(tmp_path, "deleted", "x.jpg", "cat/x.jpg", "t2")


def test_the_ledger_counts_statuses_for_the_report_without_checking_paths(tmp_path):
    """status_counts reads the same lines as read_manifest but opens no file they name, so a line
    read_manifest refuses (a path outside the folder) is still counted, and a non-object is not."""
    from camkit.crawl.ledger import MANIFEST, read_manifest, status_counts

    assert status_counts(tmp_path) == {}
    lines = [{"keyword": "cat", "status": "saved", "file": "/etc/passwd"}, {"keyword": "cat", "status": "small"},
             {"keyword": "cat", "status": "saved"}, {"status": "duplicate"}, [1, 2]]
    (tmp_path / MANIFEST).write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"cut')
    assert status_counts(tmp_path) == {("?", "duplicate"): 1, ("cat", "saved"): 2, ("cat", "small"): 1}
    assert list(status_counts(tmp_path)) == sorted(status_counts(tmp_path))
    with pytest.raises(CamkitError, match="line 1 is refused"):
        read_manifest(tmp_path)
