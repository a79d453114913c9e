"""The real entry point, as a user's shell runs it: one line on stderr, exit 2, no traceback."""

import subprocess
import sys

import pytest


def camkit(*args):
    return subprocess.run([sys.executable, "-m", "camkit.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args,message", [
    (("train", "--bogus", "1"), "No such option: --bogus"),
    (("cam", "x.jpg"), "Missing option '--model'"),
    (("train", "no/such/dir"), "data folder 'no/such/dir' does not exist"),
    (("calc", "softmax", "a"), "values must be numbers"),
])
def test_errors_are_one_line(args, message):
    r = camkit(*args)
    assert r.returncode == 2
    assert r.stderr == f"error: {r.stderr[7:]}" and message in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_help_exits_zero():
    r = camkit("--help")
    assert r.returncode == 0 and "crawl" in r.stdout and "cam-eval" in r.stdout
