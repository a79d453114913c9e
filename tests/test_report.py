import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from camkit.errors import CamkitError
from camkit.explain import cam
from camkit.report import build, report, summarize
from camkit.train.run import read_valid
from helpers import with_verdict

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--virtual-time-budget=5000"]


@pytest.fixture(scope="module")
def report_path(tiny_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("rep") / "run"
    shutil.copytree(tiny_run, run)
    cam([v.file for v in read_valid(run)], model=run, out=run / "cams", quiet=True)
    return report(run)


def test_report_is_self_contained(report_path):
    page = report_path.read_text()
    for section in ("dataset", "training", "evaluation", "cams"):
        assert f"id='{section}'" in page
    srcs = re.findall(r"src='([^']*)'", page)
    assert len(srcs) > 10 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in page and "https://" not in page
    assert "Incomplete run" not in page


def test_methods_appear_side_by_side_when_several_were_run(report_path):
    run = report_path.parent
    valid = read_valid(run)[:3]
    cam([v.file for v in valid], model=run, method="gradcam++", out=run / "cams-gradcampp", quiet=True)
    page = build(run).read_text()
    assert "Methods side by side" in page and "gradcam++" in page
    row = page[page.index("id='methods'"):]
    assert row.count("alt='cam'") == 3 and row.count("alt='gradcam++'") == 3


def test_summary_numbers_come_from_the_run(tiny_run):
    info = summarize(tiny_run)
    meta = json.loads((tiny_run / "model.json").read_text())
    assert info["complete"] and info["classes"] == meta["classes"] and len(info["history"]) == 2
    cm = meta["confusion"]
    assert info["per_class"][0]["recall"] == round(cm[0][0] / sum(cm[0]), 4)


def test_partial_run_is_reported_as_incomplete(tiny_run, tmp_path):
    run = tmp_path / "partial"
    run.mkdir()
    shutil.copy(tiny_run / "history.csv", run)
    page = build(run).read_text()
    assert "Incomplete run" in page and "model.json" in page


def test_folder_without_model_or_history_is_an_error(tmp_path, cli):
    with pytest.raises(CamkitError, match="no model.json and no history.csv"):
        build(tmp_path)
    code, out, err = cli("report", tmp_path / "nothing")
    assert code == 2 and "does not exist" in err and err.count("\n") == 1


def test_report_cli_json(tiny_run, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    code, out, err = cli("report", run, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["report"].endswith("report.html") and data["model"]["arch"] == "resnet18"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package 'chromium' is not installed")
def test_report_renders_in_headless_chromium(report_path, tmp_path):
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          report_path.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    images = int(re.search(r'data-images="(\d+)"', body).group(1))
    assert images > 10 and 'data-broken-images="0"' in body
    for heading in ("Dataset", "Training", "Evaluation", "CAM gallery"):
        assert f"<h2>{heading}</h2>" in dom
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1200,1600",
                    f"--screenshot={shot}", report_path.resolve().as_uri()], capture_output=True, timeout=120)
    from PIL import Image

    img = Image.open(shot).convert("L")
    assert img.size == (1200, 1600) and len(set(img.getdata())) > 50  # a real page, not blank


def test_crawl_manifest_rejects_are_summarised(tiny_run, canvas_dir, tmp_path):
    manifest = canvas_dir / "manifest.jsonl"
    lines = [{"keyword": "bag", "status": "ok"}, {"keyword": "bag", "status": "duplicate"},
             {"keyword": "bag", "status": "duplicate"}, {"keyword": "trouser", "status": "truncated"}]
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines) + "{cut by a kill")
    try:
        page = build(tiny_run, out=tmp_path / "r.html").read_text()
    finally:
        manifest.unlink()
    crawl = page[page.index("<summary>Crawl: 4 files"):]
    crawl = crawl[:crawl.index("</details>")]
    assert "<td>bag</td><td>duplicate</td><td>2</td>" in crawl and "<td>trouser</td><td>truncated</td><td>1</td>" in crawl


