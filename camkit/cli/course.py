"""`camkit course`: the course's walkthroughs and training experiments, reproduced exactly."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from camkit.cli._options import JsonOpt, SeedOpt, emit, split_list, stdout_for
from camkit.core.choices import CourseDataset, Loader
from camkit.errors import CamkitError

course_app = typer.Typer(no_args_is_help=True, help="Course companions reproduced exactly.")

StepOpt = Annotated[bool, typer.Option("--fast-step/--course-step",
                                       help="camkit's step (one flat optimizer call, one thread for tiny CPU "
                                       "batches) or the course's own, to time against it")]
TutorialWorkersOpt = Annotated[int, typer.Option(help="DataLoader worker processes for --loader torchvision "
                                                 "(the tutorial's 2)")]
LoaderOpt = Annotated[Loader, typer.Option(help="tensor (fast) or torchvision (the course's)")]
DataDirOpt = Annotated[Optional[Path], typer.Option(help="where the dataset files are (or go when downloading)")]
LimitOpt = Annotated[Optional[int], typer.Option(help="use only the first N training images")]
TestLimitOpt = Annotated[Optional[int], typer.Option(help="use only the first N test images")]


@course_app.command("regression")
def course_regression(
    seed: SeedOpt = 7676,
    n: Annotated[int, typer.Option(help="data points")] = 100,
    intercept: float = 2.5, slope: float = 4.0,
    noise: Annotated[float, typer.Option(help="noise standard deviation")] = 0.5,
    init: Annotated[str, typer.Option(help="initial weight: intercept,slope")] = "-5.0,10.0",
    schedule: Annotated[str, typer.Option(help="OPTIMIZER:LR:STEPS phases, in order")] = "adam:0.1:5,sgd:0.2:10",
    plot: Annotated[Optional[Path], typer.Option(help="write the fit and loss figure here (PNG)")] = None,
    as_json: JsonOpt = False,
):
    """The exam's regression trace: Adam, then SGD continuing from it, step by step."""
    from camkit.course import regression

    t = regression.trace(seed, n, intercept, slope, noise, regression.parse_pair(init, "--init"), schedule)
    if plot:
        regression.plot(t, plot)
    if as_json:
        emit([asdict(s) for s in t.steps])
    else:
        print(regression.render(t))


@course_app.command("lenet")
def course_lenet(seed: SeedOpt = 0, lr: float = 0.01, as_json: JsonOpt = False):
    """The LeNet autograd walkthrough; manual SGD and optim.SGD are checked to agree."""
    from camkit.course.lenet import walkthrough

    w = walkthrough(seed, lr)
    if as_json:
        emit(asdict(w))
        return
    print(w.network)
    print(f"len(list(net.parameters())) = {w.n_params}")
    print(f"params[0].size() = torch.Size({w.first_param_size})")
    print(f"output = {w.output}")
    print(f"MSE loss = {w.loss:.6f}")
    print(f"conv1.bias.grad before backward = {w.bias_grad_before}")
    print(f"conv1.bias.grad after backward = {w.bias_grad_after}")
    print(f"manual f.data.sub_(f.grad * {w.lr}) vs optim.SGD(lr={w.lr}): max |difference| = "
          f"{w.max_abs_difference:.2e} (asserted <= 1e-6; last-bit rounding only)")


@course_app.command("mnist")
def course_mnist(
    dataset: Annotated[CourseDataset, typer.Option(help="cifar10 does not fit this net")] = CourseDataset.mnist,
    data_dir: DataDirOpt = None,
    epochs: int = 19, bs: int = 32, lr: float = 0.001, seed: SeedOpt = 0,
    loader: LoaderOpt = Loader.tensor,
    fast: StepOpt = True,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes for --loader torchvision")] = 0,
    limit: LimitOpt = None, test_limit: TestLimitOpt = None,
    out: Annotated[Path, typer.Option(help="where the figures go")] = Path("course-mnist"),
    as_json: JsonOpt = False,
):
    """The MNIST homework: per-epoch fit for training and validation, curves, sample images."""
    from camkit.course.experiments import run_mnist

    with stdout_for(as_json):
        result = run_mnist(dataset.value, data_dir, epochs, bs, lr, seed, loader.value, limit, test_limit, out,
                           quiet=as_json, fast=fast, workers=workers)
    if as_json:
        emit(asdict(result))
    else:
        print(f"figures: {', '.join(result.figures)}")


