"""Autosave of the ROI and heatmap layers to a session folder, and restore on reopening.

Edits (brush strokes, new ROIs, finished heatmaps) are saved about a second
after they happen and when the viewer closes; opening the same volume again
brings the ROI and heatmaps back with a notification.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QTimer

from ..session import SessionStore, autosave_enabled
from ._common import ROI_NAME, notify_info

SAVED_KEYS = ("xaiclip_slice", "xaiclip_records", "xaiclip_run_id", "xaiclip_source", "xaiclip_partial",
              "xaiclip_roi_source")


def _source_of(viewer, layer):
    """The image layer a derived layer belongs to."""
    name = (layer.metadata or {}).get("xaiclip_source")
    return viewer.layers[name] if name in viewer.layers else None


def store_for(image_layer, root=None) -> SessionStore:
    geometry = (image_layer.metadata or {}).get("xaiclip_geometry") or {}
    source = geometry.get("source_path") or f"layer:{image_layer.name}"
    return SessionStore(source, image_layer.data.shape[-3:], root=root)


def _is_saved_kind(layer) -> bool:
    meta = layer.metadata or {}
    if layer._type_string == "labels" and layer.name == ROI_NAME:
        return True
    return layer._type_string == "image" and bool(meta.get("xaiclip_records"))


class AutosaveController:
    """Watches the viewer's ROI and heatmap layers and keeps the session folder current."""

    def __init__(self, viewer, enabled: bool | None = None, delay_ms: int = 1000, root=None):
        self.viewer = viewer
        self.enabled = autosave_enabled() if enabled is None else enabled
        self.root = root
        self._dirty: set = set()
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self.flush)
        self.saved_files: list = []
        viewer.layers.events.inserted.connect(self._inserted)
        for layer in viewer.layers:
            self._watch(layer)
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        if app is not None:  # pending edits reach the disk when napari quits
            app.aboutToQuit.connect(self.flush)

    def _inserted(self, event):
        self._watch(event.value)
        self.mark(event.value)

    def _watch(self, layer):
        if layer._type_string not in ("labels", "image"):
            return
        layer.events.data.connect(lambda *_, ly=layer: self.mark(ly))
        if hasattr(layer.events, "paint"):
            layer.events.paint.connect(lambda *_, ly=layer: self.mark(ly))

    def mark(self, layer) -> None:
        """Schedule ``layer`` for saving (debounced)."""
        if not self.enabled or not _is_saved_kind(layer):
            return
        self._dirty.add(layer.name)
        self._timer.start()

    def flush(self) -> None:
        """Save every layer marked since the last flush."""
        names, self._dirty = self._dirty, set()
        for name in names:
            if name not in self.viewer.layers:
                continue
            layer = self.viewer.layers[name]
            source = _source_of(self.viewer, layer)
            if source is None:
                continue
            meta = {k: v for k, v in (layer.metadata or {}).items() if k in SAVED_KEYS}
            meta["kind"] = layer._type_string
            self.saved_files.append(store_for(source, self.root).save(name, np.asarray(layer.data), meta))

    def restore(self, image_layer) -> list[str]:
        """Add the autosaved ROI and heatmaps of ``image_layer``'s volume; returns the layer names added."""
        from ._common import geometry_kwargs, slice_layer_kwargs, source_metadata

        added = []
        for name, data, meta in store_for(image_layer, self.root).load():
            if name in self.viewer.layers or tuple(meta.get("shape", ())) != tuple(image_layer.data.shape[-3:]):
                continue
            where = meta.get("xaiclip_slice")
            if where:
                kw = slice_layer_kwargs(image_layer, where["axis"], where["index"], where.get("n_slices", 1))
            else:
                kw = {**geometry_kwargs(image_layer), "metadata": source_metadata(image_layer)}
            kw["metadata"].update({k: v for k, v in meta.items() if k in SAVED_KEYS})
            kw["metadata"]["xaiclip_restored"] = meta.get("saved")
            if meta.get("kind") == "labels":
                self.viewer.add_labels(data.astype(np.uint8), name=name, opacity=0.45, **kw)
            else:
                from ._common import heatmap_layer_kwargs

                self.viewer.add_image(data.astype(np.float32), name=name, **heatmap_layer_kwargs(data), **kw)
            added.append(name)
        if added:
            notify_info(f"restored {len(added)} autosaved layer(s) of {image_layer.name}: {', '.join(added)}")
        return added
