"""Layers as the widgets see them: names, geometry copied from the source image, slice lookup,
the ROI and box-prompt layers."""

from __future__ import annotations

import numpy as np

from ..slicing import check_slice, slice_translate, take_slice
from .notify import notify_error


__all__ = ["BOX_LAYER_NAME", "GEOMETRY_KEYS", "LOCALIZER_MAP_NAME", "ROI_NAME", "SEGMENTATION_NAME", "box_from_shapes", "current_index", "ensure_box_layer", "find_box", "geometry_kwargs", "go_to_index", "image_slice_coords", "label_colormap", "replace_layer", "roi_layer", "roi_slice", "set_labels_slice", "set_slicing_axis", "slice_layer_kwargs", "slice_prompt", "source_metadata", "start_box_drawing", "viewer_slice", "volume_of"]


GEOMETRY_KEYS = ("scale", "translate", "rotate", "shear", "affine")


def volume_of(layer) -> np.ndarray:
    """The 3D grey-level data of an image layer, or a ValueError saying what is wrong."""
    if layer is None:
        raise ValueError("no image layer: open a NIfTI volume (File > Open) or the sample phantom first")
    if getattr(layer, "rgb", False):
        raise ValueError(f"layer {layer.name!r} is RGB; pick a grey-level CT/MR volume")
    if getattr(layer, "multiscale", False):
        raise ValueError(f"layer {layer.name!r} is multiscale; pick a single-resolution volume")
    data = layer.data
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"layer {layer.name!r} has {data.ndim} dimensions {tuple(data.shape)}; "
                         "pick a 3D volume (z, y, x)")
    return np.asarray(data)


def geometry_kwargs(layer) -> dict:
    """scale/translate/rotate/shear/affine of a layer, to make derived layers line up with it."""
    return {k: np.asarray(getattr(layer, k)).copy() if k != "affine" else layer.affine.affine_matrix.copy()
            for k in GEOMETRY_KEYS}


def source_metadata(layer) -> dict:
    """Metadata derived layers inherit: the source geometry and the source's name."""
    meta = dict(layer.metadata or {})
    keep = {k: meta[k] for k in ("xaiclip_geometry",) if k in meta}
    if "xaiclip_geometry" not in keep:
        keep["xaiclip_geometry"] = _geometry_of_foreign_layer(layer)
    keep["xaiclip_source"] = layer.name
    return keep


def _geometry_of_foreign_layer(layer) -> dict:
    """Geometry of a layer opened by another reader, from its napari transform (affine None: unknown)."""
    from ..layer_geometry import layer_ras_affine_of

    affine = layer_ras_affine_of(layer)
    spacing = None if affine is None else list(np.linalg.norm(affine[:3, :3], axis=0))
    return {"shape": list(np.shape(layer.data)[-3:]), "affine": None if affine is None else affine.tolist(),
            "source_affine": None, "source_shape": None, "source_ornt": None, "source_path": None,
            "spacing": spacing, "header": None}


def slice_layer_kwargs(layer, axis: int, index: int, n_slices: int = 1) -> dict:
    """Geometry and metadata for a layer holding ``n_slices`` slices from ``index`` along ``axis``."""
    kw = geometry_kwargs(layer)
    kw["translate"] = np.asarray(slice_translate(layer.translate, layer.scale, axis, index))
    meta = source_metadata(layer)
    meta["xaiclip_slice"] = {"axis": int(axis), "index": int(index), "n_slices": int(n_slices)}
    kw["metadata"] = meta
    return kw


def current_index(viewer, layer, axis: int) -> int:
    """Data index along ``axis`` of ``layer`` at the viewer's current position."""
    point = np.asarray(viewer.dims.point, float)
    data_point = np.asarray(layer.world_to_data(point[-layer.ndim:]), float)
    n = layer.data.shape[axis]
    return int(np.clip(np.round(data_point[axis]), 0, n - 1))


