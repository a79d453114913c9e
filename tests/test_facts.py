"""`camkit course facts`: every verdict equals the course's key, and each one follows its evidence
(change what is measured and the verdict changes with it)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.course import facts as F
from camkit.errors import CamkitError


@pytest.fixture(scope="module")
def all_facts():
    return {f.n: f for f in F.facts()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return F.stand_in_folder(tmp_path_factory.mktemp("mnist_stand_in"))


@pytest.fixture(scope="module")
def multi_label18(folder):
    """The snippet with resnet18 and a multi-label target: statements 2 and 3 come out False."""
    return F.measure_snippet(folder, arch="resnet18", multi_label=True)


# ---------------------------------------------------------------- the key

@pytest.mark.parametrize("n", range(1, 11))
def test_verdict_matches_the_course_key(all_facts, n):
    assert all_facts[n].verdict is F.KEY[n], all_facts[n].evidence


def test_every_fact_has_its_statement_and_evidence(all_facts):
    assert sorted(all_facts) == list(range(1, 11))
    for n, f in all_facts.items():
        assert f.statement == F.STATEMENTS[n] and len(f.evidence) > 40 and f.figures == []


def test_the_batch_shape_is_read_from_the_pipeline(all_facts):
    assert "(64, 3, 28, 28)" in all_facts[1].evidence and "channels identical" in all_facts[1].evidence


def test_the_loss_is_the_one_fastai_chose(all_facts):
    assert "CrossEntropyLossFlat" in all_facts[2].evidence


def test_the_body_parameter_count_is_resnet34s(all_facts):
    assert "21,284,672 parameters, torchvision's resnet34 without its fc has 21,284,672" in all_facts[3].evidence


# ---------------------------------------------------------------- statements 1-4: the snippet

def test_stand_in_folder_has_mnist_samples_layout(folder):
    files = sorted(folder.glob("*/*/*.png"))
    assert {p.parent.relative_to(folder).as_posix() for p in files} == {
        f"{split}/{c}" for split in ("train", "valid") for c in F.STAND_IN_CLASSES}
    assert len(files) == 2 * (40 + 10)
    with Image.open(files[0]) as im:
        assert im.mode == "L" and im.size == (28, 28)


def test_greyscale_loading_makes_statement_1_true(folder):
    s = F.measure_snippet(folder, arch="resnet18", greyscale=True)
    assert s.x_shape == (64, 1, 28, 28) and not s.reshape_ok
    assert F.greyscale_fact(s).verdict is True


def test_a_multi_label_target_gets_bce_so_statement_2_is_false(multi_label18):
    assert type(multi_label18.loss_func).__name__ == "BCEWithLogitsLossFlat"
    assert F.loss_fact(multi_label18).verdict is False


def test_a_resnet18_body_is_not_resnet34(multi_label18):
    assert multi_label18.body_params == F.torchvision_body_params("resnet18") != F.torchvision_body_params("resnet34")
    assert F.transfer_fact(multi_label18).verdict is False
    assert F.transfer_fact(multi_label18, arch="resnet18").verdict is True


def test_pretrained_false_is_not_transfer_learning(multi_label18):
    assert F.transfer_fact(multi_label18, arch="resnet18", pretrained=False).verdict is False


@pytest.mark.parametrize("printout,device", [
    (F.COURSE_PRINTOUT, "cuda:0"),
    ("tensor([[0.5]], device='cuda:1')", "cuda:1"),
    ("TensorBase([[ 3.4148, -5.0356]], grad_fn=<AliasBackward0>)", "cpu"),
])
def test_printed_device(printout, device):
    assert F.printed_device(printout) == device


def test_a_cpu_printout_makes_statement_4_false():
    fact = F.gpu_fact("TensorBase([[ 3.4148, -5.0356]], grad_fn=<AliasBackward0>)")
    assert fact.verdict is False and "on cpu" in fact.evidence


# ---------------------------------------------------------------- statements 5-7, 9

def test_swapped_logits_give_softmax_near_0_1():
    assert F.softmax_fact((-5.0356, 3.4148)).verdict is True


def test_course_logits_give_softmax_near_1_0():
    assert F.softmax_fact(near=(1.0, 0.0)).verdict is True
    assert "[0.99979, 0.00021]" in F.softmax_fact().evidence


def test_linear_without_bias_has_one_parameter():
    fact = F.params_fact("Linear(1, 1, bias=False)")
    assert fact.verdict is False and "= 1 (claimed 2)" in fact.evidence


def test_conv_with_bias_has_one_more_parameter_than_linear():
    fact = F.same_params_fact(b="Conv2d(1, 1, (2, 2), bias=True)")
    assert fact.verdict is False and "= 5" in fact.evidence


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_zeroes_the_fraction_p_and_scales_the_rest(p):
    zeroed, scale = F.dropout_output(p)
    assert zeroed == pytest.approx(p, abs=0.002)
    assert scale == pytest.approx(1 / (1 - p), rel=1e-6)


def test_dropout_0_1_makes_statement_9_true():
    assert F.dropout_fact(p=0.1).verdict is True


# ---------------------------------------------------------------- statement 8

def test_linear_linear_never_beats_the_straight_line():
    a = F.approximate("none")
    assert min(a.mse) >= 0.999 * a.line_mse
    assert a.line_gap < 1e-5  # the net is exactly its collapsed line


def test_relu_between_approximates():
    a = F.approximate("relu")
    assert a.mse[-1] < 0.01 * a.line_mse and a.line_gap > 0.1
    assert F.approximation_fact("relu").verdict is True


def test_unknown_hidden_activation_is_an_error():
    with pytest.raises(CamkitError, match="hidden activation"):
        F.approximate("gelu")


# ---------------------------------------------------------------- statement 10

def test_bce_hessian_is_positive_definite_on_the_grid():
    assert F.convexity("bce").min_eigenvalue > 0


def test_sigmoid_with_mse_is_not_convex():
    assert F.convexity("mse").min_eigenvalue < -0.01
    assert F.convexity_fact("mse").verdict is False


def test_loss_of_weights_is_the_modules_loss():
    x, y = F.logistic_data()
    z = 0.5 - 1.5 * x.numpy()
    p = 1 / (1 + np.exp(-z))
    expected = -np.mean(y.numpy() * np.log(p) + (1 - y.numpy()) * np.log(1 - p))
    assert float(F.loss_of_weights("bce", x, y)(torch.tensor([0.5, -1.5], dtype=torch.float64))) == \
        pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- selection, rendering, CLI

def test_only_runs_the_chosen_statements_in_order():
    assert [f.n for f in F.facts([9, 5, 9])] == [5, 9]


@pytest.mark.parametrize("only", [[0], [11], [5, 12]])
def test_numbers_outside_1_to_10_are_an_error(only):
    with pytest.raises(CamkitError, match="1-10"):
        F.check_numbers(only)


def test_render_shows_verdict_evidence_and_figures():
    fact = F.Fact(6, F.STATEMENTS[6], True, "counted", ["a.png"])
    assert F.render([fact]).splitlines() == [
        " 6. " + F.STATEMENTS[6], "   verdict:  TRUE", "   evidence: counted", "   figure:   a.png"]


def test_cli_json_gives_n_statement_verdict_evidence(cli):
    code, out, err = cli("course", "facts", "--only", "5,9", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["n"] for r in rows] == [5, 9]
    assert all({"n", "statement", "verdict", "evidence"} <= set(r) for r in rows)
    assert [r["verdict"] for r in rows] == [False, False]


def test_cli_text_prints_each_verdict(cli):
    code, out, err = cli("course", "facts", "--only", "6", "--only", "7")
    assert code == 0, err
    assert out.count("verdict:  TRUE") == 2 and "Conv2d(1, 1, (2, 2), bias=False): 1*1*2*2 = 4" in out


def test_cli_plot_writes_the_figures(cli, tmp_path):
    out_dir = tmp_path / "new" / "figs"
    code, out, err = cli("course", "facts", "--only", "8,10", "--plot", out_dir, "--json")
    assert code == 0, err
    figures = [p for r in json.loads(out) for p in r["figures"]]
    assert sorted(Path(p).name for p in figures) == ["fact10-bce-surface.png", "fact8-approximation.png"]
    for p in figures:
        with open(p, "rb") as f:
            data = f.read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


@pytest.mark.parametrize("value,message", [("11", "not 11"), ("abc", "not 'abc'"), ("0", "not 0"),
                                           (",", "--only is empty")])
def test_cli_bad_only_is_one_error_line(cli, value, message):
    code, out, err = cli("course", "facts", "--only", value)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
