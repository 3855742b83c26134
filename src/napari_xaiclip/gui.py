"""``xaiclip gui`` / ``make demo``: napari with a volume and every widget docked in working order.

Without a volume it opens the synthetic phantom, and the model choosers pick the
fast phantom-trained demo models for it (and say so); a real volume keeps the
default segmenter, LiteMedSAM.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["dock_widgets", "launch", "open_volume"]


def open_volume(viewer, volume: str | None = None, labels: str | None = None, modality: str = "ct"):
    """Add a NIfTI volume (and labels) or the phantom sample to ``viewer``; returns the image layer."""
    from ._reader import read_nifti
    from ._sample_data import _sample

    if volume is None:
        tuples = _sample(modality)
    else:
        tuples = read_nifti(str(volume))
        if labels is not None:
            lab = read_nifti(str(labels))[0]
            tuples.append((lab[0].astype("int32"), {**lab[1], "opacity": 0.4}, "labels"))
    image_layer = None
    for data, kwargs, kind in tuples:
        layer = getattr(viewer, f"add_{kind}")(data, **kwargs)
        if kind == "image" and image_layer is None:
            image_layer = layer
    return image_layer


def dock_widgets(viewer) -> dict:
    """Dock every plugin widget in working order; returns {title: widget}.

    The slice picker sits on top, the four steps (preprocessing, ROI,
    segmentation, explainers) share a tabbed dock below it, metrics at the bottom.
    """
    from qtpy.QtWidgets import QScrollArea

    from .widgets import DOCK_ORDER

    docked, docks = {}, {}
    first_in_group: dict = {}
    for title, cls, area, group in DOCK_ORDER:
        widget = cls(viewer)
        if group is None:  # small docks: no scroll area, no wasted height
            scroll = widget
        else:
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(widget)
        tab_with = first_in_group.get(group) if group else None
        dock = viewer.window.add_dock_widget(scroll, name=title, area=area, tabify=False)
        if tab_with is not None:
            viewer.window._qt_window.tabifyDockWidget(tab_with, dock)
        elif group:
            first_in_group[group] = dock
        docked[title] = widget
        docks[title] = dock
    for dock in first_in_group.values():
        dock.raise_()
    _size_docks(viewer, docks)
    return docked


def _size_docks(viewer, docks: dict) -> None:
    """Give the step tabs most of the right column and the metrics table a modest strip."""
    from qtpy.QtCore import Qt

    window = viewer.window._qt_window
    if "Slice picker" in docks:
        docks["Slice picker"].setMaximumHeight(docks["Slice picker"].sizeHint().height() + 10)
        window.resizeDocks([docks["Slice picker"]], [470], Qt.Orientation.Horizontal)
    if "Metrics" in docks:
        docks["Metrics"].setMinimumHeight(230)
        window.resizeDocks([docks["Metrics"]], [240], Qt.Orientation.Vertical)


def _say_which_models(layer) -> None:
    """On the phantom: a notification that the demo models are in use, and what real scans get."""
    from napari.utils.notifications import show_info

    from .widgets._cards import PHANTOM_NOTE
    from .widgets._common import layer_is_phantom

    if layer is not None and layer_is_phantom(layer):
        show_info(PHANTOM_NOTE)


def launch(volume: str | None = None, labels: str | None = None, modality: str = "ct", block: bool = True,
           viewer=None):
    """Open napari with ``volume`` (or the phantom) and the widgets docked; returns the viewer."""
    import napari

    from .widgets._guard import keep_triton_out

    keep_triton_out()
    if volume is not None and not Path(volume).exists():
        raise ValueError(f"{volume}: no such file or folder")
    viewer = viewer or napari.Viewer(title="napari-xaiclip")
    layer = open_volume(viewer, volume, labels, modality)
    widgets = dock_widgets(viewer)
    if layer is not None:
        viewer.layers.selection.active = layer
        if "Metrics" in widgets:
            widgets["Metrics"].autosave.restore(layer)
    picker = widgets.get("Slice picker")
    if picker is not None and layer is not None:
        picker.layer_choice.set_layer(layer.name)
        picker.go_to_middle()
    _say_which_models(layer)
    if block:
        napari.run()
    return viewer
