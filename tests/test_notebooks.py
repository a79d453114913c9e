"""The example notebooks in examples/, executed as a reader runs them, in their small mode.

Each notebook runs once (module-scoped cache) with nbclient on an ipykernel started from this
interpreter (a kernel spec written to a temporary folder, so a `python3` spec installed elsewhere
cannot pick another Python), in a temporary copy of examples/ so nothing is written into the
repository, with CAMKIT_NOTEBOOK_SMALL=1 (tiny sizes) and CAMKIT_NOTEBOOK_OFFLINE=1 (no crawl,
no weight download: the same path as offline, whatever the machine's network). The three
together take about 21 s on an idle 2-core CPU (exam 12.5 s, course 5.5 s, regression 3 s).
exam.ipynb runs here only in the checks every notebook gets without executing it; it is executed,
and checked, once, on the installed wheel (tests/test_install.py, its tests marked `notebooks` too).

Select them with `pytest -m notebooks`; skip them with `-m "not notebooks"`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.notebooks

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CELL_TIMEOUT = 300
ANSI = re.compile(r"\x1b\[[0-9;]*m")
NUMBER = r"-?\d+\.\d+"


class Executed:
    """An executed notebook: its cells, the text it printed and the number of figures."""

    def __init__(self, nb, seconds: float, workdir: Path):
        self.nb, self.seconds, self.workdir = nb, seconds, workdir

    def outputs(self):
        return [o for c in self.nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]

    @property
    def text(self) -> str:
        """stdout, and the plain text of results and displays (stderr left out: warnings)."""
        parts = []
        for o in self.outputs():
            if o.output_type == "stream" and o.name == "stdout":
                parts.append(o.text)
            elif o.output_type in ("execute_result", "display_data"):
                parts.append(o.get("data", {}).get("text/plain", ""))
        return "\n".join(parts)

    @property
    def figures(self) -> int:
        return sum("image/png" in o.get("data", {}) for o in self.outputs())


def _kernel_manager(spec_root: Path, python: str | Path = sys.executable):
    """A KernelManager whose kernel is `python -m ipykernel_launcher` (by default the venv running
    pytest), never whatever `python` a user-level `python3` kernel spec points at."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = spec_root / "camkit-test-python"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "camkit tests", "language": "python"}))
    return KernelManager(kernel_name="camkit-test-python",
                         kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_root)]))


def _short_error(e: Exception) -> str:
    text = ANSI.sub("", str(e))
    return text if len(text) < 4000 else text[:1500] + "\n...\n" + text[-2500:]


def execute_notebook(name: str, work: Path, spec_root: Path, env: dict[str, str],
                     python: str | Path = sys.executable, extra_cells: tuple[str, ...] = ()) -> Executed:
    """Copy examples/NAME into `work` and run it there, in its small offline mode, on `python`'s
    ipykernel, with `extra_cells` appended; a failing cell raises an AssertionError naming it."""
    shutil.copy(EXAMPLES / name, work / name)
    nb = nbformat.read(work / name, as_version=4)
    nb.cells += [nbformat.v4.new_code_cell(c) for c in extra_cells]
    env = {**env, "CAMKIT_NOTEBOOK_SMALL": "1", "CAMKIT_NOTEBOOK_OFFLINE": "1"}
    km = _kernel_manager(spec_root, python)
    client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(work)}})
    start = time.perf_counter()
    try:
        client.execute(env=env)
    except nbclient.exceptions.CellExecutionError as e:
        raise AssertionError(f"{name}: a cell failed\n{_short_error(e)}") from None
    finally:
        if km.has_kernel:  # nbclient leaves a kernel manager it was given running
            km.shutdown_kernel(now=True)
    return Executed(nb, time.perf_counter() - start, work)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """name -> Executed, each notebook run at most once (a failure is remembered, not rerun)."""
    cache: dict[str, Executed | str] = {}

    def run(name: str) -> Executed:
        if isinstance(cache.get(name), str):
            pytest.fail(cache[name], pytrace=False)
        if name not in cache:
            try:
                cache[name] = execute_notebook(name, tmp_path_factory.mktemp(f"nb-{Path(name).stem}"),
                                               tmp_path_factory.mktemp("kernels"), dict(os.environ))
            except AssertionError as e:
                cache[name] = str(e)
                pytest.fail(cache[name], pytrace=False)
            print(f"{name}: executed in {cache[name].seconds:.1f} s")
        return cache[name]

    return run


NOTEBOOKS = {"exam.ipynb": 5, "regression.ipynb": 2, "course.ipynb": 4}  # name -> figures at least
# exam.ipynb is executed once in the suite, on the wheel installed in a fresh venv: its checks are in
# tests/test_install.py (marked `notebooks` as well), so it is not executed a second time here
EXECUTED_HERE = [name for name in NOTEBOOKS if name != "exam.ipynb"]


def test_every_example_notebook_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", EXECUTED_HERE)
def test_notebook_runs_without_an_error_cell(executed, name):
    errors = [o for o in executed(name).outputs() if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"


@pytest.mark.parametrize("name", EXECUTED_HERE)
def test_notebook_draws_its_figures(executed, name):
    assert executed(name).figures >= NOTEBOOKS[name]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_outputs_of_a_full_run(name):
    """People read the committed notebooks on the web: outputs present, no error, not the small mode."""
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "every code cell executed"
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= NOTEBOOKS[name]
    assert "full mode" in "".join(o.get("text", "") for o in outputs)
    assert (EXAMPLES / name).stat().st_size < 1_500_000


def test_regression_prints_the_exams_trace_exactly(executed):
    text = executed("regression.ipynb").text

    def pair(label: str) -> tuple[str, str]:
        m = re.search(rf"{re.escape(label)}\s+tensor\(\[\[\s*({NUMBER}),\s*({NUMBER})\]\]\)", text)
        assert m, f"'{label}' not printed"
        return m.group(1), m.group(2)

    assert pair("first gradient:") == ("-15.7290", "14.7198")
    assert pair("weight after step 1:") == ("-4.9000", "9.9000")
    assert pair("weight after Adam (5):") == ("-4.5006", "9.5008")
    assert pair("final weight:") == ("2.4925", "3.9607")
    assert "Hessian eigenvalues: 1.9631, 2.3347" in text
    assert "contraction factor rho = 0.6074" in text
    assert "after step 15: distance to w* 0.0364  (bound 0.0612)" in text


def test_course_prints_the_comparison_table(executed):
    text = executed("course.ipynb").text
    rows = re.findall(r"^\s+(\d)  (.+?)\s+(\d+\.\d\d)\s+(\d+\.\d{4})\s+(\d+)\s+\d+\.\d$", text, re.M)
    assert [int(r[0]) for r in rows] == [0, 1, 5, 8]
    assert [r[1] for r in rows] == ["baseline (tutorial net)", "arch 1: 4 conv 32", "BatchNorm after convs",
                                    "NLL loss (log_softmax)"]
    assert all(0 <= float(r[2]) <= 100 for r in rows)
    baseline, nll = rows[0], rows[3]
    assert (baseline[2], baseline[3]) == (nll[2], nll[3])  # CrossEntropy == NLL of log_softmax
    assert re.search(r"Accuracy of the network on the \d+ test images: \d+ %", text)
