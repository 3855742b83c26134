"""Pieces every widget uses: layer pickers, geometry copying, slice lookup and a
Run/Cancel panel that drives a background worker with a progress bar."""

from __future__ import annotations

import time
import traceback
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..slicing import check_slice, slice_translate

if TYPE_CHECKING:
    import napari

GEOMETRY_KEYS = ("scale", "translate", "rotate", "shear", "affine")


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


def napari_colormap(spec: dict):
    """A napari Colormap from :func:`napari_xaiclip.display.heatmap_colormap`'s plain spec."""
    from napari.utils.colormaps import Colormap

    return Colormap(colors=spec["colors"], controls=spec["controls"], name=spec["name"])


def heatmap_layer_kwargs(heatmap, signed=None) -> dict:
    """add_image keyword arguments that keep a heatmap readable over any scan (translucent, transparent low end)."""
    from ..display import heatmap_style

    style = heatmap_style(heatmap, signed)
    return {"colormap": napari_colormap(style["colormap"]), "blending": style["blending"],
            "opacity": style["opacity"], "contrast_limits": style["contrast_limits"]}


def restyle_heatmap(layer, heatmap=None, force: bool = False) -> None:
    """Follow a heatmap layer's growing range (and its sign) with its limits and colour map.

    While a run fills the map the limits move only when they change by more than 5 %
    (one redraw per update); ``force`` sets the final map's exact limits.
    """
    from ..display import heatmap_colormap, heatmap_limits, is_signed

    data = layer.data if heatmap is None else heatmap
    signed = is_signed(data)
    name = heatmap_colormap(signed)["name"]
    if layer.colormap.name != name:
        layer.colormap = napari_colormap(heatmap_colormap(signed))
    lo, hi = heatmap_limits(data, signed)
    old_lo, old_hi = layer.contrast_limits
    moved = abs(hi - old_hi) > 0.05 * max(abs(old_hi), 1e-12) or abs(lo - old_lo) > 0.05 * max(abs(old_lo), 1e-12)
    if force or moved:
        layer.contrast_limits = (lo, hi)  # refreshes the layer
    else:
        layer.refresh()


class WorkerWarning(str):
    """A warning a worker yields as its payload, ``(done, total, WorkerWarning(text))``:
    the RunPanel shows it on the GUI thread at once and keeps it in ``panel.warnings``."""


def layer_is_phantom(layer) -> bool:
    """Whether an image layer holds the synthetic phantom (its geometry metadata says so)."""
    from ..io import is_phantom_description

    geometry = (getattr(layer, "metadata", None) or {}).get("xaiclip_geometry") or {}
    return is_phantom_description(geometry.get("description"))


def phantom_warnings(volume_is_phantom: bool, segmenter=None, localizer=None) -> list[WorkerWarning]:
    """:func:`napari_xaiclip.provenance.phantom_model_warnings` as worker payloads (call in the worker)."""
    from ..provenance import phantom_model_warnings

    return [WorkerWarning(w) for w in phantom_model_warnings(volume_is_phantom, segmenter, localizer)]


