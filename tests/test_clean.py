"""camkit clean: rank label suspects, review them on an offline page, apply and undo decisions.

The dataset fixtures are session-scoped and shared, so every test that moves files works on a
copy in tmp_path."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camkit.clean import CLEAN_LOG, apply, rank, undo, write_page
from camkit.crawl import read_manifest
from camkit.errors import CamkitError
from camkit.train.run import read_valid
from helpers import snapshot

HOSTILE = "\"'><img src=x onerror=alert(1)>.png"


def one_line(code, err, message):
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err


@pytest.fixture
def data(canvas_dir, tmp_path):
    """A private copy of the shared canvas dataset (two classes: bag, trouser)."""
    root = tmp_path / "data"
    shutil.copytree(canvas_dir, root)
    return root


def decisions_file(path, decisions):
    path.write_text(json.dumps({"version": 1, "decisions": decisions}))   # as written by hand: no run, data_root
    return path


# ---------------------------------------------------------------- ranking

@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """A run that really separates its classes (the shared tiny run is near chance): red-tinted
    against blue-tinted noise, 24 per class, trained on the clean folder."""
    from camkit.train.loop import train

    root = tmp_path_factory.mktemp("colour") / "data"
    rng = np.random.default_rng(0)
    for k, cls in enumerate(("blue", "red")):
        (root / cls).mkdir(parents=True)
        for i in range(24):
            a = rng.normal(110, 30, (32, 32, 3))
            a[..., 2 - 2 * k] += 70
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / cls / f"{i:03d}.png")
    run = tmp_path_factory.mktemp("colour_run") / "run"
    train(root, arch="resnet18", epochs=2, size=32, bs=16, out=run, pretrained=False, stride=8, quiet=True, aug="none")
    return root, run


def swapped_copy(clean_root: Path, root: Path, n: int = 3) -> set[str]:
    """Copy the colour set to `root` with `n` images of each class moved into the other class's
    folder (renamed x<name>); the moved files' relative paths."""
    shutil.copytree(clean_root, root)
    injected = set()
    for src, dst in (("blue", "red"), ("red", "blue")):
        for f in sorted((root / src).glob("*.png"))[:n]:
            f.rename(root / dst / f"x{f.name}")
            injected.add(f"{dst}/x{f.name}")
    return injected


def test_swapped_labels_rank_at_the_top(colour_run, tmp_path):
    clean_root, run = colour_run
    root = tmp_path / "noisy"
    injected = swapped_copy(clean_root, root)
    suspects = rank(run, data=root)
    assert len(suspects) == 48
    assert {s.rel for s in suspects[:8]} >= injected
    assert all("mislabelled?" in s.reason for s in suspects if s.rel in injected)
    assert [s.loss for s in suspects] == sorted((s.loss for s in suspects), reverse=True)


@pytest.fixture(scope="module")
def noisy_colour(colour_run, tmp_path_factory):
    """The colour set with 3 images of each class moved into the other class's folder (the
    colour run, trained on the clean folder, gives the recipe the folds retrain)."""
    clean_root, run = colour_run
    root = tmp_path_factory.mktemp("noisy_colour") / "data"
    return root, run, swapped_copy(clean_root, root)


def test_folds_score_each_image_with_a_model_that_never_saw_it(noisy_colour, monkeypatch):
    import camkit.train.folds as folds_mod
    from camkit.train.run import load

    root, run, _ = noisy_colour
    calls, real = [], folds_mod.fit_fold

    def spy(data, train_idx, held_idx, spec, quiet=True):
        calls.append((set(train_idx.tolist()), held_idx.tolist(), data.labels.numpy()))
        return real(data, train_idx, held_idx, spec, quiet)

    monkeypatch.setattr(folds_mod, "fit_fold", spy)
    scores = folds_mod.out_of_sample(load(run), root, folds=2, epochs=1)
    assert len(calls) == 2
    held = [i for _, h, _ in calls for i in h]
    assert sorted(held) == list(range(48))                       # every image held out exactly once
    for k, (trained, held_k, labels) in enumerate(calls):
        assert not trained & set(held_k)                          # never by a model that trained on it
        assert all(scores.fold[i] == k for i in held_k)           # and its fold says which model scored it
        assert sorted(np.bincount(labels[held_k])) == [12, 12]    # stratified: half of each class
    assert np.allclose(scores.probs.sum(1), 1) and ((scores.ood > 0) & (scores.ood <= 1)).all()


