"""Running a block of a test as an unprivileged user, for permission cases that root would ignore."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def unprivileged():
    """Run the block as user nobody when the tests run as root (root writes into read-only folders)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
