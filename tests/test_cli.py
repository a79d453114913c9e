"""The real entry point, as a user's shell runs it: one line on stderr, exit 2, no traceback;
and the CLI's typed choices, which must match the registries they name."""

import json
import os
import subprocess
import sys

import pytest

from camkit import __version__
from camkit.choices import CourseDataset, Engine, Method


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