def known_scores(root):
    """Out-of-sample scores as right fold models would give them on the noisy colour set: 0.9
    for the class of an image's colour, image 5 an outlier to its fold model, 3 folds."""
    import camkit.train.folds as folds_mod
    from camkit.data.folders import scan_class_folders

    classes, per_class = scan_class_folders(root)
    files = [f for fs in per_class for f in fs]
    labels = np.array([k for k, fs in enumerate(per_class) for _ in fs])
    colour = np.array([1 - y if f.name.startswith("x") else y for f, y in zip(files, labels)])
    probs = np.where(np.arange(2)[None, :] == colour[:, None], 0.9, 0.1)
    ood = np.full(len(files), 0.8)
    ood[5] = 1e-6
    return folds_mod.FoldScores(files, labels, probs, ood, np.arange(len(files)) % 3, classes, 3, 2, 1.0)


def test_cleanlab_ranks_and_counts_the_flips_from_out_of_sample_probabilities(noisy_colour, monkeypatch):
    """The cleanlab side of --folds on known probabilities (the folds themselves are tested
    above): fold models that are right on the colours, so each swapped image gets 0.9 for the
    class of its colour, against its folder; one clean image is an outlier to its fold model."""
    import camkit.clean as clean_mod
    from camkit.data.folders import scan_class_folders

    root, run, injected = noisy_colour
    scores = known_scores(root)
    files = scores.files
    monkeypatch.setattr(clean_mod, "out_of_sample", lambda *a, **k: scores)   # as clean imports it
    suspects = rank(run, data=root, folds=3)
    estimate = suspects.estimate
    assert (estimate.mislabelled, estimate.off_topic, estimate.to_review) == (6, 1, 7)
    assert {s.rel for s in suspects[:7]} == injected | {files[5].relative_to(root).as_posix()}
    assert all("mislabelled?" in s.reason for s in suspects if s.rel in injected)
    assert "off-topic?" in next(s.reason for s in suspects if s.image == files[5])
    assert estimate.accuracy == pytest.approx(42 / 48) and not estimate.weak
    assert {s.fold for s in suspects} == {0, 1, 2}


def test_folds_json_starts_with_the_estimate(cli, noisy_colour):
    root, run, _ = noisy_colour
    code, out, err = cli("clean", run, "--data", root, "--json", "--folds", "2", "--fold-epochs", "1")
    assert code == 0, err
    first, *lines = [json.loads(line) for line in out.splitlines()]
    assert set(first["estimate"]) >= {"to_review", "mislabelled", "off_topic", "folds"} and first["estimate"]["folds"] == 2
    assert len(lines) == 48 and all({"fold", "label_quality", "ood"} <= set(r) for r in lines)
    from camkit.clean import RANKING, read_ranking

    saved = read_ranking(run, root, ["blue", "red"])              # saved for the app's Clean tab, in the same order
    (run / RANKING).unlink()                                      # the module's run stays as the fixture made it
    assert [str(s.image.resolve()) for s in saved.ranking] == [r["image"] for r in lines]
    assert saved.ranking.estimate.to_review == first["estimate"]["to_review"] and saved.dropped == 0


