"""Small helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path


def free_port() -> int:
    """A loopback port free at the time of asking (nothing listens on it once returned)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path, with its bytes: compare two to prove that
    a command left a tree byte-identical."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def with_verdict(run: Path, confusion: list[list[int]]) -> None:
    """Give a run folder's model.json the held-out `confusion` matrix and the training verdict
    camkit.verdict gives for it (its own history, 40 training images a class, pretrained)."""
    from camkit.run import read_history
    from camkit.verdict import judge

    meta = json.loads((run / "model.json").read_text())
    meta["confusion"] = confusion
    meta["verdict"] = judge(confusion, meta["classes"], read_history(run), [40, 40], True).to_json()
    (run / "model.json").write_text(json.dumps(meta))
