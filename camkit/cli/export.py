"""`camkit export RUN --onnx`: the run as a deployable explainer (camkit.export.onnx).

The options are parsed once into a frozen ExportSpec and checked before any work. Each
target (`--onnx`, `--web DIR`: camkit.share.web) is made by one library call, whose result the
command prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from camkit.cli._options import JsonOpt, emit, stdout_for
from camkit.errors import CamkitError


@dataclass(frozen=True)
class ExportSpec:
    """What `camkit export` makes from RUN, validated before the run is loaded."""
    run: Path
    onnx: bool = False
    out: Path | None = None
    opset: int = 17
    int8: bool = False
    web: Path | None = None

    def __post_init__(self):
        if not self.onnx and self.web is None:
            raise CamkitError("say what to export: --onnx, --web DIR or both")
        if self.web is not None and (self.web.exists() or self.web.is_symlink()):
            raise CamkitError(f"--web '{self.web}' already exists; --web writes a new folder")
        if not self.run.is_dir():
            raise CamkitError(f"run folder '{self.run}' does not exist")
        if self.out is not None and self.out.suffix.lower() != ".onnx":
            raise CamkitError(f"--out '{self.out}' must name an .onnx file")
        if not 13 <= self.opset <= 21:
            raise CamkitError(f"--opset must be between 13 and 21, not {self.opset}")


def run_export(spec: ExportSpec) -> dict:
    """Make every target of `spec`; returns what was written, as JSON-ready data."""
    from dataclasses import asdict

    from camkit.export.onnx import export_onnx

    done: dict = {}
    if spec.onnx:
        r = export_onnx(spec.run, spec.out, spec.opset, spec.int8)
        done["onnx"] = {"path": str(r.path), "sidecar": str(r.sidecar), "opset": r.opset, "int8": r.int8,
                        "input": r.input_dtype, "map_size": list(r.map_size), "max_abs_diff": r.max_abs_diff,
                        "parity": asdict(r.parity), "int8_gate": None if r.gate is None else asdict(r.gate),
                        "seconds": round(r.seconds, 2)}
    if spec.web is not None:
        from camkit.share.web import export_web

        w = export_web(spec.run, spec.web, int8=spec.int8, opset=spec.opset)
        done["web"] = {"folder": str(w.folder), "page": str(w.page), "graph_bytes": w.graph_bytes,
                       "folder_bytes": w.folder_bytes, "max_abs_diff": w.max_abs_diff}
    return done


def _print(done: dict) -> None:
    w = done.get("web")
    if w:
        print(f"wrote the page {w['page']} ({w['folder_bytes'] / 1e6:.1f} MB, graph max abs difference vs torch "
              f"{w['max_abs_diff']:.3g}): open it in a browser, from disk or any static host; it needs no server")
    o = done.get("onnx")
    if o:
        p = o["parity"]
        print(f"wrote {o['path']} and {Path(o['sidecar']).name} (opset {o['opset']}, {o['input']} input, "
              f"maps {o['map_size'][0]}x{o['map_size'][1]}{', INT8' if o['int8'] else ''})")
        print(f"max abs difference vs torch: {o['max_abs_diff']:.3g} (logits {p['logits']:.3g}, maps {p['maps']:.3g}, "
              f"probs {p['probs']:.3g}) on {p['images']} images")
        g = o["int8_gate"]
        if g:
            print(f"INT8 vs fp32 on {g['images']} held-out images: map correlation min {g['min_correlation']:.4f}, "
                  f"accuracy {g['accuracy_int8']:.1%} vs {g['accuracy_fp32']:.1%} ({g['mode']} quantization)")


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        run: Annotated[Path, typer.Argument(help="run folder written by camkit train (with the CAM head)")],
        onnx: Annotated[bool, typer.Option("--onnx", help="one ONNX graph: uint8 images in, logits, probs and "
                                           "every class's exact CAM out (needs camkit[onnx])")] = False,
        out: Annotated[Optional[Path], typer.Option(help="the .onnx file (default RUN/model.onnx, "
                                                    "RUN/model.int8.onnx with --int8); its sidecar is FILE.json")] = None,
        opset: Annotated[int, typer.Option(help="ONNX opset")] = 17,
        int8: Annotated[bool, typer.Option("--int8", help="quantize to INT8 (calibrated on the run's training "
                                           "images); written only if its maps and accuracy match fp32's")] = False,
        web: Annotated[Optional[Path], typer.Option("--web", help="a static page in this new folder: drop an image "
                                                    "or start the webcam, the probabilities and the CAM overlay, run "
                                                    "in the browser by onnxruntime-web (no server, no network)")] = None,
        as_json: JsonOpt = False,
    ):
        """Export the run as a deployable explainer, checked against torch before it is written."""
        spec = ExportSpec(run, onnx, out, opset, int8, web)
        with stdout_for(as_json):
            done = run_export(spec)
        emit(done) if as_json else _print(done)