def test_cli_folds_saves_the_ranking_and_a_refused_save_is_one_warning(cli, noisy_colour, tmp_path, monkeypatch):
    """The CLI's saving on known out-of-sample scores (no fold training): saved beside the run
    and said; a refused write after the folds is a warning line, and the command still succeeds."""
    import camkit.clean as clean_mod

    root, colour, injected = noisy_colour
    run = shutil.copytree(colour, tmp_path / "run")
    monkeypatch.setattr(clean_mod, "out_of_sample", lambda *a, **k: known_scores(root))
    code, out, err = cli("clean", run, "--data", root, "--folds", "3", "--top", "1", "--out", tmp_path / "p.html")
    assert code == 0, err
    assert f"out-of-sample ranking saved for the app's Clean tab: {run / clean_mod.RANKING}" in out
    saved = clean_mod.read_ranking(run, root, ["blue", "red"])
    assert len(saved.ranking) == 48 and {s.rel for s in saved.ranking[:7]} >= injected
    assert saved.ranking.estimate.to_review == 7 and saved.ranking[0].fold is not None

    def refused(*args):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(clean_mod, "save_ranking", refused)
    code, out, err = cli("clean", run, "--data", root, "--folds", "3", "--top", "1", "--out", tmp_path / "p.html")
    assert code == 0 and "warning: the ranking was not saved to" in err and "Permission denied" in err, err
    assert "saved for the app" not in out


def test_page_shows_the_estimate_and_the_out_of_sample_scores():
    from pathlib import Path

    from camkit.clean import Estimate, Ranking, Suspect, page_html, summary_line

    ranking = Ranking([Suspect(Path("/d/a/1.png"), "a/1.png", "a", "b", 0.9, 2.3, "mislabelled?", 0.9, fold=1,
                               label_quality=0.1, ood=0.7, quality=("tiny content",))])
    ranking.estimate = Estimate(7, 5, 2, 4, 3, 60.0, accuracy=0.9, baseline=0.5)
    text = page_html(ranking, [("", "")], ["a", "b"], "/r", "/d", summary_line(ranking))
    assert "about 7 to review by cleanlab&#x27;s estimate (5 likely mislabelled, 2 off-topic" in text
    assert "held out in fold 1: label quality 0.100, OOD 0.700" in text and "tiny content" in text
    assert "WARNING" not in text


@pytest.mark.parametrize("accuracy, weak", [(0.64, True), (0.66, False)])
def test_folds_that_do_not_beat_the_larger_class_say_the_ranking_is_weak(accuracy, weak):
    from camkit.clean import Estimate, Ranking, summary_line

    ranking = Ranking()
    ranking.estimate = Estimate(7, 5, 2, 4, 3, 60.0, accuracy=accuracy, baseline=0.5)
    assert ranking.estimate.weak is weak
    assert ("out-of-sample accuracy 64% is not 15 points above always answering the larger class (50%)"
            in summary_line(ranking)) is weak


# ---------------------------------------------------------------- the saved out-of-sample ranking

def saved_ranking(root, rels, accuracy=0.9):
    """A Ranking as `rank(..., folds=3)` returns it, built directly (no fold training), of the
    files `rels` under `root`, most suspicious first."""
    from camkit.clean import Estimate, Ranking, Suspect

    ranking = Ranking(Suspect(root / rel, rel, rel.split("/")[0], "b", 0.9 - 0.1 * i, 2.3 - i / 4, "mislabelled?",
                              0.9 - 0.2 * i, fold=i % 3, label_quality=0.1 + 0.2 * i, ood=0.7,
                              quality=("tiny content",) if i == 1 else ())
                      for i, rel in enumerate(rels))
    ranking.estimate = Estimate(2, 1, 1, 3, 4, 61.5, accuracy=accuracy, baseline=0.5)
    return ranking


