"""scripts/import_graph.py on camkit itself: the seams issue 27 cut stay cut."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    edges, local = mod.graph(mod.modules())
    return mod, edges, local


def _reach(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in edges[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_the_graph_sees_module_and_function_level_imports():
    mod, edges, local = _graph()
    assert {"camkit.errors", "camkit.train.run"} <= edges["camkit.explain"]        # module level
    assert ("camkit.app", "camkit.train.run") in {(a, b) for a, b, _ in local}  # inside CamApp: the light Space has no torch
    assert mod.strong_components({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_circle_among_camkit_modules_and_fastai_does_not_reach_train():
    mod, edges, _ = _graph()
    assert mod.strong_components(edges) == []  # explain <-> fastai and ortlite <-> space were the last
    assert "camkit.fastai" not in _reach(edges, "camkit.explain")
    assert "camkit.train.loop" not in _reach(edges, "camkit.fastai")


def test_the_only_upward_import_is_python_dash_m():
    """The version lives in camkit.version, so no module imports the package face from below;
    `python -m camkit.cli` (its __main__ importing its own package) is the one edge left."""
    mod, edges, _ = _graph()
    assert mod.upward(edges) == [("camkit.cli.__main__", "camkit.cli")]


def test_clean_reaches_only_the_ledger_and_hashing_of_the_crawl_and_never_icrawler():
    _, edges, _ = _graph()
    assert {m for m in edges["camkit.clean"] if m.startswith("camkit.crawl")} == {"camkit.crawl.ledger",
                                                                                  "camkit.crawl.verify"}
    code = "import sys, camkit.clean; print('icrawler' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_building_and_loading_a_model_does_not_reach_the_cam_package():
    _, edges, _ = _graph()
    for start in ("camkit.train.models", "camkit.train.run"):
        assert not {m for m in _reach(edges, start) if m.startswith("camkit.cam")}, start
    assert "camkit.core.layout" in edges["camkit.train.models"] and "camkit.core.layout" in edges["camkit.cam.layers"]


def test_a_timm_model_with_the_cam_head_runs_without_the_cam_package():
    """The CAM head over a ViT's tokens reads camkit.core.layout, not camkit.cam (it did before)."""
    pytest.importorskip("timm")
    code = ("import sys, torch; from camkit.train.models import build_model; "
            "m = build_model('vit_tiny_patch16_224', 2, 'cam', pretrained=False).model.eval(); "
            "y = m(torch.zeros(1, 3, 224, 224)); "
            "print(tuple(y.shape) == (1, 2), any(k == 'camkit.cam' or k.startswith('camkit.cam.') for k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]


# docs/design.md's package map, bottom up: a module imports only from its own group or an earlier one
LAYERS = (
    ("camkit.errors", "camkit.version"),
    ("camkit.core",),
    ("camkit.crawl", "camkit.resources"),
    ("camkit.data",),
    ("camkit.train",),
    ("camkit.cam",),
    ("camkit.export",),
    ("camkit.faithfulness",),
    ("camkit.explain", "camkit.predict", "camkit.evaluate", "camkit.clean", "camkit.fastai", "camkit.course",
     "camkit.report", "camkit.app", "camkit.demo"),
    ("camkit.share",),
    ("camkit.cli", "camkit.__main__", "camkit"),
)


def _layer(module: str) -> int:
    for i, group in enumerate(LAYERS):
        if any(module == g or (g != "camkit" and module.startswith(g + ".")) for g in group):
            return i
    raise AssertionError(f"{module} is in no group of docs/design.md's package map")


def test_every_import_goes_down_the_package_map_or_stays_in_its_group():
    _, edges, _ = _graph()
    up = sorted((a, b) for a, bs in edges.items() for b in bs if _layer(b) > _layer(a))
    assert up == []
    assert _layer("camkit.train.run") < _layer("camkit.cam.base") < _layer("camkit.explain")  # the order holds


def test_the_top_level_is_the_face_and_the_commands():
    top = sorted(p.stem for p in (ROOT / "camkit").glob("*.py"))
    assert top == ["__init__", "__main__", "app", "clean", "demo", "errors", "evaluate", "explain", "fastai",
                   "predict", "report", "version"]
    flat = {g.removeprefix("camkit.") for group in LAYERS for g in group if g.count(".") == 1}
    packages = {p.name for p in (ROOT / "camkit").iterdir() if (p / "__init__.py").is_file()}
    assert packages <= flat   # every package has its place in the map
