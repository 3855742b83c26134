"""Take a 2D slice out of a volume and put a 2D result back at its place.

Axis 0 gives axial slices (Y, X), axis 1 coronal (Z, X), axis 2 sagittal (Z, Y).

Example
-------
>>> import numpy as np
>>> from napari_xaiclip.slicing import take_slice, slice_layer_data, slice_translate
>>> vol = np.arange(24).reshape(2, 3, 4)
>>> take_slice(vol, 1, 2).shape
(2, 4)
>>> slice_layer_data(np.ones((2, 4)), axis=1).shape
(2, 1, 4)
>>> slice_translate((0.0, 0.0, 0.0), (5.0, 2.0, 2.0), axis=0, index=3)
(15.0, 0.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "AXIS_NAMES",
    "check_slice",
    "filler_slices",
    "put_slice",
    "slice_layer_data",
    "slice_position_mm",
    "slice_translate",
    "take_slice",
]

AXIS_NAMES = {0: "axial", 1: "coronal", 2: "sagittal"}


def check_slice(shape: Sequence[int], axis: int, index: int) -> None:
    """Raise a ValueError naming the problem when (axis, index) is not a slice of ``shape``."""
    if len(shape) != 3:
        raise ValueError(f"expected a 3D volume (z, y, x), got shape {tuple(shape)}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    if not 0 <= index < shape[axis]:
        raise ValueError(f"slice {index} is outside 0..{shape[axis] - 1} along axis {axis}")


def take_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D slice ``index`` along ``axis`` (a view, not a copy)."""
    volume = np.asarray(volume)
    check_slice(volume.shape, axis, int(index))
    sel = [slice(None)] * 3
    sel[axis] = int(index)
    return volume[tuple(sel)]


def put_slice(volume: np.ndarray, axis: int, index: int, plane: np.ndarray) -> np.ndarray:
    """Write ``plane`` into ``volume`` at slice ``index`` along ``axis`` (in place); returns ``volume``."""
    check_slice(volume.shape, axis, int(index))
    expected = tuple(s for a, s in enumerate(volume.shape) if a != axis)
    plane = np.asarray(plane)
    if plane.shape != expected:
        raise ValueError(f"slice result has shape {plane.shape}, expected {expected} for axis {axis}")
    sel = [slice(None)] * 3
    sel[axis] = int(index)
    volume[tuple(sel)] = plane
    return volume


def slice_layer_data(plane: np.ndarray, axis: int = 0) -> np.ndarray:
    """A 2D result as a 3D layer with a single slice along ``axis`` (e.g. (1, H, W))."""
    plane = np.asarray(plane)
    if plane.ndim == 3:  # a stack of slices along axis 0 (range of slices), already 3D
        return np.moveaxis(plane, 0, axis)
    if plane.ndim != 2:
        raise ValueError(f"expected a 2D slice result, got shape {plane.shape}")
    return np.expand_dims(plane, axis)


def slice_translate(translate: Sequence[float], scale: Sequence[float], axis: int,
                    index: int) -> tuple[float, float, float]:
    """``translate`` of a one-slice layer so it sits on slice ``index`` of a volume layer."""
    out = [float(t) for t in translate][-3:]
    out[axis] += float(index) * float(list(scale)[-3:][axis])
    return tuple(out)


def slice_position_mm(affine: np.ndarray, shape: Sequence[int], axis: int, index: int) -> np.ndarray:
    """RAS position (mm) of the centre of slice ``index`` along ``axis``."""
    centre = (np.asarray(shape[-3:], float) - 1) / 2
    centre[axis] = index
    return (np.asarray(affine) @ np.append(centre, 1.0))[:3]


def filler_slices(volume: np.ndarray, axis: int, index: int, n: int = 8, prepare=None) -> list[np.ndarray]:
    """Up to ``n`` other slices of the volume, evenly spaced from first to last, never ``index``.

    They stand in for "what this image looks like elsewhere": the causal method's filler bank and the
    mean ablation of component analysis. ``prepare`` (e.g. the preprocessing the explained slice went
    through) is applied to each, so fillers and the explained slice live in the same intensity space.

    >>> vol = np.arange(10)[:, None, None] * np.ones((1, 2, 2))
    >>> [int(s[0, 0]) for s in filler_slices(vol, 0, 0, n=3)]
    [3, 6, 9]
    """
    size = volume.shape[axis]
    picks = [int(i) for i in np.unique(np.linspace(0, size - 1, n + 1).round()) if int(i) != index][:n]
    planes = [np.asarray(take_slice(volume, axis, i)) for i in picks]
    return [prepare(p) for p in planes] if prepare is not None else planes
