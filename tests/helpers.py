"""Small helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A loopback port free at the time of asking (nothing listens on it once returned)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(run: Path, data: Path) -> Iterator[str]:
    """camkit's app of `run` (cleaning `data`) on a free loopback port; yields its URL and
    closes it on exit."""
    from camkit.app import launch
    port = free_port()
    blocks = launch(run, port=port, block=False, data=data)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        blocks.close()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path, with its bytes: compare two to prove that
    a command left a tree byte-identical."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def with_verdict(run: Path, confusion: list[list[int]]) -> None:
    """Give a run folder's model.json the held-out `confusion` matrix and the training verdict
    camkit.train.verdict gives for it (its own history, 40 training images a class, pretrained)."""
    from camkit.train.run import read_history
    from camkit.train.verdict import judge

    meta = json.loads((run / "model.json").read_text())
    meta["confusion"] = confusion
    meta["verdict"] = judge(confusion, meta["classes"], read_history(run), [40, 40], True).to_json()
    (run / "model.json").write_text(json.dumps(meta))
