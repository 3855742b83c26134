"""Progress adapters: one status line on a terminal for the ``(text, done, total)`` callbacks of long jobs."""

from __future__ import annotations

import sys
import time

__all__ = ["TerminalProgress"]


class TerminalProgress:
    """One status line on stderr, rewritten when the step changes or every half second."""

    def __init__(self, stream=None, interval: float = 0.5):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.last = (None, 0.0)
        self.t0 = time.perf_counter()

    def __call__(self, text: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if text == self.last[0] and now - self.last[1] < self.interval:
            return
        self.last = (text, now)
        line = f"[{done + 1}/{total}] {text} ({now - self.t0:.0f} s)"
        if self.tty:
            print(f"\r{line:<78}", end="", file=self.stream, flush=True)
        elif text != getattr(self, "_printed", None):
            self._printed = text
            print(line, file=self.stream, flush=True)

    def message(self, level: str, text: str) -> None:
        """A ``warning:`` or ``note:`` line, on a line of its own even mid-progress."""
        if self.tty and self.last[0] is not None:
            print(file=self.stream)
        print(f"{level}: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream)
