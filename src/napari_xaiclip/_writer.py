"""napari writer hooks: image and labels layers to NIfTI (or NRRD) in the source file's geometry.

A layer read by this plugin (or derived from one) carries its source geometry
in ``metadata["xaiclip_geometry"]``. One-slice layers (heatmaps, slice ROIs)
carry ``metadata["xaiclip_slice"] = {"axis", "index"}`` and are written as a
full volume that is zero outside their slice, so they overlay the scan in
3D Slicer or ITK-SNAP. Layers from other readers are written in the geometry
their napari transform implies (:mod:`napari_xaiclip.layer_geometry`); a layer
whose geometry is unknown is refused rather than written at the scanner origin.
"""

from __future__ import annotations

import numpy as np

from .io import Volume, is_nifti_path, save_volume, volume_from_layer_metadata
from .layer_geometry import GeometryUnknown, layer_ras_affine
from .slicing import put_slice

__all__ = ["layer_to_volume_array", "write_image", "write_labels"]


def layer_to_volume_array(data, meta: dict):
    """(array in the source volume's shape, Volume geometry) for a layer's data and metadata."""
    metadata = meta.get("metadata") or {}
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"only 3D layers can be written as NIfTI volumes, got shape {data.shape}")
    geometry = metadata.get("xaiclip_geometry")
    where = metadata.get("xaiclip_slice")
    if geometry is not None and where is not None:
        shape = tuple(geometry.get("shape") or ())
        if not shape:
            raise ValueError("slice layer without the source volume's shape in its metadata")
        full = np.zeros(shape, dtype=data.dtype)
        axis, start = int(where["axis"]), int(where["index"])
        for k in range(data.shape[axis]):
            put_slice(full, axis, start + k, np.take(data, k, axis=axis))
        data = full
    if geometry is None:
        return data, Volume(data, _foreign_affine(meta))
    if geometry.get("affine") is None:  # derived from a layer of unknown geometry
        _foreign_affine({"name": meta.get("name")})
    return data, volume_from_layer_metadata(data, metadata)


def _foreign_affine(meta: dict) -> np.ndarray:
    affine = layer_ras_affine(meta.get("scale"), meta.get("translate"), meta.get("rotate"),
                              meta.get("shear"), meta.get("affine"))
    if affine is None:
        name = meta.get("name") or "this layer"
        raise GeometryUnknown(
            f"{name!r} has no patient geometry (identity transform, not opened from a scan file): "
            "written as is it would not line up with any scan. Save it from a layer opened from the "
            "scan, or give the layer the scan's scale/translate or affine first")
    return affine


def _write(path: str, data, meta: dict, labels: bool) -> list[str]:
    nrrd = str(path).lower().endswith(".nrrd")
    if not (is_nifti_path(path) or nrrd):
        raise ValueError(f"{path}: choose a .nii, .nii.gz or .nrrd file name")
    array, vol = layer_to_volume_array(data, meta)
    if labels:
        array = array.astype(np.int16 if array.max(initial=0) > 255 or array.min(initial=0) < 0 else np.uint8)
    else:
        array = array.astype(np.float32)
    if nrrd:
        _write_nrrd(path, array, vol)
    else:
        save_volume(path, array, like=vol)
    return [path]


def _write_nrrd(path: str, array: np.ndarray, vol: Volume) -> None:
    """NRRD in the source file's grid when there is one, else in the display grid (same world points)."""
    from .io import to_source_order
    from .io_itk import write_itk

    if vol.source_affine is not None:
        write_itk(path, to_source_order(array, vol), vol.source_affine)
    else:
        write_itk(path, array, vol.affine)


def write_image(path: str, data, meta: dict) -> list[str]:
    """Write an image layer (scan, enhanced volume, heatmap) as float32 NIfTI or NRRD."""
    return _write(path, data, meta, labels=False)


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write a labels layer (ROI, segmentation) as integer NIfTI or NRRD."""
    return _write(path, data, meta, labels=True)
