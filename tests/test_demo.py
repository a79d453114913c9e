import json

from camkit.demo import demo


def test_demo_learns_and_its_maps_find_the_item(tmp_path):
    """The README's main job, end to end and offline: >= 90% held-out accuracy, and the exact-CAM
    peak lands on the pasted item far more often than chance (the item covers ~15% of a canvas)."""
    result = demo(out=tmp_path / "demo", quiet=True)
    assert result.valid_accuracy >= 0.90
    assert result.pointing_game >= 0.8
    lines = (tmp_path / "demo" / "cams" / "cams.jsonl").read_text().splitlines()
    assert len(lines) == 80 and json.loads(lines[0])["method"] == "cam"
