"""Slice picker: choose the volume, the axis and the slice every other widget works on.

The index slider and napari's dims slider stay in sync both ways; the slice
position is shown in RAS millimetres from the volume's affine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QSlider, QSpinBox, QWidget

from ..slicing import AXIS_NAMES, slice_position_mm
from .controls import LayerChoice
from .layers import current_index, go_to_index, set_slicing_axis

if TYPE_CHECKING:
    import napari


class SlicePickerWidget(QWidget):
    """Volume, axis (axial / coronal / sagittal) and slice index, synced with the viewer.

    Other widgets read :meth:`selection` (layer, axis, index) and listen to
    ``changed``.
    """

    changed = Signal()

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.layer_choice = LayerChoice(napari_viewer, ("image",))
        self.axis_choice = QComboBox()
        for axis, name in AXIS_NAMES.items():
            self.axis_choice.addItem(f"{name} (axis {axis})", axis)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.spin = QSpinBox()
        self.middle_button = QPushButton("Middle slice")
        self.position = QLabel("–")
        self.position.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row = QHBoxLayout()
        row.addWidget(self.slider, 1)
        row.addWidget(self.spin)
        form = QFormLayout(self)
        form.addRow("Volume", self.layer_choice)
        form.addRow("Axis", self.axis_choice)
        form.addRow("Slice", row)
        form.addRow("", self.middle_button)
        form.addRow("Position", self.position)
        self._syncing = False
        self.layer_choice.currentIndexChanged.connect(self._layer_changed)
        self.axis_choice.currentIndexChanged.connect(self._axis_changed)
        self.slider.valueChanged.connect(self._index_changed)
        self.spin.valueChanged.connect(self._index_changed)
        self.middle_button.clicked.connect(self.go_to_middle)
        napari_viewer.dims.events.point.connect(self._dims_changed)
        self._layer_changed()

    # --- public -----------------------------------------------------
    @property
    def axis(self) -> int:
        return int(self.axis_choice.currentData())

    @property
    def index(self) -> int:
        return int(self.spin.value())

    def layer(self):
        return self.layer_choice.layer()

    def selection(self):
        """(image layer or None, axis, index)."""
        return self.layer(), self.axis, self.index

    def set_axis(self, axis: int) -> None:
        self.axis_choice.setCurrentIndex(self.axis_choice.findData(int(axis)))

    def set_index(self, index: int) -> None:
        self.spin.setValue(int(index))

    def go_to_middle(self) -> None:
        layer = self.layer()
        if layer is not None and layer.ndim >= 3:
            self.set_index(layer.data.shape[-3:][self.axis] // 2)

    # --- sync -------------------------------------------------------
    def _layer_changed(self, *_):
        self._axis_changed()

    def _axis_changed(self, *_):
        layer = self.layer()
        enabled = layer is not None and layer.ndim >= 3
        for w in (self.slider, self.spin, self.middle_button):
            w.setEnabled(enabled)
        if not enabled:
            self.position.setText("no 3D image layer")
            return
        n = layer.data.shape[-3:][self.axis]
        self._syncing = True
        self.slider.setRange(0, n - 1)
        self.spin.setRange(0, n - 1)
        self._syncing = False
        set_slicing_axis(self.viewer, self.axis)
        self._dims_changed()

    def _index_changed(self, value: int) -> None:
        if self._syncing:
            return
        self._syncing = True
        self.slider.setValue(value)
        self.spin.setValue(value)
        self._syncing = False
        layer = self.layer()
        if layer is not None and layer.ndim >= 3:
            go_to_index(self.viewer, layer, self.axis, value)
        self._show_position()
        self.changed.emit()

    def _dims_changed(self, *_):
        if self._syncing:
            return
        layer = self.layer()
        if layer is None or layer.ndim < 3:
            return
        index = current_index(self.viewer, layer, self.axis)
        if index != self.spin.value():
            self._syncing = True
            self.slider.setValue(index)
            self.spin.setValue(index)
            self._syncing = False
            self.changed.emit()
        self._show_position()

    def _show_position(self) -> None:
        layer = self.layer()
        if layer is None:
            return
        from ..layer_geometry import layer_ras_affine_of

        geometry = (layer.metadata or {}).get("xaiclip_geometry") or {}
        shape = layer.data.shape[-3:]
        affine = geometry.get("affine")
        affine = layer_ras_affine_of(layer) if affine is None else np.asarray(affine)
        if affine is not None:
            ras = slice_position_mm(affine, shape, self.axis, self.index)
            names = "RAS"
            along = int(np.argmax(np.abs(affine[:3, self.axis])))
            self.position.setText(f"{names[along]} = {ras[along]:.1f} mm  "
                                  f"(RAS {ras[0]:.1f}, {ras[1]:.1f}, {ras[2]:.1f})")
        else:
            self.position.setText("patient position unknown: the layer carries no scan geometry")
