"""One self-contained HTML page per run: data, training, evaluation and CAMs.

Every image is embedded as a data URI and there is no external script or stylesheet, so the
file opens from disk with no server and no network. A small inline script records how many
images failed to decode (`data-broken-images` on <body>), which the browser test reads.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from pathlib import Path

from camkit.errors import CamkitError

TOP_LOSSES = 8
GALLERY = 12


def _uri(image) -> str:
    """PIL image or PNG path -> data URI."""
    if isinstance(image, (str, Path)):
        data = Path(image).read_bytes()
    else:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _img(image, alt: str, height: int | None = None) -> str:
    style = f" style='height:{height}px'" if height else ""
    return f"<img src='{_uri(image)}' alt='{html.escape(alt)}'{style}>"


def _thumb(path: str | Path, side: int = 96):
    from camkit.images import open_rgb

    img = open_rgb(path)
    img.thumbnail((side, side))
    return img


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def summarize(run_dir: str | Path) -> dict:
    """The numbers behind the report (what `camkit report --json` prints)."""
    return _read_run(run_dir)[0]


def _read_run(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """(summary, validation predictions) from one read of the run folder."""
    import csv

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CamkitError(f"run folder '{run_dir}' does not exist")
    meta_path, history_path = run_dir / "model.json", run_dir / "history.csv"
    if not meta_path.exists() and not history_path.exists():
        raise CamkitError(f"'{run_dir}' has no model.json and no history.csv: not a camkit run")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    history = list(csv.DictReader(history_path.read_text().splitlines())) if history_path.exists() else []
    valid = json.loads((run_dir / "valid.json").read_text()) if (run_dir / "valid.json").exists() else []
    classes = meta.get("classes", sorted({v["label"] for v in valid}))
    cm = meta.get("confusion")
    per_class = []
    if cm:
        for i, name in enumerate(classes):
            tp = cm[i][i]
            predicted = sum(row[i] for row in cm)
            actual = sum(cm[i])
            per_class.append({"class": name, "valid images": actual,
                              "precision": round(tp / predicted, 4) if predicted else None,
                              "recall": round(tp / actual, 4) if actual else None})
    missing = [name for name, p in (("model.json", meta_path), ("history.csv", history_path),
                                    ("valid.json", run_dir / "valid.json")) if not p.exists()]
    return {"run": str(run_dir), "complete": bool(meta.get("complete")) and not missing, "missing": missing,
            "summary": meta.get("summary", {}), "classes": classes, "per_class": per_class,
            "confusion": cm, "history": history}, valid


def build(run_dir: str | Path, cams_dir: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Write `run_dir/report.html` (or `out`) from whatever the run folder holds."""
    from camkit.cam import explain

    run_dir = Path(run_dir)
    info, valid = _read_run(run_dir)
    s = info["summary"]
    parts = [f"<h1>camkit report — {html.escape(run_dir.name)}</h1>"]
    if not info["complete"]:
        parts.append("<p class='warn' id='incomplete'>Incomplete run: training was interrupted or files are "
                     f"missing ({html.escape(', '.join(info['missing']) or 'model.json says so')}). "
                     "This report shows what exists.</p>")

    # dataset
    parts.append("<section id='dataset'><h2>Dataset</h2>")
    if s:
        parts.append(f"<p>{s.get('n_train', '?')} training and {s.get('n_valid', '?')} validation images, "
                     f"classes: {html.escape(', '.join(info['classes']))}.</p>")
        if s.get("skipped"):
            parts.append(f"<p>Skipped unreadable files: {len(s['skipped'])}</p>")
    manifest = _crawl_manifest(valid)
    if manifest:
        parts.append("<h3>Crawl</h3>" + _table(manifest))
    for cls in info["classes"]:
        files = [v["file"] for v in valid if v["label"] == cls and Path(v["file"]).exists()][:8]
        if files:
            parts.append(f"<div class='strip'><b>{html.escape(cls)}</b> "
                         + "".join(_img(_thumb(f), cls, 72) for f in files) + "</div>")
    parts.append("</section>")

    # training
    parts.append("<section id='training'><h2>Training</h2>")
    if s:
        parts.append(f"<p>arch <b>{html.escape(str(s.get('arch')))}</b>, head {html.escape(str(s.get('head')))}, "
                     f"output stride {s.get('stride')}, pretrained weights: {'yes' if s.get('pretrained') else 'no'}, "
                     f"device {html.escape(str(s.get('device')))} ({html.escape(str(s.get('precision', 'fp32')))}); "
                     f"{s.get('epochs')} epochs in "
                     f"{s.get('train_seconds')} s ({s.get('images_per_sec')} images/s).</p>")
    if (run_dir / "loss.png").exists():
        parts.append(_img(run_dir / "loss.png", "loss curves"))
    parts.append(_table(info["history"]) + "</section>")

    # evaluation
    parts.append("<section id='evaluation'><h2>Evaluation</h2>")
    if s:
        parts.append(f"<p>Validation accuracy <b>{s.get('valid_accuracy', 0):.2%}</b>, "
                     f"loss {s.get('valid_loss')}.</p>")
    if (run_dir / "confusion.png").exists():
        parts.append(_img(run_dir / "confusion.png", "confusion matrix"))
    parts.append(_table(info["per_class"]))
    top = sorted((v for v in valid if Path(v["file"]).exists()), key=lambda v: -v["loss"])[:TOP_LOSSES]
    if top and (run_dir / "model.pth").exists() and info["summary"]:
        parts.append("<h3>Top losses (look at these to clean the data)</h3><div class='grid'>")
        with tempfile.TemporaryDirectory() as tmp:
            for v, e in zip(top, explain(run_dir, [v["file"] for v in top], out=tmp)):
                parts.append(_figure(v["file"], Path(tmp) / e.overlay,
                                     f"actual {v['label']}, predicted {v['pred']} ({v['prob']:.1%}), "
                                     f"loss {v['loss']:.3f}; {e.method} map"))
        parts.append("</div>")
    parts.append("</section>")

    # CAM gallery
    parts.append("<section id='cams'><h2>CAM gallery</h2>")
    cams_dir = Path(cams_dir) if cams_dir else run_dir / "cams"
    records = []
    if (cams_dir / "cams.jsonl").exists():
        records = [json.loads(line) for line in (cams_dir / "cams.jsonl").read_text().splitlines() if line]
    truth = {v["file"]: v["label"] for v in valid}
    wrong = [r for r in records if truth.get(r["image"], r["pred"]) != r["pred"]]
    right = [r for r in records if truth.get(r["image"], r["pred"]) == r["pred"]]
    sample = wrong[:GALLERY // 2] + right[:GALLERY - len(wrong[:GALLERY // 2])]
    if sample:
        parts.append(f"<p>{len(records)} images explained; {len(wrong)} predicted wrongly. Original | overlay.</p>"
                     "<div class='grid'>")
        for r in sample:
            if Path(r["image"]).exists() and r.get("overlay") and (cams_dir / r["overlay"]).exists():
                label = f" (actual {truth[r['image']]})" if r["image"] in truth else ""
                parts.append(_figure(r["image"], cams_dir / r["overlay"],
                                     f"{Path(r['image']).name}: {r['pred']} ({r['prob']:.1%}){label}, {r['method']}"))
        parts.append("</div>")
    else:
        parts.append("<p>No CAM run found (run <code>camkit cam ... --out RUN/cams</code>).</p>")
    parts.append(_methods_side_by_side(run_dir, cams_dir))
    if (run_dir / "cam_eval.json").exists():
        evaluation = json.loads((run_dir / "cam_eval.json").read_text())
        parts.append("<h3>Faithfulness</h3>" + _table([{"method": k, **v} for k, v in evaluation.items()]))
    parts.append("</section>")

    page = ("<!doctype html><html><head><meta charset='utf-8'><title>camkit report</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}"
            "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
            ".warn{background:#fee;border:1px solid #c66;padding:.6em}.strip img{margin:2px;vertical-align:middle}"
            "figure{display:inline-block;margin:.4em;border:1px solid #ddd;padding:.3em}"
            "figcaption{font-size:12px;max-width:260px}img{image-rendering:auto}</style></head>"
            "<body>" + "".join(parts) +
            "<script>window.addEventListener('load',function(){var b=0;document.querySelectorAll('img')"
            ".forEach(function(i){if(!i.complete||i.naturalWidth===0)b++});"
            "document.body.setAttribute('data-broken-images',b);"
            "document.body.setAttribute('data-images',document.images.length)});</script></body></html>")
    target = Path(out) if out else run_dir / "report.html"
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(page)
    tmp.replace(target)
    return target


def _figure(original: str | Path, overlay: str | Path, caption: str) -> str:
    """Original | overlay side by side, with a caption."""
    return (f"<figure>{_img(_thumb(original, 160), 'original', 120)}{_img(_thumb(overlay, 160), 'overlay', 120)}"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _methods_side_by_side(run_dir: Path, cams_dir: Path, n_images: int = 4) -> str:
    """When several CAM outputs exist (RUN/cams*, e.g. `camkit cam --method gradcam --out
    RUN/cams-gradcam`), the same images under each method, in one row each."""
    by_method: dict[str, dict[str, tuple[Path, dict]]] = {}
    for folder in sorted({cams_dir, *run_dir.glob("cams*")}):
        jsonl = folder / "cams.jsonl"
        if folder.is_dir() and jsonl.exists():
            for line in jsonl.read_text().splitlines():
                r = json.loads(line)
                by_method.setdefault(r["method"], {})[r["image"]] = (folder, r)
    if len(by_method) < 2:
        return ""
    common = sorted(set.intersection(*(set(v) for v in by_method.values())))[:n_images]
    if not common:
        return ""
    methods = sorted(by_method)
    rows = []
    for image in common:
        cells = [_img(_thumb(image, 120), "original", 100)]
        for m in methods:
            folder, r = by_method[m][image]
            if r.get("overlay") and (folder / r["overlay"]).exists():
                cells.append(_img(_thumb(folder / r["overlay"], 120), m, 100))
        rows.append(f"<div class='strip'><b>{html.escape(Path(image).name)}</b> " + "".join(cells) + "</div>")
    return ("<h3 id='methods'>Methods side by side</h3><p>original, " + ", ".join(map(html.escape, methods))
            + "</p>" + "".join(rows))


def _crawl_manifest(valid: list[dict]) -> list[dict]:
    """Accepted / rejected counts by reason from a crawl's manifest.jsonl above the images."""
    if not valid:
        return []
    root = Path(valid[0]["file"]).parent.parent
    manifest = root / "manifest.jsonl"
    if not manifest.exists():
        return []
    counts: dict[tuple[str, str], int] = {}
    for line in manifest.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        key = (str(rec.get("keyword", "?")), str(rec.get("status", "?")))
        counts[key] = counts.get(key, 0) + 1
    return [{"keyword": k, "status": st, "count": n} for (k, st), n in sorted(counts.items())]