class LayerChoice(QComboBox):
    """A combo box of the viewer's layers of some kinds, kept up to date."""

    def __init__(self, viewer: "napari.viewer.Viewer", kinds=("image",), allow_none: bool = False,
                 volumes_only: bool = True, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.kinds = tuple(kinds)
        self.allow_none = allow_none
        self.volumes_only = volumes_only
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(14)
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.changed.connect(self.refresh)
        viewer.layers.events.reordered.connect(self.refresh)
        self.refresh()

    def _layers(self):
        from napari.layers import Image, Labels, Shapes

        types = {"image": Image, "labels": Labels, "shapes": Shapes}
        layers = [ly for ly in self.viewer.layers if any(isinstance(ly, types[k]) for k in self.kinds)]
        if self.volumes_only:  # one-slice results (previews, heatmaps) are not inputs
            layers = [ly for ly in layers if "xaiclip_slice" not in (ly.metadata or {})]
        return layers

    def refresh(self, *_):
        current = self.currentText()
        self.blockSignals(True)
        self.clear()
        if self.allow_none:
            self.addItem("(none)")
        for ly in self._layers():
            self.addItem(ly.name)
        index = self.findText(current)
        self.setCurrentIndex(index if index >= 0 else (0 if self.count() else -1))
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentIndexChanged.emit(self.currentIndex())

    def layer(self):
        """The chosen layer or ``None``."""
        name = self.currentText()
        if not name or name == "(none)" or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def set_layer(self, name: str) -> None:
        self.refresh()
        idx = self.findText(name)
        if idx >= 0:
            self.setCurrentIndex(idx)


def slice_choice_layout(current, range_, first, last) -> QVBoxLayout:
    """"current slice" above "range [first] to [last]": two short lines fit the dock's width."""
    lay = QVBoxLayout()
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(current)
    row = QHBoxLayout()
    for w in (range_, first, QLabel("to"), last):
        row.addWidget(w)
    row.addStretch(1)
    lay.addLayout(row)
    return lay


def double_spin(lo: float, hi: float, value: float, step: float = 1.0, decimals: int = 1) -> QDoubleSpinBox:
    w = QDoubleSpinBox()
    w.setRange(lo, hi)
    w.setDecimals(decimals)
    w.setSingleStep(step)
    w.setValue(value)
    return w


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


class RunPanel(QWidget):
    """Run and Cancel buttons, a progress bar and a status line driving one worker at a time.

    ``start(make_generator, ...)`` runs a generator function in a napari
    ``thread_worker``; each yielded ``(done, total, payload)`` moves the bar and
    is passed to ``on_progress`` (throttled to ``min_interval`` seconds, the
    last one always delivered). A :class:`WorkerWarning` payload is shown as a
    napari warning at once and collected in ``warnings`` instead (it arrives
    before the run's result). Cancel quits the worker at its next yield.
    Errors become napari notifications; the widget is re-enabled afterwards.
    """

    def __init__(self, run_text: str = "Run", parent=None, min_interval: float = 0.15):
        super().__init__(parent)
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row = QHBoxLayout()
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        self.cancel_button.clicked.connect(self.cancel)
        self.worker = None
        self._watched_window = None
        self.min_interval = min_interval
        self._last_update = 0.0
        self._pending = None
        self._napari_progress = None
        self.last_error: str | None = None
        self.warnings: list[str] = []
        self.cancelled = False
        self._ended = False  # the worker has returned, failed or aborted; only `finished` is to come

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, make_generator: Callable[[], Any], on_progress=None, on_done=None,
              on_aborted=None, description: str = "working") -> bool:
        """Start a worker; returns False (and notifies) when one is already running."""
        from napari.qt.threading import create_worker

        from ..models import preload_libraries

        if self.running:
            notify_info("A run is already in progress; wait for it or press Cancel.")
            return False
        self.last_error = None
        self.warnings = []
        self.cancelled = False
        self._ended = False
        self._on_progress, self._on_done, self._on_aborted = on_progress, on_done, on_aborted
        self._description = description
        self._pending = None
        preload_libraries()  # first imports of torchvision/triton must not happen in a worker thread
        self.worker = create_worker(make_generator, _ignore_errors=True)  # reported by _errored
        self._watch_window()
        self.worker.yielded.connect(self._yielded)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._errored)
        self.worker.aborted.connect(self._aborted)
        self.worker.finished.connect(self._finished)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.status.setText(f"{description}…")
        self._t0 = time.perf_counter()
        self.worker.start()
        return True

    def _watch_window(self) -> None:
        """Cancel the run when the window holding this panel closes (napari quitting)."""
        window = self.window()
        if window is not None and window is not self._watched_window:
            window.installEventFilter(self)
            self._watched_window = window

    def eventFilter(self, obj, event) -> bool:
        from qtpy.QtCore import QEvent

        if event.type() == QEvent.Type.Close and self.worker is not None:
            self.detach()
        return False

    def detach(self) -> None:
        """Stop the worker and cut it loose: its remaining signals must not reach widgets being deleted."""
        worker = self.worker
        if worker is None:
            return
        worker.quit()
        for signal in (worker.yielded, worker.returned, worker.errored, worker.aborted, worker.finished):
            try:
                signal.disconnect()
            except (TypeError, RuntimeError):
                pass
        if self._napari_progress is not None:
            self._napari_progress.close()
            self._napari_progress = None
        self.worker = None

    def cancel(self) -> None:
        if self.worker is not None and not self._ended:  # a run that already returned has nothing to stop
            self.cancelled = True
            self.status.setText("cancelling…")
            self.worker.quit()

    def _yielded(self, item) -> None:
        done, total, payload = item
        if isinstance(payload, WorkerWarning):  # not progress: shown now, never throttled away
            self._warn(str(payload))
            return
        self.progress.setRange(0, max(int(total), 1))
        self.progress.setValue(int(done))
        self._napari_progress_update(done, total)
        self._pending = item
        now = time.perf_counter()
        if now - self._last_update >= self.min_interval or done >= total:
            self._flush()

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)
            notify_warning(text)

    def _flush(self) -> None:
        if self._pending is not None and self._on_progress is not None:
            item, self._pending = self._pending, None
            self._last_update = time.perf_counter()
            self._on_progress(*item)

    def _napari_progress_update(self, done, total) -> None:
        from napari.utils import progress

        if self._napari_progress is None:
            self._napari_progress = progress(total=int(total), desc=self._description)
        bar = self._napari_progress
        if bar.total != int(total):
            bar.total = int(total)
        bar.update(int(done) - bar.n)

    def _returned(self, result) -> None:
        self._ended = True
        self._flush()
        seconds = time.perf_counter() - self._t0
        n = len(self.warnings)
        self.status.setText(f"done in {seconds:.1f} s" + (f" · {n} warning{'s' * (n > 1)}: {self.warnings[0]}"
                                                           if n else ""))
        if self._on_done is not None:
            try:
                self._on_done(result)
            except Exception as exc:  # a bug in our own callback must still reach the user
                self._report(exc)

    def _errored(self, exc) -> None:
        self._ended = True
        self._report(exc)

    def _report(self, exc) -> None:
        self.last_error = f"{exc}"
        self.status.setText(f"error: {exc}")
        if not isinstance(exc, ValueError):
            traceback.print_exception(exc)
        notify_error(f"{self._description} failed: {exc}")

    def _aborted(self) -> None:
        self._ended = True
        self.status.setText("cancelled")
        if self._on_aborted is not None:
            self._on_aborted()

    def _finished(self) -> None:
        if self._napari_progress is not None:
            self._napari_progress.close()
            self._napari_progress = None
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(1 if self.last_error is None and not self.cancelled else 0)


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
