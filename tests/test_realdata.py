"""Real clip art (openclipart-png) through the user's path: served by the loopback Openverse
engine, fetched by camkit's crawler into class folders (tests/realdata.py). Skipped without the
package."""

from __future__ import annotations

import json

import numpy as np
import pytest
import realdata
from realdata import CATEGORIES, SETS, copy_set, counts, crawl_set, needs_openclipart

from camkit.core.images import list_images, open_rgb

pytestmark = needs_openclipart
clip_pair = realdata.clip_pair    # the shared fixture: vehicles / sports copied at 64 px


@pytest.fixture(scope="module")
def crawled(tmp_path_factory):
    return crawl_set("vehicles-sports", tmp_path_factory.mktemp("crawl") / "images", per_class=20)


def test_every_set_reads_only_allowed_categories():
    for pair in SETS.values():
        assert len(pair) == 2 and pair[0].folder != pair[1].folder
        for c in pair:
            assert c.folder.split("/")[0] in CATEGORIES


@pytest.mark.parametrize("name", list(SETS))
def test_every_set_has_60_to_150_images_a_class(name):
    for c in SETS[name]:
        assert 60 <= len(c.files()) <= 150, c


def test_the_crawl_fills_each_class_folder_with_real_decodable_images(crawled):
    for cls in ("vehicles", "sports"):
        files = list_images(crawled / cls)
        assert len(files) == 20
        for f in files:
            pixels = np.asarray(open_rgb(f))
            assert min(pixels.shape[:2]) >= 64 and pixels.std() > 0      # real pictures, not blanks
    assert counts(crawled)["vehicles"]["saved"] == 20


def test_the_manifest_keeps_each_images_public_domain_licence(crawled):
    records = [json.loads(line) for line in (crawled / "manifest.jsonl").read_text().splitlines()]
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) == 40
    assert {r["license_code"] for r in ok} == {"pdm"} and {r["license"] for r in ok} == {"Public Domain Mark 1.0"}
    assert all(r["engine"] == "openverse" and r["source_page"].startswith("https://openclipart.org/") for r in ok)


def test_a_copied_set_loads_as_a_dataset(clip_pair):
    from camkit.data.folders import load_folder

    data = load_folder(clip_pair, 32)
    assert data.classes == ["sports", "vehicles"] and len(data.labels) >= 44    # 24 a class, less exact twins


def test_a_copy_is_reused_only_for_the_same_request(tmp_path):
    out = copy_set("clothing-music", tmp_path / "a", per_class=4, size=32)
    first = sorted(p.stat().st_mtime_ns for p in out.rglob("*.png"))
    assert copy_set("clothing-music", out, per_class=4, size=32) == out
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*.png")) == first
    copy_set("clothing-music", out, per_class=3, size=32)
    assert len(list_images(out)) <= 6


def test_the_stand_ins_pretraining_never_sees_an_evaluation_image():
    from realdata import digest, pretraining_classes, reserved_for_evaluation

    classes = pretraining_classes()
    contents, names = reserved_for_evaluation()
    files = [f for fs in classes.values() for f in fs]
    assert len(classes) >= 25 and len(files) >= 2500
    assert all(folder.split("/")[0] in CATEGORIES for folder in classes)
    assert not any(f.name.lower() in names or digest(f) in contents for f in files)
