"""How a long crawl shows progress: repainted on a terminal, a few plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """How a long stage shows progress, decided by where the text goes.

    On a terminal: one line repainted in place (`\\r`) at most every `interval` seconds (4 times
    a second). Anywhere else (a file, a pipe, a CI log): one line when a stage starts and one
    when it ends, never `\\r`, so a redirected crawl stays a few lines long."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, interval: float = 0.25):
        self.enabled, self.interval = enabled, interval
        self.stream = stream if stream is not None else sys.stderr
        self.tty = enabled and _isatty(self.stream)
        self._last, self._width = float("-inf"), 0

    def start(self, text: str) -> None:
        """A stage begins: painted on a terminal, one line elsewhere."""
        if self.tty:
            self._paint(text)
        elif self.enabled:
            print(text, file=self.stream, flush=True)

    def update(self, text: str) -> None:
        """Repaint on a terminal when the interval has passed; nothing elsewhere."""
        if self.tty and time.monotonic() - self._last >= self.interval:
            self._paint(text)

    def end(self, text: str) -> None:
        """A stage ends: painted and closed with a newline on a terminal, one line elsewhere."""
        if self.tty:
            self._paint(text)
            self.stream.write("\n")
            self._width = 0
        elif self.enabled:
            print(text, file=self.stream, flush=True)

    def _paint(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._last, self._width = time.monotonic(), len(text)


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