def go_to_index(viewer, layer, axis: int, index: int) -> None:
    """Move the viewer's slider so that ``layer`` shows slice ``index`` along ``axis``."""
    check_slice(layer.data.shape[-3:], axis, index)
    data_point = np.asarray(layer.world_to_data(np.asarray(viewer.dims.point, float)[-layer.ndim:]), float)
    data_point[axis] = index
    world = np.asarray(layer.data_to_world(data_point), float)
    offset = viewer.dims.ndim - layer.ndim
    viewer.dims.set_point(offset + axis, float(world[axis]))


def set_slicing_axis(viewer, axis: int) -> None:
    """Show slices along ``axis`` in the 2D view (the other two axes displayed)."""
    ndim = viewer.dims.ndim
    offset = ndim - 3
    others = [offset + a for a in range(3) if a != axis]
    order = [a for a in range(offset)] + [offset + axis] + others
    viewer.dims.order = tuple(order)


def viewer_slice(viewer, layer) -> tuple[int, int]:
    """(axis, index) of the slice of ``layer`` the 2D view shows now (axis 0 in 3D view)."""
    offset = viewer.dims.ndim - 3
    hidden = [a - offset for a in viewer.dims.not_displayed if a >= offset]
    axis = hidden[-1] if (viewer.dims.ndisplay == 2 and hidden) else 0
    return axis, current_index(viewer, layer, axis)


def replace_layer(viewer, name: str, data, layer_type: str = "image", **kwargs):
    """Update a layer named ``name`` in place when it fits, else (re)create it."""
    if name in viewer.layers:
        old = viewer.layers[name]
        if old._type_string == layer_type and old.data.shape == np.shape(data):
            old.data = data
            for key, value in kwargs.items():
                if key in ("name",):
                    continue
                try:
                    setattr(old, key, value)
                except (AttributeError, ValueError, TypeError):
                    pass
            return old
        viewer.layers.remove(old)
    add = getattr(viewer, f"add_{layer_type}")
    return add(data, name=name, **kwargs)


ROI_NAME = "ROI"


SEGMENTATION_NAME = "segmentation"


BOX_LAYER_NAME = "box prompt"
LOCALIZER_MAP_NAME = "localizer map"


def image_slice_coords(image_layer, other_layer, vertices: np.ndarray) -> np.ndarray:
    """Vertices in ``other_layer``'s data coordinates -> the image layer's data coordinates."""
    world = np.asarray([other_layer.data_to_world(v) for v in np.asarray(vertices, float)])
    return np.asarray([image_layer.world_to_data(w) for w in world])


def roi_layer(viewer, image_layer, create: bool = True):
    """The "ROI" labels layer for ``image_layer`` (same shape and geometry), made when missing.

    A ROI layer of another shape (another volume) is kept under a new name, never overwritten.
    """
    shape = tuple(image_layer.data.shape[-3:])
    if ROI_NAME in viewer.layers:
        layer = viewer.layers[ROI_NAME]
        if tuple(layer.data.shape) == shape:
            return layer
        layer.name = f"{ROI_NAME} ({'x'.join(map(str, layer.data.shape))})"
    if not create:
        return None
    meta = source_metadata(image_layer)
    layer = viewer.add_labels(np.zeros(shape, np.uint8), name=ROI_NAME, metadata=meta, opacity=0.45,
                              **geometry_kwargs(image_layer))
    layer.colormap = label_colormap("cyan")
    return layer


def set_labels_slice(layer, axis: int, index: int, plane: np.ndarray) -> None:
    """Write ``plane`` into slice ``index`` along ``axis`` of a labels layer through napari's undoable
    path (``Labels.data_setitem``): Ctrl+Z restores the slice as it was. Wrap several calls in
    ``layer.block_history()`` to undo them as one step."""
    current = take_slice(layer.data, axis, index)
    changed = np.nonzero(np.asarray(current) != plane)
    if not changed[0].size:
        return
    indices = list(changed)
    indices.insert(axis, np.full(changed[0].size, index, dtype=np.intp))
    layer.data_setitem(tuple(indices), np.asarray(plane)[changed].astype(layer.data.dtype), refresh=True)


