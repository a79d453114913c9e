"""camkit.data.quality: blank, tiny-content and extreme-aspect images, and near-twins across the
train / validation split, on generated bad images (thresholds measured in docs/benchmarks.md)."""

import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from camkit.core.images import open_rgb
from camkit.crawl import phash
from camkit.data.quality import findings, leaks, measure
from camkit.train.run import read_valid


def drawing(w=96, h=96, seed=0):
    """A clip-art-like image: coloured shapes on white."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        draw.ellipse([x0, y0, x0 + 20, y0 + 20], fill=tuple(int(v) for v in rng.integers(0, 200, 3)))
    return img


def saved(img, tmp_path, name="x.png"):
    """Through the file and camkit's decode, as the ranking sees it (alpha composited on white)."""
    img.save(tmp_path / name)
    return open_rgb(tmp_path / name)


def tiny_transparent():
    img = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle([148, 148, 150, 150], fill=(200, 0, 0, 255))
    return img


def near_constant():
    rng = np.random.default_rng(1)
    return Image.fromarray(np.clip(rng.normal(128, 0.8, (64, 64, 3)), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("make, finding", [
    (lambda: Image.new("RGB", (80, 80), (40, 40, 40)), "blank or near-constant"),
    (near_constant, "blank or near-constant"),
    (tiny_transparent, "tiny content"),
    (lambda: drawing(600, 60), "extreme aspect ratio"),
])
def test_generated_bad_images_are_found(tmp_path, make, finding):
    assert finding in findings(measure(saved(make(), tmp_path)))


@pytest.mark.parametrize("w, h", [(96, 96), (160, 96), (96, 300)])
def test_an_ordinary_drawing_has_no_finding(tmp_path, w, h):
    assert findings(measure(saved(drawing(w, h), tmp_path))) == ()


def test_aspect_is_cleanvisions_min_ratio(tmp_path):
    assert measure(saved(drawing(200, 50), tmp_path)).aspect == pytest.approx(0.25)


def test_a_twin_across_the_split_leaks_and_one_on_the_same_side_does_not():
    a, b = phash(drawing(seed=1)), phash(drawing(seed=2))
    got = leaks([a, a, b, b, phash(drawing(seed=3))], [True, False, False, False, True])
    assert got.tolist() == [True, True, False, False, False]


def test_rank_reports_a_duplicate_across_the_runs_split(tiny_run, canvas_dir, tmp_path):
    from camkit.clean import rank

    data = tmp_path / "data"
    shutil.copytree(canvas_dir, data)
    held = read_valid(tiny_run, None, data)[0].file
    shutil.copy(held, held.with_name("copy-of-valid.png"))    # not in valid.json: a training image
    flagged = {s.rel for s in rank(tiny_run, data=data) if "near-duplicate across train/valid" in s.quality}
    rel = held.relative_to(data).as_posix()
    assert flagged >= {rel, rel.replace(held.name, "copy-of-valid.png")}
