"""``xaiclip explain``, ``batch`` and ``components`` subcommands (filled in by the explainer issues)."""

from __future__ import annotations

COMMANDS: list = []
