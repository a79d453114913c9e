"""Run-level evaluation (camkit.evaluate): the runs' images scored with camkit.faithfulness.metrics' formulas,
the policy over the numbers (means, sanity verdict, absence of evidence, ranking), and
`cam_eval`, which computes and saves what `camkit cam-eval` shows and the report reads."""

import json
import math

import pytest
import torch
from torch import nn

# ---------------------------------------------------------------- with boxes

def test_evaluate_scores_the_exact_cam_of_a_run(tiny_run, canvas_dir):
    """On the tiny run's held-out canvases: every number in range, one row per method, and the
    exact CAM equals Grad-CAM for a GAP -> Linear head, so their pointing games are equal."""
    from camkit.evaluate import evaluate

    res = evaluate(tiny_run, canvas_dir / "boxes.json", ["cam", "gradcam"], valid_only=True, steps=4)
    assert set(res) == {"cam", "gradcam"} and res["cam"]["images"] == 16
    assert res["cam"]["pointing_game"] == res["gradcam"]["pointing_game"]
    for r in res.values():
        assert 0 <= r["pointing_game"] <= 1 and 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1


# ---------------------------------------------------------------- absence of evidence

class AbsenceNet(nn.Module):
    """A hand-made CAM model that has the failure: channel 0 detects bright pixels (object 'a'),
    channel 1 is a constant 1 everywhere. z_a = 20 * bright, z_b = 1 * constant: 'b' wins
    wherever no bright object is, whatever 'b' itself looks like."""

    def __new__(cls):
        conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[0, 0] = 1.0
            conv.bias.copy_(torch.tensor([-1.0, 1.0]))
        fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            fc.weight.copy_(torch.tensor([[20.0, 0.0], [0.0, 1.0]]))
        return nn.Sequential(nn.Sequential(conv, nn.ReLU()),
                             nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)).eval()


def absence_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four 'a' images (a bright 4x4 square) and four 'b' images (a dark 4x4 square), 16 px."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 16, 16, generator=g) * 0.2
    for k in range(8):
        r, c = 2 + 2 * (k % 4), 8 - 2 * (k % 3)
        x[k, :, r:r + 4, c:c + 4] = 3.0 if k < 4 else -3.0
    return x, torch.tensor([0] * 4 + [1] * 4)


def test_the_absence_signal_flags_the_class_recognised_by_what_is_missing():
    from camkit.cam import make_cam
    from camkit.evaluate import absence_of_evidence, summarize_trust
    from camkit.faithfulness.metrics import randomised_copies, trust_rows

    model, (x, y) = AbsenceNet(), absence_batch()
    assert torch.equal(model(x).argmax(1), y)
    with make_cam("cam", model) as cam:
        maps = cam(x, y)
    rows = trust_rows(model, "cam", randomised_copies(model), x, maps, y, steps=4)
    result = {"cam": summarize_trust(rows, ["a", "b"])}
    absence = absence_of_evidence(result, ["a", "b"])
    assert absence["flagged"] == ["b"]
    assert absence["per_class"]["b"]["score"] > 0.95 > 0.5 > absence["per_class"]["a"]["score"]
    assert result["cam"]["per_class"]["a"]["road"] > result["cam"]["per_class"]["b"]["road"]


def test_absence_takes_the_most_faithful_method_per_class():
    from camkit.evaluate import absence_of_evidence

    def res(a, b):
        return {"per_class": {"a": {"retained_confidence": a}, "b": {"retained_confidence": b}}}

    out = absence_of_evidence({"m1": res(0.95, 0.4), "m2": res(0.97, 0.2), "m3": res(float("nan"), 0.3)}, ["a", "b"])
    assert out["per_class"] == {"a": {"score": 0.95, "method": "m1"}, "b": {"score": 0.2, "method": "m2"}}
    assert out["flagged"] == ["a"]


@pytest.mark.parametrize("a,b,flagged", [
    (0.95, 0.2, ["a"]),   # a keeps its confidence, b loses it: a is "not b"
    (0.95, 0.8, []),      # both keep it: the removal was too small to tell, no class stands out
    (0.7, 0.1, []),       # a loses 30 %: it has evidence of its own
])
def test_a_class_is_flagged_when_it_keeps_its_confidence_and_another_does_not(a, b, flagged):
    from camkit.evaluate import absence_of_evidence

    res = {"m": {"per_class": {"a": {"retained_confidence": a}, "b": {"retained_confidence": b}}}}
    assert absence_of_evidence(res, ["a", "b"])["flagged"] == flagged


def test_methods_failing_the_sanity_check_rank_last_then_by_road():
    from camkit.evaluate import rank_methods

    r = {"methods": {"x": {"sanity_passed": False, "road": 0.9}, "y": {"sanity_passed": True, "road": 0.1},
                     "z": {"sanity_passed": True, "road": 0.3}, "w": {"sanity_passed": True, "road": float("nan")}}}
    assert rank_methods(r) == ["z", "y", "w", "x"]


# ---------------------------------------------------------------- a run, no boxes

