"""The command line's own error type."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """Bad input from the command line (exit status 2)."""
