"""camkit.export.onnx: the ONNX explainer graph, its sidecar, its parity check and the INT8 gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from camkit.errors import CamkitError  # noqa: E402
from camkit.export.onnx import (INPUT, OUTPUTS, Int8Gate, export_onnx, parity_images, read_sidecar,  # noqa: E402
                           session)


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The tiny run copied and exported once (RUN/model.onnx + sidecar)."""
    run = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("export") / "run"))
    return run, export_onnx(run)


@pytest.fixture(scope="module")
def loaded(exported):
    from camkit.train.run import load

    return load(exported[0], device="cpu")


def test_export_writes_the_graph_and_its_sidecar_beside_it(exported):
    run, result = exported
    assert result.path == run / "model.onnx" and result.sidecar == run / "model.onnx.json"
    meta = json.loads(result.sidecar.read_text())
    info = json.loads((run / "model.json").read_text())
    assert meta["classes"] == info["classes"] and meta["size"] == info["size"] == 32
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["layout"] == "NCHW"
    assert [meta["mean"], meta["std"]] == info["stats"]
    assert meta["parity"]["max_abs_diff"] == result.max_abs_diff <= 1e-4 * result.parity.scale
    assert not list(run.glob(".camkit-tmp-*"))   # the temp files were renamed into place


def test_graph_outputs_are_torchs_logits_and_every_classs_exact_map(exported, loaded):
    """maps[b, c] = W_c . A (the torch features through the head's weights), logit c = its mean."""
    from camkit.cam import cam_linear

    images = parity_images(loaded, n=4)
    logits, probs, maps = session(exported[1].path).run(list(OUTPUTS), {INPUT: images})
    with torch.no_grad():
        a = loaded.model[0](loaded.batch(list(images.transpose(0, 2, 3, 1))))
        want = torch.einsum("ck,bkhw->bchw", cam_linear(loaded.model).weight, a).numpy()
        want_logits = loaded.model(loaded.batch(list(images.transpose(0, 2, 3, 1)))).numpy()
    scale = max(1.0, np.abs(want).max())
    assert maps.shape == (len(images), 2, 4, 4)   # stride 8 at 32 px: the layer's resolution
    assert np.abs(maps - want).max() <= 1e-4 * scale
    assert np.abs(logits - want_logits).max() <= 1e-4 * scale
    assert np.abs(maps.mean((2, 3)) - logits).max() <= 1e-4 * scale      # exact CAM's identity
    assert np.allclose(probs, torch.from_numpy(logits).softmax(1).numpy(), atol=1e-6)


def test_the_batch_dimension_is_dynamic(exported, loaded):
    sess = session(exported[1].path)
    one = sess.run(["maps"], {INPUT: parity_images(loaded, n=1)[:1]})[0]
    five = sess.run(["maps"], {INPUT: np.repeat(parity_images(loaded, n=1)[:1], 5, 0)})[0]
    assert one.shape[0] == 1 and five.shape[0] == 5 and np.allclose(five, one, atol=1e-5)


def test_sidecar_grid_is_camkits_geometry(exported, loaded):
    from camkit.core.geometry import grid_for, probe

    meta = read_sidecar(exported[1].path)
    g = grid_for(probe(loaded.model, (32, 32)), meta.map_size, (32, 32))
    assert (tuple(meta.grid["stride"]), tuple(meta.grid["offset"])) == (g.stride, g.offset) == ((8, 8), (0, 0))


