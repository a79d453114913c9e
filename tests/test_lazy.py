"""camkit.core.lazy: the package faces import on first use, and the modules grouped by concern
(issue 27) keep their old import paths as the very same module objects."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import camkit
from camkit.core.lazy import MovedModules, forwarding

ROOT = Path(camkit.__file__).resolve().parent


@pytest.mark.parametrize("old", sorted(camkit.MOVED))
def test_an_old_path_is_the_moved_module_itself(old):
    new = camkit.MOVED[old]
    module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__name__ == new and module.__spec__.name == new   # its own identity, not the alias's
    assert not (ROOT / f"{old.split('.')[1]}.py").exists()           # no file shadows the finder


def test_a_fresh_process_imports_an_old_path_first_and_patches_through_it():
    code = ("import camkit.run as old, camkit.verdict, sys; import camkit.train.run as new; "
            "old.WEIGHTS = 'patched'; from camkit.targets import as_target; "
            "print(old is new, new.WEIGHTS, as_target.__module__, 'camkit.train.loop' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "patched", "camkit.cam.targets", "False"]


def test_the_packages_that_replaced_a_module_answer_its_names_and_their_submodules():
    import camkit.data
    import camkit.export
    import camkit.train
    from camkit.train import train

    assert train is importlib.import_module("camkit.train.loop").train
    assert camkit.data.load_folder is importlib.import_module("camkit.data.folders").load_folder
    assert camkit.export.export_onnx is importlib.import_module("camkit.export.onnx").export_onnx
    assert camkit.data.cache is importlib.import_module("camkit.data.cache")   # a sub-module wins
    with pytest.raises(AttributeError, match="camkit.train.loop"):
        camkit.train.no_such_name  # noqa: B018  (the attribute access is the test)


def test_forwarding_reads_the_successor_once_and_keeps_it(tmp_path, monkeypatch):
    pkg = tmp_path / "fwdpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "old.py").write_text("calls = []\ndef f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    package = importlib.import_module("fwdpkg")
    package.__getattr__ = forwarding("fwdpkg", "fwdpkg.old")
    assert package.f() == 1 and "f" in vars(package)          # cached on the package after the first read
    assert package.old is sys.modules["fwdpkg.old"]
    with pytest.raises(AttributeError):
        package.__wrapped__  # noqa: B018  dunders are never forwarded (copy, inspect and pickle probe them)


def test_the_finder_answers_only_its_own_names():
    finder = MovedModules({"camkit.zzz_old": "camkit.errors"})
    assert finder.find_spec("camkit.errors") is None and finder.find_spec("json") is None
    sys.meta_path.insert(0, finder)
    try:
        assert importlib.import_module("camkit.zzz_old") is importlib.import_module("camkit.errors")
        assert sys.modules["camkit.errors"].__spec__.name == "camkit.errors"
    finally:
        sys.meta_path.remove(finder)
        sys.modules.pop("camkit.zzz_old", None)
