"""Voxel-to-RAS geometry of a napari layer that was not opened by this plugin.

Layers read by this plugin carry their exact geometry in
``metadata["xaiclip_geometry"]``. Layers from other readers carry it only in
their napari transform, and readers differ in what napari's world frame means:

* a non-identity ``affine`` (or a rotation or shear) is read as NIfTI readers
  such as napari-nifti and napari-nibabel set it: the file's voxel-to-RAS
  matrix, data in the file's own axis order;
* ``scale``/``translate`` alone are read in this plugin's display convention
  (world axes inferior, posterior, left, as :func:`napari_xaiclip.io.display_affine`);
* an identity transform says nothing about the patient: the geometry is unknown
  and writing it would put the volume at the scanner origin in 1 mm voxels, so
  :func:`layer_ras_affine` returns ``None`` and callers say so.

No Qt here; napari's transform classes only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["GeometryUnknown", "layer_ras_affine", "transform_matrix"]


class GeometryUnknown(ValueError):
    """A layer whose voxel-to-patient geometry cannot be known."""


def transform_matrix(scale=None, translate=None, rotate=None, shear=None, affine=None, ndim: int = 3):
    """napari's data-to-world 4x4 matrix for the last three axes: ``affine @ (T R Sh S)``."""
    from napari.utils.transforms import Affine

    def last3(values, default):
        return default if values is None else np.asarray(values, float)[-ndim:]

    composite = Affine(
        scale=last3(scale, np.ones(ndim)), translate=last3(translate, np.zeros(ndim)),
        rotate=None if rotate is None else np.asarray(rotate, float)[-ndim:, -ndim:],
        shear=None if shear is None else _last_shear(shear, ndim), ndim=ndim)
    outer = np.eye(ndim + 1) if affine is None else np.asarray(affine, float)[-ndim - 1:, -ndim - 1:]
    return outer @ composite.affine_matrix


def _last_shear(shear, ndim: int):
    shear = np.asarray(shear, float)
    if shear.ndim == 2:
        return shear[-ndim:, -ndim:]
    return shear[-(ndim * (ndim - 1)) // 2:] if shear.size else None


def layer_ras_affine(scale=None, translate=None, rotate=None, shear=None, affine=None) -> np.ndarray | None:
    """Voxel (layer data axes) to RAS mm, or ``None`` when the transform says nothing.

    Parameters are a layer's transform as napari's writer hooks receive them
    (``meta["scale"]`` and so on) or as ``layer.scale`` etc.
    """
    from .io import display_affine

    outer = np.eye(4) if affine is None else np.asarray(affine, float)[-4:, -4:]
    inner = transform_matrix(None, None, rotate, shear)
    if not np.allclose(outer, np.eye(4)) or not np.allclose(inner, np.eye(4)):
        return transform_matrix(scale, translate, rotate, shear, affine)
    s = np.ones(3) if scale is None else np.asarray(scale, float)[-3:]
    t = np.zeros(3) if translate is None else np.asarray(translate, float)[-3:]
    if np.allclose(s, 1.0) and np.allclose(t, 0.0):
        return None
    return display_affine(s, t)


def layer_ras_affine_of(layer) -> np.ndarray | None:
    """:func:`layer_ras_affine` of a napari layer object."""
    return layer_ras_affine(layer.scale, layer.translate, layer.rotate, layer.shear,
                            layer.affine.affine_matrix)
