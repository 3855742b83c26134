"""``xaiclip gui`` / ``make demo``: napari with a volume and every widget docked in working order.

Without a volume it opens the synthetic phantom, and the model choosers pick the
fast phantom-trained demo models for it (and say so); a real volume keeps the
default segmenter, LiteMedSAM.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["dock_widgets", "fit_to_screen", "launch", "main_window", "open_volume"]


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
            data = _checked_labels(str(labels), lab, tuples[0])
            tuples.append((data, {**lab[1], "opacity": 0.4}, "labels"))
    image_layer = None
    for data, kwargs, kind in tuples:
        layer = getattr(viewer, f"add_{kind}")(data, **kwargs)
        if kind == "image" and image_layer is None:
            image_layer = layer
    return image_layer


def _checked_labels(path: str, labels: tuple, image: tuple):
    """int32 labels of a label file's layer tuple, refused unless on the image's grid and integer."""
    from .labels import check_same_grid, labels_from_volume

    lab_geo, img_geo = (t[1]["metadata"]["xaiclip_geometry"] for t in (labels, image))
    files = (lab_geo["source_affine"], img_geo["source_affine"])
    check_same_grid(lab_geo["affine"], labels[0].shape, img_geo["affine"], image[0].shape, path,
                    shown=files if all(f is not None for f in files) else (None, None))
    return labels_from_volume(labels[0], source=path)


#: Minimum height (px) up to which a tabbed widget needs no scroll area of ours.
_SHORT = 200


def dock_widgets(viewer) -> dict:
    """Dock every plugin widget in working order; returns {title: widget}.

    The right column holds the slice picker on top, the steps (preprocessing, ROI,
    segmentation, explainers, masks) as tabs below it and the metrics table at its
    foot; the window then fills the screen, most of it for the canvas.
    """
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QScrollArea, QTabWidget

    from .widgets import DOCK_ORDER, TAB_TITLES

    docked, docks = {}, {}
    first_in_group: dict = {}
    window = None
    for title, cls, area, group in DOCK_ORDER:
        widget = cls(viewer)
        # Small docks and widgets that scroll by themselves go in as they are: no wasted height.
        if group is None or widget.minimumSizeHint().height() <= _SHORT:
            scroll = widget
        else:
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(widget)
        dock = viewer.window.add_dock_widget(scroll, name=title, area=area, tabify=False)
        window = window or main_window(dock)
        if title in TAB_TITLES:  # a tab shows the window title; napari keys the dock by its name
            dock.setWindowTitle(TAB_TITLES[title])
        if group in first_in_group:
            window.tabifyDockWidget(first_in_group[group], dock)
        elif group:
            first_in_group[group] = dock
        docked[title] = widget
        docks[title] = dock
    if window is None:
        return docked
    # Tabs above the steps, where they read as a row of headings.
    window.setTabPosition(Qt.DockWidgetArea.RightDockWidgetArea, QTabWidget.TabPosition.North)
    for dock in first_in_group.values():
        dock.raise_()
    fit_to_screen(window, docks, first_in_group.get("steps"))
    return docked


def main_window(docked):
    """The QMainWindow a docked widget (or its dock) lives in, reached through Qt's public parent chain."""
    from qtpy.QtWidgets import QMainWindow

    window = docked.window()
    if not isinstance(window, QMainWindow):
        raise RuntimeError(f"{docked!r} is not docked in a main window")
    return window


def fit_to_screen(window, docks: dict, steps=None) -> None:
    """Size the window to its screen's free area, then share out the right column.

    Maximised too where a window manager can do it; the explicit geometry is what
    counts without one (Xvfb) and until the manager answers.
    """
    from qtpy.QtGui import QGuiApplication
    from qtpy.QtWidgets import QApplication

    screen = window.screen() or QGuiApplication.primaryScreen()
    if screen is None:
        return
    free = screen.availableGeometry()
    window.setGeometry(free)
    if window.isVisible():
        window.showMaximized()
        QApplication.processEvents()  # the new size arrives asynchronously; dock sizes are shares of it
    _size_docks(window, docks, steps, free.width(), free.height())


def _size_docks(window, docks: dict, steps, width: int, height: int) -> None:
    """The right column a quarter of the screen wide (Qt keeps it at least as wide as its
    widgets need); below the slice picker the step tabs get three fifths of the height
    (the long steps scroll), the metrics table the rest."""
    from qtpy.QtCore import Qt

    right = Qt.DockWidgetArea.RightDockWidgetArea
    column = [d for d in docks.values() if window.dockWidgetArea(d) == right]
    if not column:
        return
    picker = docks.get("Slice picker")
    if picker is not None:  # as tall as its controls, never stretched
        picker.setMaximumHeight(picker.sizeHint().height() + 10)
    window.resizeDocks([column[0]], [min(width // 4, 560)], Qt.Orientation.Horizontal)
    metrics = docks.get("Metrics")
    if steps is not None and metrics in column:
        rest = height - (picker.maximumHeight() if picker is not None else 0) - 80  # menu, status bar, titles
        window.resizeDocks([steps, metrics], [rest * 3 // 5, rest - rest * 3 // 5], Qt.Orientation.Vertical)


def _say_which_models(layer) -> None:
    """On the phantom: a notification that the demo models are in use, and what real scans get."""
    from napari.utils.notifications import show_info

    from .widgets._cards import PHANTOM_NOTE
    from .widgets.notify import layer_is_phantom

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
    if layer is not None:  # the Metrics dock's autosave brings back this scan's saved session
        viewer.layers.selection.active = layer
    picker = widgets.get("Slice picker")
    if picker is not None and layer is not None:
        picker.layer_choice.set_layer(layer.name)
        picker.go_to_middle()
    viewer.reset_view()  # the volume was framed for the canvas before the window grew
    _say_which_models(layer)
    if block:
        napari.run()
    return viewer
