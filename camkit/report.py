"""One self-contained HTML page per run: data, training, evaluation and CAMs.

Every image is embedded as a data URI and there is no external script or stylesheet, so the
file opens from disk with no server and no network. A small inline script records how many
images failed to decode (`data-broken-images` on <body>), which the browser test reads.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from camkit.core.files import atomic_write
from camkit.core.images import open_rgb
from camkit.core.render import png_data_uri
from camkit.crawl.credits import credits, license_counts
from camkit.errors import CamkitError
from camkit.evaluate import rank_methods, trust_table
from camkit.explain import CAMS_JSONL, cam, read_cams
from camkit.train.run import (CONFUSION_PLOT, HISTORY, LOSS_PLOT, META, VALID, WEIGHTS, RunInfo, ValidRecord,
                              check_run_dir, read_cam_eval, read_history, read_info, read_valid)
from camkit.train.run import read_cam_trust, read_verdict
from camkit.train.run import data_root as data_root_of
from camkit.train.verdict import Verdict

TOP_LOSSES = 8
GALLERY = 12
TOP_LOSSES_DIR = "top_losses"
TOP_LOSSES_ACTUAL_DIR = "top_losses_actual"  # the same images, mapped for their actual class
PAGE_FILE = "report.html"


def _v(summary: dict, key: str, default: str = "?") -> str:
    """A summary field as escaped text (model.json may come from someone else)."""
    return html.escape(str(summary.get(key, default)))


def _pct(value) -> str:
    return f"{value:.2%}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def _img(image, alt: str, height: int | None = None) -> str:
    style = f" style='height:{height}px'" if height else ""
    return f"<img src='{png_data_uri(image)}' alt='{html.escape(alt)}'{style}>"


def _figure_file(path: Path, alt: str) -> str:
    """A run's figure embedded, a note when it is not a readable image, nothing when absent."""
    if not path.exists():
        return ""
    try:
        return _img(path, alt)
    except CamkitError:
        return f"<p class='warn'>{html.escape(path.name)} is not a readable image; not shown.</p>"


def _thumb(path: str | Path, side: int = 96):
    img = open_rgb(path)
    img.thumbnail((side, side))
    return img


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def summarize(run_dir: str | Path, data_root: str | Path | None = None) -> dict:
    """The numbers behind the report (what `camkit report --json` prints)."""
    return RunView.read(run_dir, data_root).numbers()


class RunView:
    """Everything the page shows, read once through the run module (nothing is computed here)."""

    def __init__(self, run_dir: Path, info: RunInfo | None, history: list[dict], valid: list[ValidRecord],
                 missing: list[str], notes: list[str], verdict: Verdict | None = None, root: Path | None = None):
        self.run_dir, self.info, self.history, self.valid = run_dir, info, history, valid
        self.missing, self.notes, self.verdict = missing, notes, verdict
        self.root = root   # the dataset: --data if given, else model.json's data root (None: unknown)

    @classmethod
    def read(cls, run_dir: str | Path, data_root: str | Path | None = None) -> "RunView":
        run_dir = check_run_dir(run_dir)
        missing = [n for n in (META, HISTORY, VALID) if not (run_dir / n).is_file()]
        if META in missing and HISTORY in missing:
            raise CamkitError(f"'{run_dir}' has no {META} and no {HISTORY}: not a camkit run")
        info = None if META in missing else read_info(run_dir)
        valid, notes = [], []
        if info is not None:
            valid = read_valid(run_dir, info, data_root)
            gone = sum(not v.file.exists() for v in valid)
            if gone:
                notes.append(f"{gone} of {len(valid)} held-out images are no longer under "
                             f"'{data_root_of(run_dir, info, data_root)}' (moved? pass --data)")
        verdict = read_verdict(run_dir, info) if info is not None else None
        root = Path(data_root) if data_root is not None else Path(info.data_root) if info and info.data_root else None
        return cls(run_dir, info, read_history(run_dir), valid, missing, notes, verdict, root)

    @property
    def summary(self) -> dict:
        return self.info.summary if self.info else {}

    @property
    def classes(self) -> list[str]:
        return self.info.classes if self.info else sorted({v.label for v in self.valid})

    @property
    def complete(self) -> bool:
        return bool(self.info and self.info.complete) and not self.missing

    def per_class(self) -> list[dict]:
        cm = self.info.confusion if self.info else []
        rows = []
        for i, name in enumerate(self.classes if cm else []):
            tp, predicted, actual = cm[i][i], sum(row[i] for row in cm), sum(cm[i])
            rows.append({"class": name, "valid images": actual,
                         "precision": round(tp / predicted, 4) if predicted else None,
                         "recall": round(tp / actual, 4) if actual else None})
        return rows

    def top_losses(self, n: int = TOP_LOSSES) -> list[ValidRecord]:
        return sorted((v for v in self.valid if v.file.exists()), key=lambda v: -v.loss)[:n]

    def numbers(self) -> dict:
        model = self.info.model_spec.to_json() | {"pretrained": self.info.pretrained} if self.info else None
        return {"run": str(self.run_dir), "complete": self.complete, "missing": self.missing, "model": model,
                "summary": self.summary, "classes": self.classes, "per_class": self.per_class(),
                "confusion": self.info.confusion if self.info else None, "history": self.history,
                "verdict": self.verdict.to_json() if self.verdict else None}


