"""Options that several commands share, defined once (the `hf` CLI's `TokenOpt` pattern), and
the helpers that turn library results into output."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from camkit.core.choices import CamEngine
from camkit.errors import CamkitError

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON only on stdout (progress and warnings go to stderr)")]
ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="run folder written by camkit train")]
SeedOpt = Annotated[int, typer.Option(help="random seed")]
EngineOpt = Annotated[CamEngine, typer.Option(help="torch, onnx (ONNX Runtime: exact CAM and predictions, from "
                                              "camkit export RUN --onnx or exported now) or auto: onnx where "
                                              "the run has an exported graph and it is the faster, else torch")]
DataRootOpt = Annotated[Optional[Path], typer.Option("--data", help="where the run's dataset is now, if it moved")]


def finite(data):
    """`data` with every NaN / infinity replaced by None: JSON has no such numbers."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


def emit(data) -> None:
    """Strict JSON on stdout."""
    print(json.dumps(finite(data), indent=1, default=str, allow_nan=False))


@contextlib.contextmanager
def stdout_for(as_json: bool) -> Iterator[None]:
    """With --json, whatever a library prints (torch's 'Downloading: ...', fastai's tables)
    goes to stderr, so stdout carries only the JSON."""
    if not as_json:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def split_list(values: list[str] | None, what: str) -> list[str]:
    """Repeatable list options that also take comma-separated values: `--x a,b --x c`."""
    items = [v.strip() for value in values or [] for v in value.split(",") if v.strip()]
    if values and not items:
        raise CamkitError(f"{what} is empty")
    return items
