"""The light Space (`camkit app RUN --export-space DIR --engine onnx`): onnxruntime, numpy, Pillow
and Gradio, no torch, no fastai; its app answers with camkit's numbers where torch cannot load."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the light Space needs camkit[onnx]")
gradio = pytest.importorskip("gradio", reason="the Space export needs camkit[app]")

from camkit.share.ortlite import LiteApp

BLOCKED = ("torch", "torchvision", "fastai", "timm", "matplotlib")


@pytest.fixture(scope="module")
def light(tiny_run, tmp_path_factory):
    """`camkit app RUN --export-space DIR --engine onnx`, through the CLI."""
    from typer.testing import CliRunner

    from camkit.cli import app

    out = tmp_path_factory.mktemp("light") / "space"
    result = CliRunner().invoke(app, ["app", str(tiny_run), "--export-space", str(out), "--engine", "onnx"])
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory):
    """A PYTHONPATH folder whose sitecustomize makes `import torch` (and fastai, matplotlib...) fail."""
    folder = tmp_path_factory.mktemp("notorch")
    (folder / "sitecustomize.py").write_text(f"import sys\nfor m in {BLOCKED!r}:\n    sys.modules[m] = None\n")
    return folder


def torch_probs(run, image) -> np.ndarray:
    """camkit's own torch model on the image, as the full app feeds it."""
    from camkit.export.onnx import torch_outputs
    from camkit.core.images import open_rgb
    from camkit.train.run import load

    loaded = load(run, device="cpu")
    square = loaded.square(open_rgb(image)).transpose(2, 0, 1)[None].copy()
    return torch_outputs(loaded, square)[1][0]


def test_light_space_requires_no_torch_and_holds_the_graph(light):
    reqs = light.joinpath("requirements.txt").read_text().split()
    assert [r.split(">")[0].split("=")[0] for r in reqs] == ["onnxruntime", "numpy", "pillow", "gradio"]
    assert f"gradio=={gradio.__version__}" in reqs
    assert {p.name for p in (light / "model").iterdir()} == {"model.onnx", "model.onnx.json", "explainer.json"}
    assert "from camkit.share.ortlite import launch" in light.joinpath("app.py").read_text()
    assert "no torch, no fastai" in light.joinpath("README.md").read_text()


def test_light_space_answers_where_torch_cannot_be_imported(light, no_torch, tiny_run):
    from gradio_client import handle_file
    from helpers import free_port
    from test_app import _connect

    env = {**os.environ, "PYTHONPATH": str(no_torch), "GRADIO_ANALYTICS_ENABLED": "False"}
    control = subprocess.run([sys.executable, "-c", "import torch"], cwd=light, env=env, capture_output=True,
                             text=True, check=False)
    assert control.returncode != 0 and "torch" in control.stderr          # the block holds in this environment
    port = free_port()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=light, env={**env, "GRADIO_SERVER_PORT": str(port)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    example = light / "examples" / "example-0.png"
    try:
        client = _connect(f"http://127.0.0.1:{port}/", proc)
        label, overlay, caption = client.predict(handle_file(str(example)), "cam", "pred", 0.5, "jet", False,
                                                 api_name="/explain")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    got = {c["label"]: c["confidence"] for c in label["confidences"]}
    want = torch_probs(tiny_run, example)
    from camkit.train.run import read_info

    assert np.allclose([got[c] for c in read_info(tiny_run).classes], want, atol=1e-5)
    assert os.path.isfile(overlay) and "onnxruntime" in caption


@pytest.fixture(scope="module")
def apps(light, tiny_run):
    """(the light app, camkit's torch app) on the same run."""
    from camkit.app import CamApp

    return LiteApp(light / "model"), CamApp(tiny_run)


@pytest.mark.parametrize("target, signed", [("pred", False), ("contrast", True)])
def test_lite_app_draws_what_the_torch_app_draws(apps, light, target, signed):
    example = light / "examples" / "example-1.png"
    lite, full = (app.explain(example, "cam", target, 0.5, "jet", signed) for app in apps)
    assert lite.probs.keys() == full.probs.keys()
    assert np.allclose(list(lite.probs.values()), list(full.probs.values()), atol=1e-5)
    a, b = np.asarray(lite.overlay, dtype=int), np.asarray(full.overlay, dtype=int)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_lite_app_refuses_a_method_the_graph_cannot_give(apps, light):
    from camkit.errors import CamkitError

    with pytest.raises(CamkitError, match="method 'gradcam' is not available for this run; choose from cam"):
        apps[0].explain(light / "examples" / "example-0.png", "gradcam")


def test_app_engine_onnx_serves_the_runs_graph_as_the_light_space_does(tiny_run, monkeypatch):
    """`camkit app RUN --engine onnx` (camkit.share.space.serve_run): a LiteApp over a graph exported now,
    with the run's held-out images as examples, handed to camkit.app's launch; nothing left behind."""
    from typer.testing import CliRunner

    import camkit.share.space
    from camkit.cli import app

    served = {}

    def launch(lite, port, host, block, **options):
        folder = lite.loaded.path
        served.update(app=lite, folder=folder, examples=lite.examples(), host=host, port=port, block=block)
        served["files"] = sorted(p.name for p in folder.iterdir())

    monkeypatch.setattr(camkit.share.space, "app_launch", launch)   # camkit.app.launch, as space imports it
    result = CliRunner().invoke(app, ["app", str(tiny_run), "--engine", "onnx", "--port", "7861"])
    assert result.exit_code == 0, result.stderr
    assert isinstance(served["app"], LiteApp) and served["host"] == "127.0.0.1" and served["port"] == 7861
    assert {"model.onnx", "explainer.json"} <= set(served["files"]) and served["block"] is True
    assert served["examples"] and not served["folder"].exists()  # the temporary export is removed


def test_export_space_takes_the_cli_engine_choices_and_refuses_others_before_writing(tiny_run, tmp_path):
    """The library reads --engine as `camkit app` does (auto: the full app) through the Enum's
    own check, so a typo is the CLI's one sentence and nothing is written."""
    from camkit.core.choices import CamEngine
    from camkit.errors import CamkitError
    from camkit.share.space import export_space

    with pytest.raises(CamkitError, match=r"^--engine must be one of auto, torch, onnx, not 'tourch'$"):
        export_space(tiny_run, tmp_path / "typo", engine="tourch")
    assert list(tmp_path.iterdir()) == []
    space = export_space(tiny_run, tmp_path / "auto", engine=CamEngine.auto)
    assert "from camkit.app import launch" in (space / "app.py").read_text()
