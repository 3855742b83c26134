"""Small reusable controls: a layer picker that follows the viewer, slice-range choice, spin boxes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QVBoxLayout,
)


if TYPE_CHECKING:
    import napari


__all__ = ["LayerChoice", "double_spin", "slice_choice_layout"]


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