def report(run_dir: str | Path, cams: str | Path | None = None, out: str | Path | None = None,
           data_root: str | Path | None = None) -> Path:
    """What `camkit report` runs: explain the top losses once (saved in RUN/top_losses, redone
    only when the model is newer), then write the page."""
    view = RunView.read(run_dir, data_root)
    top = view.top_losses()
    loadable = top and (view.run_dir / WEIGHTS).is_file() and view.info is not None
    for name, target in ((TOP_LOSSES_DIR, "pred"), (TOP_LOSSES_ACTUAL_DIR, [v.label for v in top])):
        if loadable and _stale(view.run_dir / name, view.run_dir):
            cam([v.file for v in top], model=view.run_dir, out=view.run_dir / name, target=target, quiet=True)
    return write_page(view, cams, out)


def _stale(cams_dir: Path, run_dir: Path) -> bool:
    saved = cams_dir / CAMS_JSONL
    return not saved.is_file() or saved.stat().st_mtime < (run_dir / WEIGHTS).stat().st_mtime


def build(run_dir: str | Path, cams_dir: str | Path | None = None, out: str | Path | None = None,
          data_root: str | Path | None = None) -> Path:
    """Write `run_dir/report.html` (or `out`) from whatever the run folder holds; runs no model."""
    return write_page(RunView.read(run_dir, data_root), cams_dir, out)


def write_page(view: RunView, cams_dir: str | Path | None = None, out: str | Path | None = None) -> Path:
    """The page for an already-read run, one section after the other."""
    cams_dir = Path(cams_dir) if cams_dir else view.run_dir / "cams"
    body = (_header(view) + _verdict(view) + _evaluation(view) + _trust(view)
            + _gallery(view, cams_dir) + _methods_side_by_side(view.run_dir, cams_dir) + _faithfulness(view.run_dir)
            + _training(view) + _dataset(view))
    target = Path(out) if out else view.run_dir / PAGE_FILE
    try:
        atomic_write(target, PAGE.format(body=body))
    except OSError as e:
        raise CamkitError(f"cannot write the report to '{target}' ({e.strerror or e})") from None
    return target


def _header(view: RunView) -> str:
    parts = [f"<h1>camkit report — {html.escape(view.run_dir.name)}</h1>"]
    if not view.complete:
        parts.append("<p class='warn' id='incomplete'>Incomplete run: training was interrupted or files are "
                     f"missing ({html.escape(', '.join(view.missing) or 'model.json says so')}). "
                     "This report shows what exists.</p>")
    parts += [f"<p class='warn'>{html.escape(n)}</p>" for n in view.notes]
    return "".join(parts)