def test_a_saved_ranking_reads_back_for_its_data_root_without_the_files_moved_since(tmp_path):
    from camkit.clean import RANKING, read_ranking, save_ranking

    root, run = tmp_path / "data", tmp_path / "run"
    rels = ["a/3.png", "b/1.png", "a/2.png"]
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    run.mkdir()
    ranking = saved_ranking(root, rels)
    assert save_ranking(ranking, run, root) == run / RANKING
    doc = json.loads((run / RANKING).read_text())
    assert doc["data_root"] == str(root.resolve()) and doc["folds"] == 3 and doc["estimate"]["to_review"] == 2
    assert doc["images"][1] == {"rel": "b/1.png", "label": "b", "pred": "b", "prob": 0.8, "loss": 2.05, "score": 0.7,
                                "fold": 1, "label_quality": 0.1 + 0.2, "ood": 0.7, "reason": "mislabelled?",
                                "quality": ["tiny content"]}
    saved = read_ranking(run, root, ["a", "b"])
    assert [s.__dict__ for s in saved.ranking] == [s.__dict__ for s in ranking]   # every field, in order
    assert saved.ranking.estimate == ranking.estimate and saved.dropped == 0 and saved.split == "all"
    (root / "a/2.png").rename(root / "b/2.png")                                    # relabelled since
    (root / "b/1.png").unlink()
    saved = read_ranking(run, root, ["a", "b"])
    assert [s.rel for s in saved.ranking] == ["a/3.png"] and saved.dropped == 2
    assert read_ranking(run, tmp_path / "elsewhere", ["a", "b"]) is None            # another data folder
    assert read_ranking(tmp_path, root, ["a", "b"]) is None                         # none saved


def test_only_an_out_of_sample_ranking_is_saved(tmp_path):
    from camkit.clean import Ranking, save_ranking

    with pytest.raises(CamkitError, match="only an out-of-sample ranking"):
        save_ranking(Ranking(), tmp_path, tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["images"][0].update(rel="a/../../outside.png"), "leaves its folder"),
    (lambda d: d["images"][0].update(rel="b/3.png"), "malformed image record"),     # label is not its folder
    (lambda d: d["images"][0].update(prob=float("nan")), "malformed image record"),
    (lambda d: d["images"][0].update(fold=3), "malformed image record"),            # only folds 0..2
    (lambda d: d["images"][0].update(pred="__import__('os')"), "malformed image record"),
    (lambda d: d["estimate"].update(to_review=-1), "malformed estimate"),
    (lambda d: d.update(format="pickle"), "not a camkit saved ranking"),
    (lambda d: d.update(images=json.loads("[" * 100 + "]" * 100)), "not a readable saved ranking"),   # too deep
])
def test_a_tampered_saved_ranking_is_refused_in_one_sentence(tmp_path, change, message):
    from camkit.clean import RANKING, read_ranking, save_ranking

    root, run = tmp_path / "data", tmp_path / "run"
    (root / "a").mkdir(parents=True)
    (root / "a" / "3.png").write_bytes(b"x")
    run.mkdir()
    save_ranking(saved_ranking(root, ["a/3.png"]), run, root)
    doc = json.loads((run / RANKING).read_text())
    change(doc)
    (run / RANKING).write_text(json.dumps(doc))
    with pytest.raises(CamkitError, match=message):
        read_ranking(run, root, ["a", "b"])


def test_near_duplicates_across_classes_are_flagged(tiny_run, data):
    twin = sorted((data / "bag").glob("*.png"))[0]
    shutil.copy(twin, data / "trouser" / "twin.png")
    flagged = {s.rel for s in rank(tiny_run, data=data) if "near-duplicate across classes" in s.reason}
    assert {twin.relative_to(data).as_posix(), "trouser/twin.png"} <= flagged


@pytest.mark.parametrize("split", ["valid", "train"])
def test_split_picks_the_runs_held_out_images_or_the_rest(tiny_run, canvas_dir, split):
    valid = {r.file.resolve() for r in read_valid(tiny_run)}
    got = {s.image.resolve() for s in rank(tiny_run, split=split)}
    assert got == valid if split == "valid" else (got and not got & valid and len(got) == 80 - len(valid))


# ---------------------------------------------------------------- apply and undo

