"""napari reader hook: NIfTI (.nii, .nii.gz), DICOM (a .dcm file or a series folder), NRRD
(.nrrd, .nhdr) and MetaImage (.mha, .mhd) as an image layer, or a labels layer for label files.

The layer gets ``scale`` = voxel spacing, a ``translate`` that puts world
coordinates in RAS millimetres (rotated into the display axes), and the
source geometry in ``metadata`` so the writer can save derived layers back
onto the source file (as NIfTI, whatever the source format).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .io import is_scan_path, layer_geometry, load_volume

__all__ = ["get_reader", "read_nifti", "read_volume"]

LABEL_HINTS = ("label", "labels", "seg", "mask", "gt", "annotation")
NAME_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".dicom", ".ima", ".nrrd", ".nhdr", ".mha", ".mhd")


def get_reader(path):
    """Return :func:`read_volume` for one scan file (or a folder holding DICOM), else ``None`` (not ours)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if is_scan_path(path):
        return read_volume
    if os.path.isdir(path):
        from .io_itk import folder_has_dicom

        return read_volume if folder_has_dicom(path) else None
    return None


def looks_like_labels(path: str, data: np.ndarray) -> bool:
    """Integer voxels, few distinct values, and a label-like file name."""
    name = Path(path).name.lower()
    if not any(h in name.replace("-", "_").split(".")[0].split("_") for h in LABEL_HINTS):
        return False
    if data.size == 0 or not np.all(np.equal(np.mod(data[:: max(1, data.shape[0] // 8)], 1), 0)):
        return False
    return np.unique(data[:: max(1, data.shape[0] // 8)]).size <= 256


def _as_labels(data: np.ndarray) -> np.ndarray:
    """Integer voxels as they are; whole-number floats (NIfTI scaling) rounded into int32."""
    return data if data.dtype.kind in "iu" else np.rint(data).astype(np.int32)


def _load_asking_for_series(path):
    """load_volume, asking which series to open when a DICOM folder holds several (in napari)."""
    from .io_itk import SeveralSeries

    try:
        return load_volume(path)
    except SeveralSeries as several:
        from .widgets.series_dialog import ask_series

        uid = ask_series(several)
        if uid is None:
            raise
        return load_volume(path, series=uid)


def read_volume(path):
    """Layer data tuples for a scan (raises ValueError with the reason for bad files)."""
    if isinstance(path, list):
        path = path[0]
    vol = _load_asking_for_series(path)
    geometry = layer_geometry(vol)
    name = Path(path).name
    for suffix in NAME_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if looks_like_labels(str(path), vol.data):
        return [(_as_labels(vol.data), {"name": name, **geometry}, "labels")]
    kwargs = {"name": name, "colormap": "gray", **geometry, **window_kwargs(vol, geometry)}
    _say(f"{name}: {kwargs['metadata']['xaiclip_window']}")
    return [(vol.data, kwargs, "image")]


def window_kwargs(vol, geometry: dict) -> dict:
    """Contrast limits from :func:`napari_xaiclip.display.initial_window` (CT from the header, head CT
    in the brain window); the choice and its reason go into the layer's metadata."""
    from .display import initial_window

    limits, label = initial_window(vol)
    return {"contrast_limits": limits, "metadata": {**geometry["metadata"], "xaiclip_window": label}}


def _say(text: str) -> None:
    try:
        from napari.utils.notifications import show_info
    except ImportError:  # the reader used without napari
        return
    show_info(text)


#: Former name, kept for callers of the NIfTI-only reader.
read_nifti = read_volume
