"""`camkit calc`: the course's calculators, each printing the formula, the numbers and the result."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, List, Optional

import typer

from camkit.cli._options import JsonOpt, emit

calc_app = typer.Typer(no_args_is_help=True, help="The course's calculators: formula, numbers, result.")


def _answer(answer, as_json: bool) -> None:
    emit(asdict(answer)) if as_json else print(answer.text())


@calc_app.command("conv")
def calc_conv(
    input: Annotated[str, typer.Option(help="H x W x C, e.g. 32x32x3")],
    filters: Annotated[int, typer.Option(help="number of filters (output channels)")] = 1,
    kernel: Annotated[int, typer.Option(help="kernel side K")] = 3,
    stride: Annotated[int, typer.Option(help="stride S")] = 1,
    pad: Annotated[int, typer.Option(help="zero padding P")] = 0,
    bias: Annotated[bool, typer.Option(help="count one bias per filter")] = True,
    layers: Annotated[Optional[str], typer.Option(help="a chain instead, e.g. 'conv6k5,pool2,conv16k5,pool2'")] = None,
    as_json: JsonOpt = False,
):
    """Convolution output size and parameters (or a whole chain with --layers)."""
    from camkit.course import calc

    _answer(calc.chain(input, layers) if layers else calc.conv(input, filters, kernel, stride, pad, bias), as_json)


@calc_app.command("pool")
def calc_pool(
    input: Annotated[str, typer.Option(help="H x W x C")],
    kernel: Annotated[int, typer.Option(help="pooling window K")] = 2,
    stride: Annotated[Optional[int], typer.Option(help="stride (default: K)")] = None,
    as_json: JsonOpt = False,
):
    """Pooling output size."""
    from camkit.course import calc

    _answer(calc.pool(input, kernel, stride), as_json)


# negative numbers are values, not options: `camkit calc softmax -1 -2` needs no `--`
@calc_app.command("softmax", context_settings={"ignore_unknown_options": True})
def calc_softmax(values: Annotated[List[str], typer.Argument(help="scores, e.g. 0.4 2.0 -1 0.32")],
                 as_json: JsonOpt = False):
    """Numerically stable softmax."""
    from camkit.course import calc

    _answer(calc.softmax(values), as_json)


@calc_app.command("loss")
def calc_loss(pred: Annotated[str, typer.Option(help="probabilities, comma-separated")],
              target: Annotated[str, typer.Option(help="one-hot or probabilities, comma-separated")],
              as_json: JsonOpt = False):
    """MSE, cross-entropy (categorical and binary) and NLL of a prediction."""
    from camkit.course import calc

    _answer(calc.loss(pred, target), as_json)


@calc_app.command("params")
def calc_params(layers: Annotated[List[str], typer.Argument(help='e.g. "Linear(4,1,bias=False)"')],
                as_json: JsonOpt = False):
    """Trainable parameters of torch.nn layer expressions (parsed safely, never eval'd)."""
    from camkit.course import calc

    _answer(calc.params(*layers), as_json)