def test_evaluate_run_scores_every_method_and_class_without_boxes(tiny_run, monkeypatch):
    """The exact CAM equals Grad-CAM for a GAP -> Linear head, so every number agrees; per
    class images add up; each score lies in its range; model.json is read once."""
    import camkit.train.run
    from camkit.evaluate import TRUST_KEYS, evaluate_run

    read, real = [], camkit.train.run._read_json
    monkeypatch.setattr(camkit.train.run, "_read_json", lambda path, what: read.append(path.name) or real(path, what))
    res = evaluate_run(tiny_run, ["cam", "gradcam"], steps=1, limit=6, percentiles=(50, 80))
    assert read.count("model.json") == 1
    assert res["split"] == "valid" and res["images"] == 6
    cam, grad = res["methods"]["cam"], res["methods"]["gradcam"]
    assert set(cam["per_class"]) == {"bag", "trouser"} and sum(c["images"] for c in cam["per_class"].values()) == 6
    for key in TRUST_KEYS:
        if math.isfinite(cam[key]):
            assert cam[key] == pytest.approx(grad[key], abs=1e-3), key
    assert 0 <= cam["deletion_auc"] <= 1 and 0 <= cam["average_drop"] <= 1 and -1 <= cam["road"] <= 1
    worst = max(cam["sanity_head"], cam["sanity_last_stage"])
    assert -1 <= cam["sanity_head"] <= 1 and cam["sanity_passed"] == (worst < 0.5)
    assert set(res["absence"]["per_class"]) <= {"bag", "trouser"}


def test_the_train_split_is_the_data_folder_minus_the_held_out_images(tiny_run, canvas_dir):
    from camkit.evaluate import run_images
    from camkit.train.run import read_valid

    files, targets = run_images(tiny_run, "train")
    held = {v.file.resolve() for v in read_valid(tiny_run)}
    assert len(files) == 80 - len(held) and not held & {f.resolve() for f in files}
    assert targets[:2] == [0, 1]  # interleaved: a --limit keeps both classes


def test_cam_eval_without_boxes_prints_saves_and_reports(cli, run_copy, monkeypatch):
    """The command is `cam_eval` (one call, which writes the result it returns) and prints the
    same `trust_table` the report shows."""
    import camkit.evaluate as ev
    import camkit.report
    from camkit.report import build
    from camkit.train.run import read_cam_trust

    done, tables, real_eval, real_table = [], [], ev.cam_eval, ev.trust_table
    monkeypatch.setattr(ev, "cam_eval", lambda *a, **k: done.append(real_eval(*a, **k)) or done[-1])
    spy = lambda result: tables.append(json.dumps(result)) or real_table(result)  # noqa: E731
    monkeypatch.setattr(ev, "trust_table", spy)
    monkeypatch.setattr(camkit.report, "trust_table", spy)   # as the report imports it
    code, out, err = cli("cam-eval", run_copy, "--methods", "cam,layercam", "--limit", "2", "--steps", "1")
    assert code == 0, err
    assert "sanity" in out and "layercam" in out and out.strip().endswith("cam_trust.json")
    saved = read_cam_trust(run_copy)
    assert saved["images"] == 2 and set(saved["methods"]) == {"cam", "layercam"}
    assert len(done) == 1 and done[0].saved and done[0].path == run_copy / "cam_trust.json"
    assert (run_copy / "cam_trust.json").read_text() == json.dumps(done[0].result, indent=1)
    page = build(run_copy).read_text()
    assert "Can these heatmaps be trusted?" in page and "layercam" in page.split("id='trust'")[1]
    assert tables == [json.dumps(done[0].result)] * 2   # the command's table, then the report's


def test_cam_eval_scores_identical_maps_once_and_says_so(cli, run_copy):
    """On the tiny run's CAM head Grad-CAM's maps equal the exact CAM's: measured, printed,
    saved, and the report's trust table names the method they equal."""
    from camkit.report import build
    from camkit.train.run import read_cam_trust

    code, out, err = cli("cam-eval", run_copy, "--methods", "cam,gradcam,layercam", "--limit", "2", "--steps", "1")
    assert code == 0, err
    assert "gradcam = cam (same maps)" in out and "layercam = " not in out
    saved = read_cam_trust(run_copy)
    assert saved["same_maps"] == {"gradcam": "cam"} and saved["methods"]["gradcam"] == saved["methods"]["cam"]
    assert "gradcam = cam (same maps)" in build(run_copy).read_text().split("id='trust'")[1]


def test_cam_eval_json_and_a_smaller_evaluation_does_not_replace_a_larger(cli, run_copy):
    code, out, _ = cli("cam-eval", "--model", run_copy, "--methods", "cam", "--limit", "2", "--steps", "1", "--json")
    assert code == 0 and json.loads(out)["images"] == 2
    code, out, _ = cli("cam-eval", run_copy, "--methods", "cam", "--limit", "1", "--steps", "1")
    assert code == 0 and "not saved over a larger earlier evaluation" in out
    assert json.loads((run_copy / "cam_trust.json").read_text())["images"] == 2


@pytest.mark.parametrize("args,message", [
    ((), "give a run folder"),
    (("{boxes}",), "a boxes file needs --model"),
    (("{run}", "--model", "{other}"), "--model names another"),
    (("{run}", "--limit", "0"), "--limit must be at least 1"),
    (("{run}", "--split", "test"), "Invalid value for '--split'"),
])
def test_cam_eval_argument_errors_are_one_line(cli, run_copy, canvas_dir, tmp_path, args, message):
    names = {"boxes": canvas_dir / "boxes.json", "run": run_copy, "other": tmp_path}
    code, _, err = cli("cam-eval", *[a.format(**names) for a in args])
    assert code == 2 and err.strip().splitlines() == [f"error: {err.strip()[7:]}"] and message in err


def test_the_report_says_when_the_run_was_not_evaluated_without_boxes(run_copy):
    from camkit.report import build

    page = build(run_copy).read_text()
    assert "Not evaluated yet: run <code>camkit cam-eval RUN</code>" in page
