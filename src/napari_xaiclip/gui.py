"""``xaiclip gui`` / ``make demo``: napari with a volume and every widget docked in working order."""

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
    """Dock every plugin widget in working order; returns {title: widget}."""
    from .widgets import DOCK_ORDER

    docked = {}
    for title, cls in DOCK_ORDER:
        widget = cls(viewer)
        viewer.window.add_dock_widget(widget, name=title, area="right", tabify=False)
        docked[title] = widget
    return docked


def launch(volume: str | None = None, labels: str | None = None, modality: str = "ct", block: bool = True,
           viewer=None):
    """Open napari with ``volume`` (or the phantom) and the widgets docked; returns the viewer."""
    import napari

    if volume is not None and not Path(volume).is_file():
        raise ValueError(f"{volume}: no such file")
    viewer = viewer or napari.Viewer(title="napari-xaiclip")
    layer = open_volume(viewer, volume, labels, modality)
    widgets = dock_widgets(viewer)
    picker = widgets.get("Slice picker")
    if picker is not None and layer is not None:
        picker.layer_choice.set_layer(layer.name)
        picker.go_to_middle()
    if block:
        napari.run()
    return viewer