def _verdict(view: RunView) -> str:
    """The training verdict first (camkit.train.verdict): usable or not, against always answering the
    larger class, each reason with what to try."""
    v = view.verdict
    if v is None:
        return ""
    style = {"ok": "good", "warning": "warn", "unusable": "warn bad"}[v.status]
    items = "".join(f"<li>{html.escape(f.message)} — {html.escape(f.advice)}</li>" for f in v.findings)
    return (f"<section id='verdict' class='{style}' data-status='{v.status}'><h2>Training verdict: {v.status}</h2>"
            f"<p><b>{html.escape(v.headline)}</b></p>" + (f"<ul>{items}</ul>" if items else "") + "</section>")


def _details(summary: str, content: str) -> str:
    """A long table folded under a one-line summary (<details>): below what matters, still there."""
    return f"<details><summary>{html.escape(summary)}</summary>{content}</details>" if content else ""


def _dataset(view: RunView) -> str:
    s = view.summary
    parts = ["<section id='dataset'><h2>Dataset</h2>"]
    if s:
        parts.append(f"<p>{_v(s, 'n_train')} training and {_v(s, 'n_valid')} validation images, "
                     f"classes: {html.escape(', '.join(view.classes))}.</p>")
        if isinstance(s.get("skipped"), list) and s["skipped"]:
            parts.append(f"<p>Skipped unreadable files: {len(s['skipped'])}</p>")
    if view.root is not None:   # the data the images are read from (--data), so are the credits
        manifest = _crawl_manifest(view.root)
        if manifest:
            parts.append(_details(f"Crawl: {sum(r['count'] for r in manifest)} files by keyword and status",
                                  _table(manifest)))
        parts.append(crawl_credits(view.root))
    for cls in view.classes:
        files = [v.file for v in view.valid if v.label == cls and v.file.exists()][:8]
        if files:
            parts.append(f"<div class='strip'><b>{html.escape(cls)}</b> "
                         + "".join(_img(_thumb(f), cls, 72) for f in files) + "</div>")
    return "".join(parts) + "</section>"


def _training(view: RunView) -> str:
    s, info = view.summary, view.info
    parts = ["<section id='training'><h2>Training</h2>"]
    if info:
        how = " by dilation" if info.dilate else ""
        parts.append(f"<p>arch <b>{html.escape(info.arch)}</b>, head {html.escape(info.head)}, output stride "
                     f"{info.stride}{how}, pretrained weights: {'yes' if info.pretrained else 'no'}, "
                     f"device {_v(s, 'device')} ({_v(s, 'precision', 'fp32')}); {_v(s, 'epochs')} epochs at batch size "
                     f"{_v(s, 'bs')}, learning rate {_v(s, 'lr')} ({_v(s, 'lr_source')}), in "
                     f"{_v(s, 'train_seconds')} s ({_v(s, 'images_per_sec')} images/s).</p>")
    parts.append(_figure_file(view.run_dir / LOSS_PLOT, "loss curves"))
    history = _details(f"Per-epoch history ({len(view.history)} epochs)", _table(view.history))
    return "".join(parts) + history + "</section>"


def _evaluation(view: RunView) -> str:
    s = view.summary
    parts = ["<section id='evaluation'><h2>Evaluation</h2>"]
    if s:
        v = view.verdict
        constant = (f"; always answering '{html.escape(v.baseline_class)}' scores {_pct(v.baseline)}" if v else "")
        parts.append(f"<p>Validation accuracy <b>{_pct(s.get('valid_accuracy'))}</b>, "
                     f"loss {_v(s, 'valid_loss')}{constant}.</p>")
    parts.append(_figure_file(view.run_dir / CONFUSION_PLOT, "confusion matrix"))
    parts.append(_table(view.per_class()))
    explained = {Path(e.image).resolve(): e for e in read_cams(view.run_dir / TOP_LOSSES_DIR)}
    actual = {Path(e.image).resolve(): e for e in read_cams(view.run_dir / TOP_LOSSES_ACTUAL_DIR)}
    top = [(v, explained.get(v.file.resolve()), actual.get(v.file.resolve())) for v in view.top_losses()]
    if top:
        parts.append("<h3>Top losses (look at these to clean the data)</h3><p>Each image, then the map of the "
                     "predicted class (why the model said it), then the map of the actual class (the evidence "
                     "it found for the right answer).</p><div class='grid'>")
        for v, e, a in top:
            overlay = view.run_dir / TOP_LOSSES_DIR / e.overlay if e and e.overlay else None
            second = view.run_dir / TOP_LOSSES_ACTUAL_DIR / a.overlay if a and a.overlay else None
            parts.append(_figure(v.file, overlay, f"actual {v.label}, predicted {v.pred} ({v.prob:.1%}), "
                                                  f"loss {v.loss:.3f}" + (f"; {e.method} maps: why {v.pred}" if e else "")
                                 + (f" | evidence for {v.label}" if a else ""), second))
        parts.append("</div>")
    return "".join(parts) + "</section>"