def test_apply_moves_logs_and_undo_restores_the_tree(tiny_run, data, tmp_path):
    (data / "manifest.jsonl").write_text("")
    before = snapshot(data)
    decisions = decisions_file(tmp_path / "decisions.json", {
        "bag/0000.png": "delete", "bag/0001.png": "relabel:trouser", "trouser/0000.png": "relabel:bag",
        "trouser/0001.png": "keep"})
    moves = apply(tiny_run, decisions, data=data)
    assert [(m["from"], m["to"]) for m in moves] == [
        ("bag/0000.png", "_rejected/cleaned/bag/0000.png"), ("bag/0001.png", "trouser/0001-1.png"),
        ("trouser/0000.png", "bag/0000.png")]
    assert (data / "_rejected/cleaned/bag/0000.png").read_bytes() == before["bag/0000.png"]
    assert (data / "bag/0000.png").read_bytes() == before["trouser/0000.png"]  # the freed name, reused
    log = [json.loads(line) for line in (data / CLEAN_LOG).read_text().splitlines()]
    assert [set(r) >= {"from", "to", "action", "time"} for r in log] == [True] * 6
    # written ahead: each move announced (pending) before it is made, then marked done
    assert [(r["id"], r["state"]) for r in log] == [(i, s) for i in range(3) for s in ("pending", "done")]
    statuses = [r["status"] for r in read_manifest(data)]
    assert statuses == ["cleaned", "relabelled", "relabelled"]
    assert len(undo(tiny_run, data=data)) == 3
    after = snapshot(data)
    assert {k: v for k, v in after.items() if k not in (CLEAN_LOG, "manifest.jsonl")} == \
           {k: v for k, v in before.items() if k != "manifest.jsonl"}
    assert undo(tiny_run, data=data) == []  # everything already undone


@pytest.mark.parametrize("rel, action, message", [
    ("../x.png", "delete", "leaves its folder"), ("/etc/passwd", "delete", "leaves its folder"),
    ("bag/0002.png", "relabel:cat", "unknown action"), ("bag/0002.png", "burn", "unknown action"),
    ("boxes.json", "delete", "is not an image"), ("nope/x.png", "delete", "is not an image"),
    ("../x.png", "keep", "leaves its folder"), ("bag", "delete", "is not an image"),
    ("bag/0002.png", 3, "unknown action"), ("bag/./0000.png", "keep", "twice")])
def test_hostile_decisions_are_refused_before_any_move(tiny_run, data, tmp_path, rel, action, message):
    before = snapshot(data)
    decisions = decisions_file(tmp_path / "d.json", {"bag/0000.png": "delete", rel: action})
    with pytest.raises(CamkitError, match=message):
        apply(tiny_run, decisions, data=data)
    assert snapshot(data) == before and not (data / CLEAN_LOG).exists()


@pytest.mark.parametrize("content", ["{not json", "[]", '{"version": 2, "decisions": {}}', '{"version": 1}'])
def test_a_malformed_decisions_file_is_a_one_line_error(cli, tiny_run, data, tmp_path, content):
    path = tmp_path / "d.json"
    path.write_text(content)
    code, _, err = cli("clean", tiny_run, "--data", data, "--apply", path)
    one_line(code, err, "decisions")


def test_cli_apply_and_undo(cli, tiny_run, data, tmp_path):
    before = snapshot(data)
    decisions = decisions_file(tmp_path / "d.json", {"bag/0003.png": "delete"})
    code, out, err = cli("clean", tiny_run, "--data", data, "--apply", decisions)
    assert code == 0 and "1 file(s) moved" in out, err
    code, out, err = cli("clean", tiny_run, "--data", data, "--undo", "--json")
    assert code == 0 and json.loads(out)["action"] == "undo", err
    assert {k: v for k, v in snapshot(data).items() if k != CLEAN_LOG} == before


# ---------------------------------------------------------------- the page and --json

@pytest.fixture
def page(tiny_run, data, tmp_path):
    shutil.copy(data / "bag" / "0000.png", data / "bag" / HOSTILE)
    return write_page(rank(tiny_run, data=data), tiny_run, tmp_path / "clean.html", top=100, data=data)


def test_page_escapes_a_hostile_file_name(page):
    text = page.read_text()
    assert "<img src=x" not in text
    assert "&quot;&#x27;&gt;&lt;img src=x onerror=alert(1)&gt;.png" in text


def test_page_has_the_controls_and_the_download_button(page):
    text = page.read_text()
    rows = re.findall(r"<tr data-rel=", text)
    assert len(rows) == 81 and text.count("data:image/png;base64,") == 2 * 81
    for control in ("value='keep'", "value='delete'", "value='relabel'", "<option value='trouser'>"):
        assert text.count(control) >= 40, control
    assert "Download decisions" in text and "decisions.json" in text and "localStorage" in text
    assert "http://" not in text and "https://" not in text  # nothing fetched: works offline


