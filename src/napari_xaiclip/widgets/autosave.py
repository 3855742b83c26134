"""Autosave of the ROI and heatmap layers to a session folder, and restore on reopening.

Edits (brush strokes, new ROIs, finished heatmaps) are saved about a second
after they happen and when the viewer closes; opening the same volume again
brings the ROI and heatmaps back with a notification.
"""

from __future__ import annotations

import weakref

import numpy as np
from qtpy.QtCore import QTimer

from ..session import SessionStore, autosave_enabled, source_key, volume_fingerprint
from .layers import ROI_NAME
from .notify import notify_info, notify_warning
from .state import state_of

SAVED_KEYS = ("xaiclip_slice", "xaiclip_records", "xaiclip_run_id", "xaiclip_source", "xaiclip_partial",
              "xaiclip_roi_source")


def _source_of(viewer, layer):
    """The image layer a derived layer belongs to: the one its metadata named when it was added.

    The reference is kept in the viewer's state, so renaming the image later does not lose it.
    """
    sources = state_of(viewer).sources
    ref = sources.get(layer)
    source = ref() if ref is not None else None
    if source is None:
        name = (layer.metadata or {}).get("xaiclip_source")
        source = viewer.layers[name] if name in viewer.layers else None
        if source is not None:
            sources[layer] = weakref.ref(source)
    return source if source is not None and source in viewer.layers else None


def _identity(viewer, image_layer) -> tuple[str, str]:
    """(source, fingerprint) of an image layer, computed once: a file replaced on disk while
    napari runs must not move its session (and, mixing the new bytes with the old voxels,
    it could never match another volume's)."""
    identities = state_of(viewer).identities
    cached = identities.get(image_layer)
    if cached is None:
        geometry = (image_layer.metadata or {}).get("xaiclip_geometry") or {}
        path = geometry.get("source_path")
        source = source_key(path) if path else f"layer:{image_layer.name}"
        affine = geometry.get("affine")
        if affine is None:
            affine = [list(image_layer.scale), list(image_layer.translate)]
        cached = (source, volume_fingerprint(path, image_layer.data, affine))
        identities[image_layer] = cached
    return cached


def store_for(viewer, image_layer, root=None) -> SessionStore:
    source, fingerprint = _identity(viewer, image_layer)
    return SessionStore(source, image_layer.data.shape[-3:], root=root, fingerprint=fingerprint)


def _is_source_image(layer) -> bool:
    """A scan opened through this plugin's reader (it carries the patient geometry), not a derived map."""
    meta = layer.metadata or {}
    return layer._type_string == "image" and bool(meta.get("xaiclip_geometry")) and "xaiclip_slice" not in meta \
        and "xaiclip_records" not in meta


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
        self.on_off = None  # called when autosave turns itself off (the widget unticks its box)
        self._dirty: dict = {}
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self.flush)
        self.saved_files: list = []
        viewer.layers.events.inserted.connect(self._inserted)
        for layer in list(viewer.layers):
            self._watch(layer)
            self._offer_restore(layer)
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        if app is not None:  # pending edits reach the disk when napari quits
            app.aboutToQuit.connect(self.flush)

    def _inserted(self, event):
        self._watch(event.value)
        self.mark(event.value)
        self._offer_restore(event.value)

    def _offer_restore(self, layer) -> None:
        """Bring back a scan's autosaved session when the scan is opened, whichever way the plugin
        was started (``xaiclip gui`` or napari's Plugins menu); once per image layer."""
        restored = state_of(self.viewer).restored
        if not self.enabled or layer in restored or not _is_source_image(layer):
            return
        restored.add(layer)
        self.restore(layer)

    def _watch(self, layer):
        if layer._type_string not in ("labels", "image"):
            return
        _source_of(self.viewer, layer)  # remember the source while its name still finds it
        layer.events.data.connect(lambda *_, ly=layer: self.mark(ly))
        if hasattr(layer.events, "paint"):
            layer.events.paint.connect(lambda *_, ly=layer: self.mark(ly))

    def mark(self, layer) -> None:
        """Schedule ``layer`` for saving (debounced)."""
        if not self.enabled or not _is_saved_kind(layer):
            return
        self._dirty[id(layer)] = layer
        self._timer.start()

    def flush(self) -> None:
        """Save every layer marked since the last flush; a session folder that cannot be written
        turns autosave off with one notification (this runs in Qt's event loop: never raise)."""
        layers, self._dirty = list(self._dirty.values()), {}
        for layer in layers:
            if not self.enabled:
                return
            source = _source_of(self.viewer, layer) if layer in self.viewer.layers else None
            if source is None:
                continue
            meta = {k: v for k, v in (layer.metadata or {}).items() if k in SAVED_KEYS}
            meta["kind"] = layer._type_string
            store = store_for(self.viewer, source, self.root)
            try:
                self.saved_files.append(store.save(layer.name, np.asarray(layer.data), meta))
            except OSError as exc:
                self._turn_off(store.root, exc)

    def _turn_off(self, folder, exc: OSError) -> None:
        self.enabled = False
        reason = exc.strerror or str(exc)
        notify_warning(f"autosave is off: cannot write {folder}: {reason}")
        if self.on_off is not None:
            self.on_off()

    def restore(self, image_layer) -> list[str]:
        """Add the autosaved ROI and heatmaps of ``image_layer``'s volume; returns the layer names added."""
        from .layers import geometry_kwargs, slice_layer_kwargs, source_metadata

        added = []
        store = store_for(self.viewer, image_layer, self.root)
        try:
            saved = store.load()
        except OSError as exc:
            self._turn_off(store.root, exc)
            return added
        for name, data, meta in saved:
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
                from .heatmap_style import heatmap_layer_kwargs

                self.viewer.add_image(data.astype(np.float32), name=name, **heatmap_layer_kwargs(data), **kw)
            added.append(name)
        if added:
            notify_info(f"restored {len(added)} autosaved layer(s) of {image_layer.name}: {', '.join(added)}")
        return added
