"""Small helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

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