def _wait(driver, condition, seconds=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(lambda d: condition(d))


def _row(driver, rel):
    from selenium.webdriver.common.by import By

    return next(r for r in driver.find_elements(By.CSS_SELECTOR, "tr[data-rel]") if r.get_attribute("data-rel") == rel)


def test_page_decisions_survive_a_reload_and_download_as_apply_reads_them(browser, browser_downloads, tiny_run,
                                                                           data, tmp_path):
    """Clicked in a real browser: a delete and a relabel are kept across a reload (localStorage),
    the downloaded decisions.json is what --apply reads, and the hostile name stays inert."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    shutil.copy(data / "bag" / "0000.png", data / "bag" / HOSTILE)
    page = write_page(rank(tiny_run, data=data), tiny_run, tmp_path / "clean.html", top=6, data=data)
    browser.get(page.resolve().as_uri())
    _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    rels = [r.get_attribute("data-rel") for r in browser.find_elements(By.CSS_SELECTOR, "tr[data-rel]")]
    first, second = rels[0], rels[1]
    _row(browser, first).find_element(By.CSS_SELECTOR, "input[value=delete]").click()
    other = "trouser" if second.startswith("bag/") else "bag"
    Select(_row(browser, second).find_element(By.TAG_NAME, "select")).select_by_value(other)
    browser.refresh()
    _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert _row(browser, first).find_element(By.CSS_SELECTOR, "input[value=delete]").is_selected()
    assert _row(browser, first).get_attribute("class") == "delete"
    assert _row(browser, second).find_element(By.CSS_SELECTOR, "input[value=relabel]").is_selected()
    assert _row(browser, rels[2]).find_element(By.CSS_SELECTOR, "input[value=keep]").is_selected()
    for old in browser_downloads.glob("decisions*.json"):
        old.unlink()   # the browser's own download folder from an earlier test (a temp folder)
    browser.find_element(By.ID, "download").click()
    got = _wait(browser, lambda d: next(browser_downloads.glob("decisions*.json"), None))
    doc = json.loads(_wait(browser, lambda d: got.read_text() or None))
    assert doc["decisions"] == {first: "delete", second: f"relabel:{other}"}
    assert browser.execute_script("return typeof window.alerted") == "undefined"
    moves = apply(tiny_run, got, data)
    assert {m["from"]: m["action"] for m in moves} == doc["decisions"]
    browser.execute_script("localStorage.clear()")


def test_page_is_not_written_over_a_users_file(tiny_run, data, tmp_path):
    mine = tmp_path / "mine.html"
    mine.write_text("<p>my notes</p>")
    with pytest.raises(CamkitError, match="not written by camkit clean"):
        write_page(rank(tiny_run, data=data)[:3], tiny_run, mine, data=data)
    assert mine.read_text() == "<p>my notes</p>"


def test_json_prints_one_ranked_line_per_image(cli, tiny_run):
    code, out, err = cli("clean", tiny_run, "--json", "--folds", "0")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    keys = {"image", "label", "pred", "prob", "loss", "reason", "score", "quality"}
    assert len(lines) == 80 and all(set(r) == keys for r in lines)
    assert [r["loss"] for r in lines] == sorted((r["loss"] for r in lines), reverse=True)


@pytest.mark.parametrize("args, message", [(["--split", "nope"], "nope"), (["--top", "0"], "--top"),
                                           (["--apply", "x.json", "--undo"], "cannot be used together"),
                                           (["--folds", "1"], "--folds must be 0"),
                                           (["--folds", "41"], "--folds 41 is more than the 40 image(s) of class"),
                                           (["--fold-epochs", "0"], "--fold-epochs must be at least 1")])
def test_bad_options_are_one_line_errors(cli, tiny_run, tmp_path, args, message):
    code, _, err = cli("clean", tiny_run, "--out", tmp_path / "p.html", *args)
    one_line(code, err, message)