def test_credits_come_from_the_data_folder_given_with_data(tiny_run, canvas_dir, tmp_path):
    """`camkit report RUN --data DIR`: the images are read from DIR, and so are the credits and
    the crawl summary (they were read from model.json's data root, where this moved dataset's
    manifest is not)."""
    moved = shutil.copytree(canvas_dir, tmp_path / "moved")
    (moved / "manifest.jsonl").write_text(json.dumps(
        {"keyword": "bag", "status": "ok", "file": "bag/0000.png", "sha256": "ab" * 32, "phash": "0f0f0f0f0f0f0f0f",
         "creator": "Ada Moved", "license": "CC BY 4.0"}) + "\n")
    page = build(tiny_run, out=tmp_path / "r.html", data_root=moved).read_text()
    credits = page[page.index("id='credits'"):]
    assert "Ada Moved" in credits and "CC BY 4.0 1" in credits
    assert "Ada Moved" not in build(tiny_run, out=tmp_path / "plain.html").read_text()


def test_top_losses_show_the_predicted_and_the_actual_class_maps(report_path):
    from camkit.explain import read_cams
    from camkit.report import TOP_LOSSES_ACTUAL_DIR, TOP_LOSSES_DIR

    run = report_path.parent
    pred, actual = read_cams(run / TOP_LOSSES_DIR), read_cams(run / TOP_LOSSES_ACTUAL_DIR)
    labels = {str(v.file.resolve()): v.label for v in read_valid(run)}
    assert pred and [e.image for e in actual] == [e.image for e in pred]
    assert all(e.target == labels[e.image] for e in actual)
    section = report_path.read_text().split("id='evaluation'")[1].split("</section>")[0]
    assert section.count("evidence for") == len(pred)


# ---------------------------------------------------------------- the verdict leads; trust never vouches for a useless model

def _scores(**extra) -> dict:
    keys = ("road", "deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence", "retained_confidence",
            "sanity_head", "sanity_last_stage")
    return {"images": 4, **{k: 0.2 for k in keys}, **extra}


def _with_trust_and_verdict(run: Path, confusion: list[list[int]]) -> None:
    """A cam-eval result in which no class is flagged, and model.json's verdict for `confusion`."""
    per_class = {"bag": _scores(), "trouser": _scores()}
    trust = {"split": "valid", "images": 8, "methods": {"cam": _scores(sanity_passed=True, per_class=per_class)},
             "absence": {"flagged": [], "per_class": {c: {"score": 0.3, "method": "cam"} for c in per_class}}}
    (run / "cam_trust.json").write_text(json.dumps(trust))
    with_verdict(run, confusion)


@pytest.mark.parametrize("confusion,vouches,says", [
    ([[8, 0], [0, 8]], True, "Every class is recognised by evidence of its own"),
    ([[4, 4], [4, 4]], False, "No: the maps of an unusable model explain nothing."),
    ([[20, 0], [5, 3]], False, "trouser: recognised in fewer than half of the held-out images"),
])
def test_the_trust_section_vouches_only_for_a_usable_model_and_its_recognised_classes(run_copy, confusion,
                                                                                       vouches, says):
    _with_trust_and_verdict(run_copy, confusion)
    page = build(run_copy).read_text()
    trust = page[page.index("id='trust'"):page.index("id='cams'")]
    assert ("evidence of its own: erasing" in trust) == vouches and says in trust


def test_the_report_leads_with_the_verdict_and_folds_long_tables(run_copy):
    _with_trust_and_verdict(run_copy, [[4, 4], [4, 4]])
    page = build(run_copy).read_text()
    order = [page.index(k) for k in ("id='verdict'", "id='evaluation'", "id='trust'", "id='training'", "id='dataset'")]
    assert order == sorted(order)
    verdict = page[page.index("id='verdict'"):page.index("id='evaluation'")]
    assert "data-status='unusable'" in verdict and "not better than always answering" in verdict
    assert "<details><summary>Per-epoch history (2 epochs)</summary>" in page
    assert "always answering 'bag' scores 50.00%" in page[page.index("id='evaluation'"):]


def test_embedded_images_are_re_encoded_without_metadata(tmp_path):
    """A page meant to be shared carries pixels, not the author's EXIF or PNG text chunks."""
    import base64

    from PIL import Image, PngImagePlugin

    from camkit.core.render import png_data_uri

    exif = Image.Exif()
    exif[0x0131] = "/home/alice/secret-tool"
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "/home/alice/holiday")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "meta.png", exif=exif, pnginfo=text)
    raw = base64.b64decode(png_data_uri(tmp_path / "meta.png").split(",", 1)[1])
    assert b"alice" not in raw.lower() and raw.startswith(b"\x89PNG")
