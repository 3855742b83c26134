"""Small shared helpers."""

from __future__ import annotations

import numpy as np

__all__ = ["to_plain"]


def to_plain(value, array_limit: int | None = None):
    """Nested values as JSON-friendly Python (dicts, lists, numbers, strings, None).

    numpy scalars become Python numbers, arrays lists (or ``"array(shape)"`` when
    larger than ``array_limit`` elements); other objects become None.

    >>> to_plain({"a": np.float32(0.5), "b": (np.arange(3), None)})
    {'a': 0.5, 'b': [[0, 1, 2], None]}
    """
    if isinstance(value, dict):
        return {str(k): to_plain(v, array_limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v, array_limit) for v in value]
    if isinstance(value, np.ndarray):
        if array_limit is not None and value.size > array_limit:
            return f"array{value.shape}"
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return None