def label_colormap(colour: str):
    """One colour for :data:`napari_xaiclip.outputs.LABEL_VALUE` (the value every ROI and mask uses)."""
    from napari.utils.colormaps import DirectLabelColormap

    from ..outputs import LABEL_VALUE

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", LABEL_VALUE: colour})


def roi_slice(viewer, image_layer, axis: int, index: int):
    """The ROI on one slice as it is now (brush edits included), or None without an ROI layer."""
    from ..slicing import take_slice

    layer = roi_layer(viewer, image_layer, create=False)
    if layer is None:
        return None
    return np.asarray(take_slice(np.asarray(layer.data), axis, index)) > 0


def box_from_shapes(viewer, image_layer, axis: int, index: int):
    """(x0, y0, x1, y1) of the last rectangle drawn on this slice in the "box prompt" layer, or None."""
    if BOX_LAYER_NAME not in viewer.layers:
        return None
    shapes = viewer.layers[BOX_LAYER_NAME]
    for kind, verts in reversed(list(zip(shapes.shape_type, shapes.data))):
        if kind != "rectangle":
            continue
        v = image_slice_coords(image_layer, shapes, verts)[:, -3:]
        if not np.allclose(v[:, axis], index, atol=0.51):
            continue
        plane = np.delete(v, axis, axis=1)  # (rows, cols) of the slice
        r0, c0 = plane.min(0) + 0.5
        r1, c1 = plane.max(0) + 0.5
        return float(c0), float(r0), float(c1), float(r1)
    return None


def find_box(viewer, image_layer, axis: int, index: int, margin: int = 5):
    """The box prompt for a slice and where it came from.

    Order: a rectangle in the "box prompt" layer on this slice; the box the
    segmentation used on this slice; the ROI's bounding box grown by ``margin``.
    """
    from ..pipeline import box_from_mask

    box = box_from_shapes(viewer, image_layer, axis, index)
    if box is not None:
        return box, "box prompt layer"
    if SEGMENTATION_NAME in viewer.layers:
        boxes = viewer.layers[SEGMENTATION_NAME].metadata.get("xaiclip_boxes", {})
        key = f"{axis}:{index}"
        if key in boxes:
            return tuple(boxes[key]), "segmentation box"
    roi = roi_slice(viewer, image_layer, axis, index)
    if roi is not None and roi.any():
        return box_from_mask(roi, margin), "ROI bounding box"
    raise ValueError(f"no box prompt for slice {index}: draw a rectangle in the '{BOX_LAYER_NAME}' layer "
                     "or make an ROI first")


def ensure_box_layer(viewer, image_layer):
    """A Shapes layer for box prompts, aligned with the image, in rectangle mode."""
    if BOX_LAYER_NAME in viewer.layers:
        return viewer.layers[BOX_LAYER_NAME]
    kw = geometry_kwargs(image_layer)
    layer = viewer.add_shapes(name=BOX_LAYER_NAME, ndim=3, edge_color="yellow", face_color="transparent",
                              edge_width=1.5, **kw)
    layer.mode = "add_rectangle"
    return layer


def start_box_drawing(viewer, image_layer) -> None:
    """Select the "box prompt" layer in rectangle mode, ready for the user to draw a box."""
    if image_layer is None:
        notify_error("open a volume first")
        return
    shapes = ensure_box_layer(viewer, image_layer)
    viewer.layers.selection.active = shapes
    shapes.mode = "add_rectangle"


def slice_prompt(viewer, layer):
    """(volume, axis, index, box, box origin) of the slice the viewer shows for ``layer``: what every
    single-slice action (segment, component analysis) starts from. ValueError says what is missing."""
    volume = volume_of(layer)
    axis, index = viewer_slice(viewer, layer)
    box, origin = find_box(viewer, layer, axis, index)
    return volume, axis, index, box, origin