def _gallery(view: RunView, cams_dir: Path) -> str:
    parts = ["<section id='cams'><h2>CAM gallery</h2>"]
    records = read_cams(cams_dir)
    truth = {str(v.file.resolve()): v.label for v in view.valid}
    known = [(r, truth.get(str(Path(r.image).resolve()))) for r in records]
    wrong = [(r, t) for r, t in known if t is not None and t != r.pred]
    right = [(r, t) for r, t in known if t is None or t == r.pred]
    sample = wrong[:GALLERY // 2] + right[:GALLERY - len(wrong[:GALLERY // 2])]
    if sample:
        parts.append(f"<p>{len(records)} images explained; {len(wrong)} predicted wrongly. Original | overlay.</p>"
                     "<div class='grid'>")
        for r, t in sample:
            if Path(r.image).exists() and r.overlay and (cams_dir / r.overlay).exists():
                label = f" (actual {t})" if t is not None else ""
                parts.append(_figure(r.image, cams_dir / r.overlay,
                                     f"{Path(r.image).name}: {r.pred} ({r.prob:.1%}){label}, {r.method}"))
        parts.append("</div>")
    else:
        parts.append("<p>No CAM run found (run <code>camkit cam ... --out RUN/cams</code>).</p>")
    return "".join(parts)


def _faithfulness(run_dir: Path) -> str:
    evaluation = read_cam_eval(run_dir)
    rows = [{"method": k, **{n: x for n, x in v.items() if n != "per_class"}} for k, v in evaluation.items()]
    rows += [{"method": f"{k}: {c}", **r} for k, v in evaluation.items() for c, r in v.get("per_class", {}).items()]
    table = "<h3>Faithfulness</h3>" + _table(rows) if evaluation else ""
    return table + "</section>"


def _num(x, digits: int = 3, scale: float = 1.0) -> str:
    return f"{x * scale:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def _trust(view: RunView) -> str:
    """"Can these heatmaps be trusted?": first whether the model itself is worth explaining (an
    unusable model's maps explain nothing, whatever the numbers below), then the plain-words
    warning for each class recognised by the absence of the others, then the methods ranked
    (sanity check, then ROAD) with their numbers per class. Reads RUN/cam_trust.json (`camkit
    cam-eval RUN`); runs no model."""
    parts = ["<section id='trust'><h2>Can these heatmaps be trusted?</h2>"]
    verdict = view.verdict
    if verdict is not None and not verdict.usable:
        parts.append("<p class='warn' id='unusable-maps'><b>No: the maps of an unusable model explain nothing.</b> "
                     f"{html.escape(verdict.headline)}. Whatever the numbers below say, a heatmap of this model "
                     "shows where a model that has not learnt the classes looked; fix the training first "
                     "(see the verdict above).</p>")
    result = read_cam_trust(view.run_dir)
    if result is None:
        parts.append("<p>Not evaluated yet: run <code>camkit cam-eval RUN</code> (no boxes needed) to check, on "
                     "the run's own images, whether each method's maps show what the model uses.</p>")
        return "".join(parts) + "</section>"
    weak = None if verdict is not None and not verdict.usable else (verdict.low_recall_classes() if verdict else [])
    parts += _absence_notes(result["absence"], weak)
    ranked = rank_methods(result)
    best = ranked[0]
    parts.append(f"<p>On {result['images']} {html.escape(result['split'])} images, the most faithful method is "
                 f"<b>{html.escape(best)}</b>" + ("" if result["methods"][best]["sanity_passed"] else
                                                   " — but no method passes the sanity check") + ".</p>")
    failed = [m for m in ranked if not result["methods"][m]["sanity_passed"]]
    if failed:
        parts.append(f"<p class='warn'>{html.escape(', '.join(failed))}: the maps barely change when the model's "
                     "head and last stage are re-initialised, so they show the image more than the model; do not "
                     "read them as the model's reasons.</p>")
    parts.append(_table(_trust_rows(trust_table(result))))
    return "".join(parts) + "</section>"


def _absence_notes(absence: dict, weak: list[str] | None) -> list[str]:
    """One warning per class recognised by the absence of the others; then, only for a usable
    model (`weak` not None: the classes it recognises too rarely), one line saying which classes
    have evidence of their own — never a class with low recall."""
    notes = []
    for cls in absence["flagged"]:
        name, score = html.escape(cls), absence["per_class"][cls]["score"]
        notes.append(f"<p class='warn absence'><b>'{name}' is recognised by the absence of the other "
                     f"class{'es' if len(absence['per_class']) > 2 else ''}, not by anything of its own.</b> Its "
                     f"images keep {score:.0%} of their confidence when the top 20% of the map is erased, for "
                     f"every method: the model decides '{name}' because the other object is missing, so its "
                     f"heatmaps point at background and say nothing about what a '{name}' looks like. Retrain "
                     f"with <code>--negatives DIR</code> (images of neither class) or another "
                     f"<code>--recipe</code>, and check again.</p>")
    if weak is None or absence["flagged"] or not absence["per_class"]:
        return notes
    kept = ", ".join(f"{html.escape(c)} keeps {v['score']:.0%}" for c, v in absence["per_class"].items()
                     if c not in weak)
    if not weak:
        notes.append("<p>Every class is recognised by evidence of its own: erasing the top 20% of the best map "
                     f"costs each class confidence ({kept}).</p>")
    else:
        notes.append(f"<p class='warn'>{html.escape(', '.join(weak))}: recognised in fewer than half of the held-out "
                     "images, so what its maps show is not the class; " + (f"the others have evidence of their own "
                                                                          f"({kept}).</p>" if kept else "</p>"))
    return notes


def _trust_rows(table: list) -> list[dict]:
    """The trust table (`camkit.evaluate.trust_table`, the rows `cam-eval` prints) as cells: per
    method in rank order its overall row, then one row per class; a method whose maps equal an
    earlier one's says so ("gradcam = cam (same maps)")."""
    rows = []
    for row in table:
        c, overall = row.scores, row.rank is not None
        verdict = (" pass" if row.sanity_passed else " FAIL") if overall else ""
        rows.append({"rank": row.rank if overall else "",
                     "method": f"{row.method} = {row.same_as} (same maps)" if row.same_as else row.method,
                     "class": row.cls, "images": c["images"],
                     "ROAD ↑": _num(c["road"]), "deletion ↓": _num(c["deletion_auc"]),
                     "insertion ↑": _num(c["insertion_auc"]), "avg drop % ↓": _num(c["average_drop"], 1, 100),
                     "increase % ↑": _num(c["increase_in_confidence"], 1, 100),
                     "kept without top 20% ↓": _num(c["retained_confidence"]),
                     "sanity: head / last stage ↓": f"{_num(c['sanity_head'], 2)} / "
                                                     f"{_num(c['sanity_last_stage'], 2)}{verdict}"})
    return rows


PAGE = ("<!doctype html><html><head><meta charset='utf-8'><meta name='generator' content='camkit'>"
        "<title>camkit report</title><style>"
        "body{{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}}"
        "table{{border-collapse:collapse;margin:.6em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}"
        ".warn{{background:#fee;border:1px solid #c66;padding:.6em}}.bad{{border-width:3px}}"
        ".good{{background:#efe;border:1px solid #6a6;padding:.6em}}summary{{cursor:pointer;margin:.4em 0}}.strip img{{margin:2px;vertical-align:middle}}"
        "figure{{display:inline-block;margin:.4em;border:1px solid #ddd;padding:.3em}}"
        "figcaption{{font-size:12px;max-width:260px}}img{{image-rendering:auto}}</style></head>"
        "<body>{body}"
        "<script>window.addEventListener('load',function(){{var b=0;document.querySelectorAll('img')"
        ".forEach(function(i){{if(!i.complete||i.naturalWidth===0)b++}});"
        "document.body.setAttribute('data-broken-images',b);"
        "document.body.setAttribute('data-images',document.images.length)}});</script></body></html>")


def _figure(original: str | Path, overlay: Path | None, caption: str, second: Path | None = None) -> str:
    """Original | overlay (| a second overlay, e.g. another class's map) side by side (the
    original alone when no overlay was saved)."""
    shown = "".join(_img(_thumb(o, 160), "overlay", 120) for o in (overlay, second) if o is not None and o.exists())
    return (f"<figure>{_img(_thumb(original, 160), 'original', 120)}{shown}"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _methods_side_by_side(run_dir: Path, cams_dir: Path, n_images: int = 4) -> str:
    """When several CAM outputs exist (RUN/cams*, e.g. `camkit cam --method gradcam --out
    RUN/cams-gradcam`), the same images under each method, in one row each."""
    by_method: dict[str, dict[str, tuple[Path, object]]] = {}
    for folder in sorted({cams_dir, *run_dir.glob("cams*")}):
        for r in read_cams(folder) if folder.is_dir() else []:
            by_method.setdefault(r.method, {})[r.image] = (folder, r)
    if len(by_method) < 2:
        return ""
    common = sorted(set.intersection(*(set(v) for v in by_method.values())))[:n_images]
    if not common:
        return ""
    methods = sorted(by_method)
    rows = []
    for image in common:
        if not Path(image).exists():
            continue
        cells = [_img(_thumb(image, 120), "original", 100)]
        for m in methods:
            folder, r = by_method[m][image]
            if r.overlay and (folder / r.overlay).exists():
                cells.append(_img(_thumb(folder / r.overlay, 120), m, 100))
        rows.append(f"<div class='strip'><b>{html.escape(Path(image).name)}</b> " + "".join(cells) + "</div>")
    return ("<h3 id='methods'>Methods side by side</h3><p>original, " + ", ".join(map(html.escape, methods))
            + "</p>" + "".join(rows))


def crawl_credits(root: Path, limit: int = 200) -> str:
    """Licence counts and the credits (creator, licence, source page) of the crawled images
    still in the dataset, from the crawl's manifest; '' when there is no crawl or it is unreadable."""
    try:
        items = credits(root)
    except CamkitError:
        return ""
    if not items:
        return ""
    counts = ", ".join(f"{html.escape(k)} {n}" for k, n in license_counts(items).items())
    rows = [{"file": c.file, "creator": c.creator or "unknown", "licence": c.license or "unknown",
             "source": c.source_page or "-"} for c in items[:limit]]
    more = f"<p>… and {len(items) - limit} more (camkit credits DIR).</p>" if len(items) > limit else ""
    return (f"<h3 id='credits'>Licences and credits</h3><p>Licences: {counts}.</p>"
            + _details(f"Credits of {len(items)} images (creator, licence, source)", _table(rows) + more))


def _crawl_manifest(root: Path) -> list[dict]:
    """Accepted / rejected counts by keyword and status from the crawl's manifest in the data
    root (the ledger reads its format); none when there is no crawl or it is unreadable."""
    from camkit.crawl.ledger import status_counts

    try:
        counts = status_counts(root)
    except CamkitError:
        return []
    return [{"keyword": k, "status": st, "count": n} for (k, st), n in counts.items()]