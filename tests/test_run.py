"""The run format (camkit.train.run): the held-out rows both writers share, loading once, the file names."""

from __future__ import annotations

import pytest
import torch

from camkit.errors import CamkitError
from camkit.train.run import VALID, as_loaded, held_out, load


def test_held_out_rows_are_the_files_inside_the_root_and_its_numbers_are_exact(tmp_path):
    """valid.json's rows for `camkit train` and a notebook's export_run: files inside the data
    root only (a file outside it or an item that is no file gets no row, but still counts in the
    numbers), in the order file, label, pred, prob, loss."""
    root = tmp_path / "data"
    files = [root / "bag" / "a.png", tmp_path / "elsewhere.png", "not a file", root / "shoe" / "b.png"]
    items = [files[0], files[1], object(), files[3]]
    targets = torch.tensor([0, 1, 1, 1])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    losses = torch.tensor([0.1, 0.2, 1.2, 0.9])
    held = held_out(items, targets, probs, losses, ["bag", "shoe"], root)
    assert held.rows == [
        {"file": "bag/a.png", "label": "bag", "pred": "bag", "prob": 0.9, "loss": 0.1},
        {"file": "shoe/b.png", "label": "shoe", "pred": "bag", "prob": 0.6, "loss": 0.9}]
    assert [list(r) for r in held.rows] == [["file", "label", "pred", "prob", "loss"]] * 2
    assert held.accuracy == 0.5 and held.loss == pytest.approx(0.6, abs=1e-4)
    assert held.confusion == [[1, 0], [2, 1]]
    empty = held_out([], torch.zeros(0, dtype=torch.long), torch.zeros(0, 2), torch.zeros(0), ["bag", "shoe"], root)
    assert (empty.rows, empty.accuracy, empty.loss, empty.confusion) == ([], 0.0, None, [[0, 0], [0, 0]])


def test_as_loaded_loads_a_folder_once_and_passes_a_loaded_run_through(tiny_run):
    loaded = as_loaded(tiny_run, "cpu")
    assert loaded.path == tiny_run and as_loaded(loaded) is loaded


def test_weights_of_another_shape_are_refused_in_one_sentence(run_copy):
    """camkit.train.models.rebuild (how a run is loaded and a notebook's model checked for export)
    loads strictly: a tensor of the wrong shape is named, never half-loaded."""
    state = torch.load(run_copy / "model.pth", weights_only=True)
    name = next(k for k, v in state.items() if v.dim() == 2)   # the CAM head's Linear
    state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])
    torch.save(state, run_copy / "model.pth")
    with pytest.raises(CamkitError, match=r"model.pth' does not match resnet18 \(Error\(s\) in loading"):
        load(run_copy)


def test_the_output_markers_are_the_names_their_owners_write():
    """camkit.core.files sits below the modules that own these formats (they import it), so it
    spells their names; they must stay the names the owners write."""
    from camkit.explain import CAMS_JSONL
    from camkit.core.files import CAMKIT_OUTPUT_MARKERS
    from camkit.report import PAGE_FILE
    from camkit.train.run import META

    assert CAMKIT_OUTPUT_MARKERS == (META, CAMS_JSONL, PAGE_FILE) and VALID == "valid.json"
