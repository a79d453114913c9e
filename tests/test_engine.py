"""camkit.export.engine: exact CAM and predictions by ONNX Runtime, equal to the torch engine's, and the
choice between them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from camkit.errors import CamkitError  # noqa: E402
from camkit.explain import cam, explain  # noqa: E402
from camkit.export.engine import Engine, OnnxCAM, OrtGraph, choose_engine  # noqa: E402
from camkit.predict import predict  # noqa: E402


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory) -> Path:
    """The tiny run copied and exported (RUN/model.onnx), so `auto` finds a graph."""
    from camkit.export.onnx import export_onnx

    out = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("engine") / "run"))
    export_onnx(out)
    return out


@pytest.fixture(scope="module")
def images(canvas_dir) -> list[Path]:
    return sorted((canvas_dir / "bag").glob("*.png"))[:6] + sorted((canvas_dir / "trouser").glob("*.png"))[:6]


@pytest.fixture(scope="module")
def loaded(run):
    from camkit.train.run import load

    return load(run, device="cpu")


@pytest.mark.parametrize("target, signed", [("pred", False), ("trouser", False), ("contrast", True)])
def test_onnx_engine_gives_the_torch_engines_maps_and_probs(run, images, target, signed):
    a = explain(run, images, target=target, signed=signed, engine="torch")
    b = explain(run, images, target=target, signed=signed, engine="onnx")
    assert [r.record() for r in a] == [r.record() for r in b]   # pred, prob, target, method, peak
    assert max(float((x.map - y.map).abs().max()) for x, y in zip(a, b)) < 1e-4
    assert max(float((x.probs - y.probs).abs().max()) for x, y in zip(a, b)) < 1e-5
    assert all(x.grid == y.grid and x.map.shape == y.map.shape == (4, 4) for x, y in zip(a, b))


def test_cam_folders_of_both_engines_hold_the_same_files_and_records(run, images, tmp_path):
    ours = cam(images, run, out=tmp_path / "onnx", engine="onnx", quiet=True)
    theirs = cam(images, run, out=tmp_path / "torch", engine="torch", quiet=True)
    assert ours == theirs    # cams.jsonl records: same names, predictions, peaks
    names = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "torch").iterdir())
    for e in ours:
        assert np.abs(np.load(tmp_path / "onnx" / e.map) - np.load(tmp_path / "torch" / e.map)).max() < 1e-4


def test_predict_engines_agree(run, images):
    a = predict(images, run, engine="torch")
    b = predict(images, run, engine="onnx")
    assert [r.pred for r in a] == [r.pred for r in b]
    assert max(abs(x.probs[c] - y.probs[c]) for x, y in zip(a, b) for c in x.probs) <= 2e-6


def test_auto_takes_the_runs_current_graph_at_fp32_only(loaded):
    assert choose_engine("auto", loaded, exact=True).engine is Engine.onnx
    assert choose_engine("auto", loaded, exact=False).engine is Engine.torch      # a gradient method
    choice = choose_engine("auto", loaded, exact=True, precision="bf16")          # no INT8 graph here
    assert choice.engine is Engine.torch and "INT8" in choice.reason


def test_auto_ignores_a_graph_exported_before_the_run_was_retrained(run, tmp_path):
    from camkit.train.run import load

    stale = Path(shutil.copytree(run, tmp_path / "run"))
    state = torch.load(stale / "model.pth", weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 1
    torch.save(state, stale / "model.pth")
    choice = choose_engine("auto", load(stale, device="cpu"), exact=True)
    assert choice.engine is Engine.torch and "no exported graph" in choice.reason


def test_onnx_without_a_graph_exports_one_in_memory(tiny_run, images):
    assert not (tiny_run / "model.onnx").exists()
    a = explain(tiny_run, images[:3], engine="onnx")
    b = explain(tiny_run, images[:3], engine="torch")
    assert max(float((x.map - y.map).abs().max()) for x, y in zip(a, b)) < 1e-4
    assert not (tiny_run / "model.onnx").exists()   # nothing written into the run


@pytest.mark.parametrize("args, message", [
    (("--method", "gradcam"), "--engine onnx: the ONNX engine computes exact CAM only"),
    (("--aug-smooth",), "--engine onnx: --aug-smooth needs the torch engine"),
    (("--layer", "0.7"), "--engine onnx: --layer needs the torch engine")])
def test_cli_onnx_engine_refuses_what_it_cannot_compute(run, images, tmp_path, cli, args, message):
    code, _, err = cli("cam", images[0], "--model", run, "--engine", "onnx", "--out", tmp_path / "c", *args)
    assert code == 2 and f"error: {message}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c" / "cams.jsonl").exists()


def test_cli_fastai_head_run_refuses_the_onnx_engine(tiny_fastai_run, images, cli):
    code, _, err = cli("predict", images[0], "--model", tiny_fastai_run, "--engine", "onnx")
    assert code == 2 and "fastai's head" in err and "gradients" in err


def test_cli_cam_and_predict_run_with_each_engine(run, images, tmp_path, cli):
    for engine in ("auto", "torch", "onnx"):
        code, out, err = cli("cam", images[0], "--model", run, "--engine", engine, "--out", tmp_path / engine, "--json")
        assert code == 0, err
        assert json.loads(out.splitlines()[0])["method"] == "cam"
    code, out, err = cli("predict", images[0], "--model", run, "--engine", "onnx", "--json")
    assert code == 0 and json.loads(out)["pred"] in ("bag", "trouser"), err


def test_onnx_cam_refuses_a_normalised_batch(loaded):
    from camkit.export.engine import open_graph

    extractor = OnnxCAM(open_graph(choose_engine("onnx", loaded, exact=True), loaded))
    with pytest.raises(CamkitError, match="uint8"):
        extractor(torch.zeros(1, 3, 32, 32))


def test_onnx_cam_returns_the_graphs_logits_targets_and_grid(loaded, images):
    """OnnxCAM.explain gives the result object camkit.cam's extractors give: the graph's logits,
    the classes explained, the sidecar's grid; `cam(x)` is its maps, the attributes hold the same."""
    from camkit.export.engine import open_graph
    from camkit.core.images import open_rgb

    extractor = OnnxCAM(open_graph(choose_engine("onnx", loaded, exact=True), loaded))
    x = extractor.feed([loaded.square(open_rgb(f)) for f in images[:4]])
    out = extractor.explain(x)
    logits = extractor.graph.run(x.numpy())[0]
    assert torch.allclose(out.logits, torch.from_numpy(logits)) and out.logits is extractor.logits
    assert out.targets.tolist() == logits.argmax(1).tolist() and out.targets is extractor.targets
    assert out.target is extractor.target and out.grid == extractor.grid and out.grid is not None
    assert torch.equal(extractor(x), out.maps) and out.maps.shape == (4, 4, 4)


def test_a_graph_that_is_not_its_sidecars_is_refused(run, tmp_path):
    shutil.copy(run / "model.onnx.json", tmp_path / "model.onnx.json")
    data = bytearray((run / "model.onnx").read_bytes())
    data[-1] ^= 1
    (tmp_path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(CamkitError, match="hash differs"):
        OrtGraph.open(tmp_path / "model.onnx")
