"""The course's whole loop on a crawled folder: crawl two keywords (a loopback engine) -> train ->
predict -> clean (apply, noted in the crawl manifest, undo) -> app -> Space, each step reading
what the one before wrote."""

import json

import numpy as np
import pytest
from PIL import Image

from fake_engine import encode
from test_crawl import FAST, manifest


def tinted(seed: int, channel: int) -> Image.Image:
    """Noise with one colour channel raised: red vs blue is learnt in one epoch."""
    rng = np.random.default_rng(seed)
    a = rng.normal(100, 35, (48, 48, 3))
    a[..., channel] += 90
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def crawled(tmp_path_factory):
    from camkit.crawl import crawl
    from fake_engine import FakeEngine

    out = tmp_path_factory.mktemp("crawled") / "images"
    with FakeEngine() as engine:
        for name, channel in (("red apple", 0), ("blue berry", 2)):
            engine.result(name, *(engine.add(f"/{name[:3]}{i}.jpg", encode(tinted(100 * channel + i, channel)))
                                  for i in range(14)))
        crawl(["red apple", "blue berry"], max_num=14, out=out, endpoint=engine.endpoint, engine="bing", **FAST)
    return out


@pytest.fixture(scope="module")
def crawled_run(crawled, tmp_path_factory):
    from camkit.train.loop import train

    out = tmp_path_factory.mktemp("crawled_run") / "run"
    train(crawled, arch="resnet18", epochs=2, size=32, bs=8, out=out, pretrained=False, aug="flip", quiet=True)
    return out


def test_crawl_gave_two_class_folders(crawled):
    folders = sorted(p.name for p in crawled.iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert folders == ["blue-berry", "red-apple"]
    assert all(len(list((crawled / f).glob("*.jpg"))) == 14 for f in folders)


def test_predict_on_crawled_images(crawled, crawled_run, cli):
    code, out, err = cli("predict", crawled / "red-apple", "--model", crawled_run, "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 14 and all(set(r["probs"]) == {"blue-berry", "red-apple"} for r in lines)
    assert sum(r["pred"] == "red-apple" for r in lines) >= 12      # the colour is learnt


def test_clean_moves_are_noted_in_the_crawl_manifest_and_undone(crawled, crawled_run, cli, tmp_path):
    victim = sorted((crawled / "blue-berry").glob("*.jpg"))[0]
    rel = victim.relative_to(crawled).as_posix()
    decisions = tmp_path / "decisions.json"
    decisions.write_text(json.dumps({"version": 1, "decisions": {rel: "relabel:red-apple"}}))
    before = victim.read_bytes()
    code, out, err = cli("clean", crawled_run, "--apply", decisions, "--json")
    assert code == 0, err
    [move] = [json.loads(line) for line in out.splitlines()]
    moved = crawled / move["to"]
    assert move["to"].startswith("red-apple/") and moved.name != victim.name   # a free name: 000001.jpg is taken
    assert not victim.exists() and moved.read_bytes() == before
    assert manifest(crawled)[-1] == {**manifest(crawled)[-1], "status": "relabelled", "moved_from": rel,
                                     "file": move["to"]}
    code, _, err = cli("clean", crawled_run, "--undo")
    assert code == 0, err
    assert victim.read_bytes() == before and not moved.exists()


def test_app_and_space_on_the_crawled_run(crawled, crawled_run, tmp_path):
    pytest.importorskip("gradio", reason="camkit[app] (gradio) is not installed")
    from camkit.app import CamApp
    from camkit.share.space import export_space

    answer = CamApp(crawled_run).explain(sorted((crawled / "red-apple").glob("*.jpg"))[-1])
    assert max(answer.probs, key=answer.probs.get) == "red-apple"
    space = export_space(crawled_run, tmp_path / "space")
    assert "red-apple vs blue-berry" in (space / "README.md").read_text() or \
           "blue-berry vs red-apple" in (space / "README.md").read_text()
