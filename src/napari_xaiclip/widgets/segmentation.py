"""Segmentation widget: run the chosen segmenter with a box prompt into the
"segmentation" labels layer, the baseline that explainers explain."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QCheckBox, QFormLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..outputs import LABEL_VALUE
from ..slicing import slice_layer_data, take_slice
from .controls import LayerChoice
from .heatmap_style import heatmap_layer_kwargs
from .layers import (
    geometry_kwargs,
    label_colormap,
    replace_layer,
    SEGMENTATION_NAME,
    set_labels_slice,
    slice_layer_kwargs,
    slice_prompt,
    source_metadata,
    start_box_drawing,
)
from .notify import layer_is_phantom, notify_error, phantom_warnings
from .run_panel import RunPanel
from .model_choice import SegmenterChoice

if TYPE_CHECKING:
    import napari


class SegmentationWidget(QWidget):
    """Segment the current slice with a box prompt (drawn, or the ROI's bounding box)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.image = LayerChoice(napari_viewer, ("image",))
        self.model = SegmenterChoice()
        self.model.bind_image(self.image)
        self.draw_box = QPushButton("Draw a box prompt")
        self.show_probs = QCheckBox("also show the probability map")
        self.run = RunPanel("Segment slice")
        self.info = QLabel("")
        self.info.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Image", self.image)
        form.addRow(self.model)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.draw_box)
        hint = QLabel("Box: the last rectangle in 'box prompt' on this slice, else the ROI's bounding box.")
        hint.setWordWrap(True)
        lay.addWidget(hint)
        lay.addWidget(self.show_probs)
        lay.addWidget(self.run)
        lay.addWidget(self.info)
        lay.addStretch(1)
        self.draw_box.clicked.connect(self._start_box)
        self.run.run_button.clicked.connect(self.segment)

    def _start_box(self):
        start_box_drawing(self.viewer, self.image.layer())

    def segment(self) -> None:
        from ..models import load_segmenter

        layer = self.image.layer()
        try:
            volume, axis, index, box, origin = slice_prompt(self.viewer, layer)
            spec, device = self.model.spec(), self.model.device_name()
        except ValueError as exc:
            notify_error(str(exc))
            return
        plane = np.asarray(take_slice(volume, axis, index))
        phantom = layer_is_phantom(layer)

        def work():
            yield 0, 1, None
            seg = load_segmenter(spec, device)
            warnings = phantom_warnings(phantom, seg)
            for w in warnings:
                yield 0, 1, w
            probs = seg.segment(plane, box=box)
            yield 1, 1, None
            return probs, seg, [str(w) for w in warnings]

        def done(result):
            probs, seg, warnings = result
            self._write(layer, axis, index, probs, box, spec, seg, warnings)
            area = int((probs > 0.5).sum())
            self.info.setText(f"slice {index}: {area} px segmented by {seg.name} with the {origin} "
                              f"({', '.join(f'{v:.0f}' for v in box)})"
                              + ("\n⚠ phantom-trained model on a scan that is not the phantom" if warnings else ""))
            if area == 0:
                notify_error("the segmentation is empty: check the box prompt")

        self.run.start(work, on_done=done, description="segmentation")

    def _write(self, layer, axis, index, probs, box, spec, seg, warnings):
        from ..provenance import model_provenance

        shape = tuple(layer.data.shape[-3:])
        if SEGMENTATION_NAME in self.viewer.layers and self.viewer.layers[SEGMENTATION_NAME].data.shape == shape:
            seg_layer = self.viewer.layers[SEGMENTATION_NAME]
        else:
            if SEGMENTATION_NAME in self.viewer.layers:
                self.viewer.layers[SEGMENTATION_NAME].name = f"{SEGMENTATION_NAME} (previous volume)"
            seg_layer = self.viewer.add_labels(np.zeros(shape, np.uint8), name=SEGMENTATION_NAME,
                                               metadata=source_metadata(layer), opacity=0.5,
                                               **geometry_kwargs(layer))
            seg_layer.colormap = label_colormap("orange")
        # napari's undoable path: Ctrl+Z restores the slice as it was before this segmentation
        set_labels_slice(seg_layer, axis, index, ((probs > 0.5) * LABEL_VALUE).astype(seg_layer.data.dtype))
        key = f"{axis}:{index}"
        seg_layer.metadata.setdefault("xaiclip_boxes", {})[key] = [float(v) for v in box]
        seg_layer.metadata.setdefault("xaiclip_warnings", {})[key] = list(warnings)
        seg_layer.metadata["xaiclip_model"] = spec
        seg_layer.metadata["xaiclip_provenance"] = model_provenance(seg)
        if self.show_probs.isChecked():
            kw = slice_layer_kwargs(layer, axis, index)
            replace_layer(self.viewer, f"{layer.name} · segmentation probability",
                          slice_layer_data(probs.astype(np.float32), axis), "image",
                          **{**heatmap_layer_kwargs(probs, signed=False), "contrast_limits": (0.0, 1.0)}, **kw)