@course_app.command("cifar")
def course_cifar(
    dataset: Annotated[CourseDataset, typer.Option(help="1-channel sets are padded to 3x32x32")] = CourseDataset.cifar10,
    data_dir: DataDirOpt = None,
    epochs: int = 5, bs: int = 4, lr: float = 0.001, seed: SeedOpt = 0,
    loader: LoaderOpt = Loader.tensor,
    fast: StepOpt = True,
    workers: TutorialWorkersOpt = 2,
    limit: LimitOpt = None, test_limit: TestLimitOpt = None,
    log_every: Annotated[int, typer.Option(help="print the running loss every N mini-batches")] = 1000,
    out: Annotated[Path, typer.Option(help="where the figures go")] = Path("course-cifar"),
    as_json: JsonOpt = False,
):
    """The CIFAR-10 tutorial classifier: training log, test accuracy overall and per class."""
    from camkit.course.experiments import cifar_tutorial, result_dict

    with stdout_for(as_json):
        result, grid = cifar_tutorial(dataset.value, data_dir, epochs, bs, lr, seed, loader.value, limit,
                                      test_limit, log_every, out, quiet=as_json, fast=fast, workers=workers)
    if as_json:
        emit({**result_dict(result), "figures": [str(grid)]})
    else:
        print(f"training images: {grid}")


@course_app.command("variants")
def course_variants(
    only: Annotated[Optional[List[str]], typer.Option(help="variants 1-9, repeated or comma-separated (default: all)")] = None,
    dataset: CourseDataset = CourseDataset.cifar10, data_dir: DataDirOpt = None,
    epochs: int = 5, bs: int = 4, seed: SeedOpt = 0,
    loader: LoaderOpt = Loader.tensor,
    fast: StepOpt = True,
    workers: TutorialWorkersOpt = 2,
    limit: LimitOpt = None, test_limit: TestLimitOpt = None,
    out: Annotated[Path, typer.Option(help="variants.md/.csv and the figures go here")] = Path("course-variants"),
    as_json: JsonOpt = False,
):
    """The nine variants against the tutorial baseline: table, bar chart, loss curves."""
    from camkit.course.experiments import result_dict, run_variants

    chosen = _numbers(only, "numbers 1-9")
    with stdout_for(as_json):
        results = run_variants(chosen, dataset.value, data_dir, epochs, bs, seed, loader.value, limit, test_limit,
                               out, quiet=as_json, fast=fast, workers=workers)
    if as_json:
        emit([result_dict(r) for r in results])
    else:
        print((out / "variants.md").read_text())


def _numbers(only: list[str] | None, what: str) -> list[int] | None:
    """`--only 1,5 --only 9` -> [1, 5, 9] (None: all); the range is checked by the library."""
    if not only:
        return None
    items = split_list(only, "--only")
    if not all(v.isdigit() for v in items):
        raise CamkitError(f"--only must be comma-separated {what}, not '{','.join(only)}'")
    return [int(v) for v in items]


@course_app.command("facts")
def course_facts(
    only: Annotated[Optional[List[str]], typer.Option(help="statements 1-10, repeated or comma-separated "
                                                      "(default: all)")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="write the figures for 8 and 10 into this folder")] = None,
    as_json: JsonOpt = False,
):
    """The exam's ten true/false statements, each settled by a computation run here."""
    from camkit.course.facts import facts

    chosen = _numbers(only, "statement numbers 1-10")
    with stdout_for(as_json):
        results = facts(chosen, plot, quiet=as_json)
    if as_json:
        emit([{"n": f.n, "statement": f.statement, "verdict": f.verdict, "evidence": f.evidence,
               "figures": f.figures} for f in results])

