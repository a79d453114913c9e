"""camkit predict: the run's softmax per image, batched, as one JSON line or one text line each."""

import json
import warnings
from pathlib import Path

import pytest
import torch

from camkit.errors import CamkitError
from camkit.predict import predict
from camkit.train.run import load


def one_line(code, err, message):
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err


@pytest.fixture(scope="module")
def files(canvas_dir):
    return sorted(canvas_dir.glob("*/*.png"))[::8]


def test_predictions_equal_the_models_softmax(tiny_run, files):
    loaded = load(tiny_run)
    with torch.no_grad():
        expected = loaded.model(loaded.preprocess(files)).softmax(1)
    got = predict(files, tiny_run, bs=3)
    assert [p.image for p in got] == [str(f.resolve()) for f in files]
    probs = torch.tensor([[p.probs[c] for c in loaded.classes] for p in got])
    assert torch.allclose(probs, expected, atol=1e-5)
    assert [p.pred for p in got] == [loaded.classes[i] for i in expected.argmax(1)]


def test_top_k_is_sorted_most_probable_first(tiny_run, files):
    for p in predict(files, tiny_run, top_k=2):
        assert [c for c, _ in p.top][0] == p.pred and p.top[0][1] >= p.top[1][1]
        assert p.prob == p.top[0][1] and set(c for c, _ in p.top) == set(p.probs)


@pytest.mark.parametrize("k", [0, 3])
def test_top_k_outside_the_classes_is_refused(tiny_run, files, k):
    with pytest.raises(CamkitError, match="--top-k"):
        predict(files, tiny_run, top_k=k)


def test_a_folder_is_searched_and_an_unreadable_file_in_it_skipped(tiny_run, canvas_dir, tmp_path):
    """predict and explain read files through one path (camkit.core.images.decoded_batches): the same
    images kept, the same warning for the broken one, the same error when it is named."""
    from camkit.explain import explain

    folder = tmp_path / "imgs"
    folder.mkdir()
    good = sorted(canvas_dir.glob("bag/*.png"))[:3]
    for f in good:
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image")
    said = {}
    for name, run in (("predict", lambda: predict([folder], tiny_run)), ("explain", lambda: explain(tiny_run, folder))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = run()
        said[name] = [str(w.message) for w in caught if "skipping" in str(w.message)]
        assert sorted(Path(r.image).name for r in got) == [f.name for f in good], name
    assert said["predict"] == said["explain"] == [f"skipping {folder / 'broken.png'}: not a readable image "
                                                  "(no known image format)"]
    for run in (lambda: predict([folder / "broken.png"], tiny_run), lambda: explain(tiny_run, folder / "broken.png")):
        with pytest.raises(CamkitError, match="broken.png: not a readable image"):
            run()


def test_json_lines_carry_image_pred_prob_probs(cli, tiny_run, files):
    code, out, err = cli("predict", *files[:4], "--model", tiny_run, "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 4
    for rec in lines:
        assert set(rec) == {"image", "pred", "prob", "probs"}
        assert rec["prob"] == max(rec["probs"].values()) and abs(sum(rec["probs"].values()) - 1) < 1e-4


def test_text_lines_name_the_image_and_the_top_k(cli, tiny_run, files):
    code, out, err = cli("predict", files[0], "--model", tiny_run, "--top-k", "2")
    assert code == 0, err
    assert out.startswith(f"{files[0].resolve()}: ") and out.count("%") == 3


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"), ("broken", "not a readable image"), ("top-k", "--top-k"),
    ("bs", "--bs"), ("no-run", "is not a camkit run")])
def test_bad_inputs_are_one_line_errors(cli, tiny_run, files, tmp_path, case, message):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    args = {"missing": [tmp_path / "nope.png", "--model", tiny_run],
            "broken": [broken, "--model", tiny_run],
            "top-k": [files[0], "--model", tiny_run, "--top-k", "5"],
            "bs": [files[0], "--model", tiny_run, "--bs", "0"],
            "no-run": [files[0], "--model", tmp_path]}[case]
    code, _, err = cli("predict", *args)
    one_line(code, err, message)
