"""The real entry point, as a user's shell runs it: one line on stderr, exit 2, no traceback;
the CLI's typed choices, which must match the registries they name; and what each command
imports before it answers (help, version, argument errors, crawl, verify and credits never load
torch or fastai: assertions on modules, the seconds live in scripts/bench_startup.py)."""

import json
import os
import subprocess
import sys

import pytest

from camkit import __version__
from camkit.core.choices import CourseDataset, Engine, Method


def camkit(*args):
    return subprocess.run([sys.executable, "-m", "camkit.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize("args,message", [
    (("train", "--bogus", "1"), "No such option: --bogus"),
    (("cam", "x.jpg"), "Missing option '--model'"),
    (("train", "no/such/dir"), "data folder 'no/such/dir' does not exist"),
    (("calc", "softmax", "a"), "values must be numbers"),
    (("cam", "x.jpg", "-m", "r", "--method", "gradkam"), "'gradkam' is not one of 'cam', 'gradcam'"),
    (("crawl", "cats", "--engine", "altavista"), "'altavista' is not one of 'auto', 'bing'"),
    (("calc", "params", "GroupNorm(0,0)"), "invalid arguments"),
    (("course", "regression", "--init", "1"), "--init must be two numbers"),
])
def test_errors_are_one_line(args, message):
    r = camkit(*args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and r.stdout == ""


def test_help_exits_zero_and_lists_the_choices():
    r = camkit("--help")
    assert r.returncode == 0 and "crawl" in r.stdout and "cam-eval" in r.stdout
    r = camkit("cam", "--help")
    assert r.returncode == 0 and all(m.value in r.stdout for m in Method)


def test_version():
    r = camkit("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"camkit {__version__}"


@pytest.mark.parametrize("args", [(), ("calc",), ("course",)])
def test_a_bare_command_shows_its_help_not_an_empty_error(args):
    r = camkit(*args)
    assert r.returncode == 2 and "Usage" in r.stdout and "error" not in r.stderr


def test_negative_numbers_are_values_not_options():
    r = camkit("calc", "softmax", "-1", "-2", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"]["softmax"] == pytest.approx([0.731059, 0.268941], abs=1e-6)


def test_an_internal_error_is_one_line_with_exit_1(cli, monkeypatch):
    import camkit.course.lenet as lenet

    def broken(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(lenet, "walkthrough", broken)
    code, out, err = cli("course", "lenet")
    assert code == 1 and err == "error: internal error ZeroDivisionError: a bug (set CAMKIT_DEBUG=1 for the traceback)\n"


def test_interrupt_is_exit_130(cli, monkeypatch):
    import camkit.course.lenet as lenet

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lenet, "walkthrough", interrupted)
    code, out, err = cli("course", "lenet")
    assert code == 130 and err == "error: interrupted\n"


def test_choices_match_the_registries():
    from camkit.cam import METHODS
    from camkit.course.experiments import DATASETS
    from camkit.crawl import ENGINES

    assert [m.value for m in Method] == list(METHODS)
    assert [e.value for e in Engine] == ["auto", *ENGINES]
    assert {d.value for d in CourseDataset} == set(DATASETS)


# ---------------------------------------------------------------- start-up: what a command loads

HEAVY = ("torch", "torchvision", "fastai", "matplotlib", "sklearn", "pandas", "icrawler")
# runs the console entry point with the given arguments, then names the heavy packages it loaded
PROBE = ("import sys\nfrom camkit.cli import main\ntry:\n    main()\nfinally:\n"
         f"    print('loaded:' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n")


def camkit_loads(*args) -> tuple[subprocess.CompletedProcess, set[str]]:
    """(the finished process, the heavy packages it had imported when the command returned)."""
    r = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "200"}, check=False)
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("loaded:"), r.stderr
    return r, set(filter(None, last.removeprefix("loaded:").split(",")))


@pytest.mark.parametrize("args,code", [
    (("--help",), 0),
    (("--version",), 0),
    (("crawl", "--help"), 0),
    (("cam", "--help"), 0),
    (("train", "--bogus", "1"), 2),                  # an unknown option
    (("cam", "x.jpg"), 2),                           # a missing --model
    (("cam", "x.jpg", "-m", "r", "--method", "gradkam"), 2),   # a bad choice
    (("crawl",), 2),                                 # no keyword: the command's own check
    (("calc", "conv", "--input", "32x32x3"), 0),
])
def test_help_version_and_argument_errors_load_no_torch(args, code):
    r, loaded = camkit_loads(*args)
    assert r.returncode == code, r.stderr
    assert loaded == set()


def test_crawl_verify_and_credits_load_no_torch(tmp_path):
    """crawl loads icrawler and no torch; verify and credits neither (they read files only)."""
    from fake_engine import FakeEngine, encode, smooth_image

    out = tmp_path / "images"
    with FakeEngine() as engine:
        engine.result("cats", *[engine.add(f"/img/{i}.jpg", encode(smooth_image(900 + i))) for i in range(3)])
        crawled, crawl_loads = camkit_loads("crawl", "cats", "--max-num", "3", "--out", out, "--endpoint",
                                            engine.endpoint, "--engine", "bing", "--threads", "2", "--min-size", "32")
    verified, verify_loads = camkit_loads("verify", out, "--min-size", "32")
    credited, credits_loads = camkit_loads("credits", out)
    assert crawled.returncode == 0 and len(list((out / "cats").iterdir())) == 3, crawled.stderr
    assert verified.returncode == 0 and "checked 3, kept 3" in verified.stdout, verified.stderr
    assert credited.returncode == 0 and credited.stdout.count("| cats/") == 3, credited.stderr
    assert crawl_loads == {"icrawler"}              # the crawl itself, and only it, needs icrawler
    assert verify_loads == credits_loads == set()


def test_the_probe_sees_a_command_that_needs_torch(tmp_path):
    """The control: a command that must load a model imports torch before it can refuse the run."""
    r, loaded = camkit_loads("predict", tmp_path / "x.png", "-m", tmp_path / "no-run")
    assert r.returncode == 2 and "torch" in loaded, r.stderr


def test_import_camkit_loads_only_its_face():
    code = ("import sys, camkit; from camkit import CamkitError, __version__; "
            f"print(sorted(m for m in sys.modules if m.startswith('camkit') or m in {HEAVY!r} or m in ('numpy', 'PIL')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.strip() == ("['camkit', 'camkit.core', 'camkit.core.lazy', "
                                               "'camkit.errors', 'camkit.version']"), r.stderr


def test_the_lazy_face_keeps_every_import_path():
    import importlib

    import camkit
    from camkit import CamkitError, Interrupted

    assert CamkitError is importlib.import_module("camkit.errors").CamkitError
    assert issubclass(Interrupted, CamkitError)
    assert camkit.run is importlib.import_module("camkit.train.run") and "run" in dir(camkit)  # a moved module
    assert all(importlib.util.find_spec(f"camkit.{name}") is not None for name in camkit._SUBMODULES)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        getattr(camkit, "no_such_name")  # noqa: B009  (the attribute access is the test)