def test_a_fastai_head_run_is_refused_naming_gradients(tiny_fastai_run, tmp_path):
    with pytest.raises(CamkitError, match="gradients"):
        export_onnx(tiny_fastai_run, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_parity_beyond_tolerance_is_refused_and_nothing_written(loaded, tmp_path):
    with pytest.raises(CamkitError, match="differs from torch by .*not written"):
        export_onnx(loaded, tmp_path / "m.onnx", tolerance=1e-15)
    assert list(tmp_path.iterdir()) == []


def test_a_file_camkit_did_not_write_is_never_replaced(loaded, tmp_path):
    theirs = tmp_path / "model.onnx"
    theirs.write_bytes(b"someone's model")
    with pytest.raises(CamkitError, match="not written by camkit"):
        export_onnx(loaded, theirs)
    assert theirs.read_bytes() == b"someone's model"


def test_a_tampered_sidecar_is_refused(exported, tmp_path):
    path = tmp_path / "m.onnx"
    shutil.copy(exported[1].path, path)
    meta = json.loads(exported[1].sidecar.read_text())
    (tmp_path / "m.onnx.json").write_text(json.dumps({**meta, "grid": "everywhere"}))
    with pytest.raises(CamkitError, match="field 'grid'"):
        read_sidecar(path)


def test_without_the_extra_export_says_how_to_install_it(loaded, tmp_path, monkeypatch, cli):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(CamkitError, match=r"pip install 'camkit\[onnx\]'"):
        export_onnx(loaded, tmp_path / "m.onnx")
    code, _, err = cli("export", loaded.path, "--onnx", "--out", tmp_path / "m.onnx")
    assert code == 2 and err.strip() == "error: ONNX export needs onnxruntime: pip install 'camkit[onnx]'"


@pytest.mark.parametrize("corr, acc8, passed", [(0.995, 0.9, True), (0.989, 0.9, False), (0.999, 0.894, False),
                                                (0.999, 0.896, True)])
def test_int8_gate_passes_on_correlation_and_accuracy_drop(corr, acc8, passed):
    gate = Int8Gate(images=10, min_correlation=corr, mean_correlation=corr, accuracy_fp32=0.9, accuracy_int8=acc8,
                    agreement=1.0, mode="static")
    assert gate.passed is passed


def test_int8_export_is_written_exactly_when_its_measured_gate_passes(loaded, tmp_path):
    """Whatever the tiny model gives, the decision follows the figures the export reports."""
    out = tmp_path / "m.int8.onnx"
    try:
        result = export_onnx(loaded, out, int8=True)
    except CamkitError as e:
        figures = str(e)
        assert "fails its gate" in figures and not out.exists()
        corr = float(figures.split("map correlation with fp32 min ")[1].split()[0])
        acc8, acc32 = (float(v.rstrip("%")) / 100 for v in figures.split("held-out accuracy ")[1].split(" vs fp32 "))
        assert corr < 0.99 or acc32 - acc8 > 0.005
        return
    g = result.gate
    assert g.min_correlation >= 0.99 and g.accuracy_fp32 - g.accuracy_int8 <= 0.005 + 1e-12
    assert read_sidecar(out).int8 and json.loads(result.sidecar.read_text())["int8_gate"]["passed"] is True
    ops = {n.op_type for n in __import__("onnx").load(str(out)).graph.node}
    assert "QuantizeLinear" in ops   # really quantised


def test_int8_refused_with_its_figures_when_the_gate_cannot_pass(loaded, tmp_path, monkeypatch):
    import camkit.export.onnx as export

    monkeypatch.setattr(export, "INT8_MIN_CORRELATION", 1.5)   # no correlation reaches it
    with pytest.raises(CamkitError, match=r"map correlation with fp32 min [01]\.\d{4} .*not written"):
        export_onnx(loaded, tmp_path / "m.int8.onnx", int8=True, int8_mode="dynamic")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_prints_the_max_abs_difference(loaded, tmp_path, cli):
    code, out, err = cli("export", loaded.path, "--onnx", "--out", tmp_path / "m.onnx")
    assert code == 0, err
    assert "max abs difference vs torch:" in out and (tmp_path / "m.onnx.json").is_file()


@pytest.mark.parametrize("args, message", [((), "say what to export: --onnx"),
                                           (("--onnx", "--out", "m.txt"), "must name an .onnx file"),
                                           (("--onnx", "--opset", "9"), "--opset must be between 13 and 21")])
def test_cli_export_refuses_bad_options_in_one_line(tiny_run, cli, args, message):
    code, _, err = cli("export", tiny_run, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
