import json

import pytest

from camkit.course import calc
from camkit.course.lenet import walkthrough
from camkit.course.regression import fmt, trace
from camkit.errors import CamkitError


# ---------------------------------------------------------------- regression trace

@pytest.fixture(scope="module")
def exam():
    return trace()


def test_first_adam_step_matches_the_exam(exam):
    assert fmt(exam.steps[0].grad) == "tensor([[-15.7290,  14.7198]])"
    assert fmt(exam.steps[0].weight) == "tensor([[-4.9000,  9.9000]])"


def test_after_five_adam_updates_matches_the_exam(exam):
    assert [s.optimizer for s in exam.steps] == ["adam"] * 5 + ["sgd"] * 10
    assert fmt(exam.steps[4].weight) == "tensor([[-4.5006,  9.5008]])"


def test_final_sgd_weight_matches_the_exam(exam):
    assert fmt(exam.steps[-1].weight) == "tensor([[2.4925, 3.9607]])"


def test_verdict_compares_with_least_squares(exam):
    assert exam.ols == pytest.approx([2.5288, 3.9581], abs=1e-4)
    assert "global minimum" in exam.verdict and "2.5288" in exam.verdict


def test_options_change_the_experiment():
    other = trace(schedule="sgd:0.2:3", init=(0.0, 0.0))
    assert len(other.steps) == 3 and other.steps[0].optimizer == "sgd"
    assert other.steps[0].grad != trace().steps[0].grad
    with pytest.raises(CamkitError, match="OPTIMIZER:LR:STEPS"):
        trace(schedule="rmsprop:0.1:5")


def test_regression_cli_json_and_plot(cli, tmp_path):
    code, out, err = cli("course", "regression", "--json", "--plot", tmp_path / "fit.png")
    assert code == 0, err
    steps = json.loads(out)
    assert len(steps) == 15 and set(steps[0]) == {"optimizer", "step", "grad", "weight", "loss"}
    assert round(steps[-1]["weight"][1], 4) == 3.9607
    assert (tmp_path / "fit.png").stat().st_size > 10_000


# ---------------------------------------------------------------- LeNet walkthrough

def test_lenet_walkthrough_facts():
    w = walkthrough(seed=1)
    assert w.n_params == 10 and w.first_param_size == [6, 1, 5, 5] and len(w.output) == 10
    assert w.bias_grad_before is None and len(w.bias_grad_after) == 6 and any(w.bias_grad_after)
    assert w.max_abs_difference <= 1e-6
    assert walkthrough(seed=1).output == w.output and walkthrough(seed=2).output != w.output


# ---------------------------------------------------------------- calculators

def test_conv_examples_from_the_course():
    a = calc.conv("32x32x3", filters=10, kernel=5, stride=1, pad=2)
    assert a.result["output_shape"] == [32, 32, 10] and a.result["parameters"] == 760
    b = calc.conv("32x32x3", filters=64, kernel=3, stride=1, pad=1)
    assert b.result["output_shape"] == [32, 32, 64] and b.result["parameters"] == 1792


def test_strided_conv_and_pool_by_hand():
    # (227 - 11) / 4 + 1 = 55, params (11*11*3 + 1) * 96 = 34944 (AlexNet conv1)
    a = calc.conv("227x227x3", filters=96, kernel=11, stride=4)
    assert a.result["output_shape"] == [55, 55, 96] and a.result["parameters"] == 34944
    assert calc.pool("55x55x96", kernel=3, stride=2).result["output_shape"] == [27, 27, 96]
    assert calc.conv("7x7x1", 1, 3, stride=2, pad=0).result["output_shape"] == [3, 3, 1]
    assert calc.conv("8x8x1", 1, 3, stride=2).notes  # 5/2 is not whole: said so


def test_chain_gives_the_classic_flatten_size():
    a = calc.chain("32x32x3", "conv6k5,pool2,conv16k5,pool2")
    assert a.result["flatten"] == 16 * 5 * 5 and a.result["output"] == "5x5x16"
    assert a.result["parameters"] == (5 * 5 * 3 + 1) * 6 + (5 * 5 * 6 + 1) * 16


def test_softmax_is_stable_and_correct():
    a = calc.softmax([0.4, 2.0, 0.001, 0.32])
    assert a.result["softmax"] == pytest.approx([0.132501, 0.656279, 0.088907, 0.122313], abs=1e-6)
    big = calc.softmax([1000, 1000])
    assert big.result["softmax"] == [0.5, 0.5]


def test_losses_by_hand():
    r = calc.loss("0.001,0.9,0.001,0.098", "0,0,0,1").result
    sse = 0.001 ** 2 + 0.9 ** 2 + 0.001 ** 2 + (0.098 - 1) ** 2
    assert r["mse"] == pytest.approx(sse / 4, abs=1e-6) and r["half_sum_squared_error"] == pytest.approx(sse / 2, abs=1e-6)
    assert r["cross_entropy"] == pytest.approx(2.322788, abs=1e-6) == r["nll"]
    import math
    bce = -(math.log(0.999) + math.log(0.1) + math.log(0.999) + math.log(0.098))
    assert r["binary_cross_entropy_sum"] == pytest.approx(bce, abs=1e-6)


def test_loss_says_when_probabilities_do_not_sum_to_one():
    assert any("sums to" in n for n in calc.loss("0.5,0.6", "1,0").notes)
    with pytest.raises(CamkitError, match=r"probabilities in \[0, 1\]"):
        calc.loss("1.5,0", "1,0")


def test_params_of_layer_expressions():
    r = calc.params("Linear(4,1,bias=False)", "Conv2d(1,1,(2,2),bias=False)")
    assert list(r.result["parameters"].values()) == [4, 4] and "same number" in r.notes[0]
    assert calc.params("Linear(1,1)").result["parameters"] == {"Linear(1,1)": 2}
    assert calc.params("nn.Conv2d(3, 64, 3)").result["parameters"] == {"nn.Conv2d(3, 64, 3)": 1792}
    assert calc.params("Linear(100000, 100000)").result["parameters"]["Linear(100000, 100000)"] == 10_000_100_000


@pytest.mark.parametrize("expr", ["__import__('os').system('true')", "Linear(4, 1, bias=print)",
                                  "Sequential()", "Linear(*[1,2])", "open('x')"])
def test_params_refuses_anything_outside_the_allow_list(expr):
    with pytest.raises(CamkitError):
        calc.params(expr)


@pytest.mark.parametrize("args,message", [
    (("calc", "conv", "--input", "32x32", "--filters", "3"), "--input must look like"),
    (("calc", "conv", "--input", "4x4x1", "--kernel", "7"), "does not fit"),
    (("calc", "conv", "--input", "8x8x1", "--kernel", "3", "--stride", "-1"), "stride must be >= 1"),
    (("calc", "softmax", "1", "two"), "must be numbers"),
    (("calc", "loss", "--pred", "0.5,0.5", "--target", "1,0,0"), "has 2 values and --target 3"),
    (("calc", "conv", "--input", "32x32x3", "--layers", "conv6k5,blur3"), "layer 'blur3' must look like"),
    (("calc", "params", "eval('1')"), "not an allowed layer"),
    (("course", "regression", "--init", "1"), "--init must be two numbers"),
])
def test_bad_calculator_input_is_one_line_error(cli, args, message):
    code, out, err = cli(*args)
    assert code == 2 and message in err and err.count("\n") == 1, err
