"""Companion analyses: ExplainSeg masks from any heatmap layer, and the
segmenter's component analysis (ablating encoder and decoder components)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..slicing import filler_slices, slice_layer_data, take_slice
from .controls import LayerChoice
from .layers import replace_layer, SEGMENTATION_NAME, slice_prompt, volume_of
from .notify import layer_is_phantom, notify_error, phantom_warnings
from .run_panel import RunPanel
from .model_choice import SegmenterChoice

if TYPE_CHECKING:
    import napari

VARIANT_LABELS = {"xai-morph": "XAI & Morphology", "xai-ncut": "XAI & NCut",
                  "fusion-morph": "Fusion & Morphology", "fusion-ncut": "Fusion & NCut"}


def _heatmap_layers(viewer):
    return [ly for ly in viewer.layers if ly._type_string == "image" and (ly.metadata or {}).get("xaiclip_records")]


class CompanionsWidget(QWidget):
    """ExplainSeg (heatmap -> mask) and component analysis of a SAM-family segmenter."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        lay = QVBoxLayout(self)
        lay.addWidget(self._explainseg_box())
        lay.addWidget(self._components_box())
        lay.addStretch(1)

    # --- ExplainSeg ----------------------------------------------------------
    def _explainseg_box(self):
        box = QGroupBox("ExplainSeg: a mask from a heatmap")
        self.heatmap = QComboBox()
        self.variant = QComboBox()
        for key, label in VARIANT_LABELS.items():
            self.variant.addItem(label, key)
        self.mask_run = RunPanel("Make mask")
        self.mask_info = QLabel("")
        self.mask_info.setWordWrap(True)
        form = QFormLayout(box)
        form.addRow("Heatmap layer", self.heatmap)
        form.addRow("Variant", self.variant)
        form.addRow(self.mask_run)
        form.addRow(self.mask_info)
        self.viewer.layers.events.inserted.connect(self._refresh_heatmaps)
        self.viewer.layers.events.removed.connect(self._refresh_heatmaps)
        self._refresh_heatmaps()
        self.mask_run.run_button.clicked.connect(self.make_mask)
        return box

    def _refresh_heatmaps(self, *_):
        current = self.heatmap.currentText()
        self.heatmap.clear()
        self.heatmap.addItems([ly.name for ly in _heatmap_layers(self.viewer)])
        if current:
            self.heatmap.setCurrentText(current)

    def make_mask(self) -> None:
        """Turn the chosen heatmap layer into a labels layer with the chosen ExplainSeg variant."""
        from ..explain.postprocess import encoder_feature_map, explainseg
        from ..metrics import dice, iou
        from ..models import load_segmenter

        name, variant = self.heatmap.currentText(), self.variant.currentData()
        if not name or name not in self.viewer.layers:
            notify_error("no heatmap layer: run an explainer first")
            return
        heat_layer = self.viewer.layers[name]
        meta = heat_layer.metadata
        record = meta["xaiclip_records"][0]
        source = meta.get("xaiclip_source")
        if source not in self.viewer.layers:
            notify_error(f"the heatmap's image {source!r} is no longer open")
            return
        axis, first = meta["xaiclip_slice"]["axis"], meta["xaiclip_slice"]["index"]
        heat = np.asarray(take_slice(np.asarray(heat_layer.data), axis, 0))
        image = np.asarray(take_slice(volume_of(self.viewer.layers[source]), axis, first))
        seg_mask = None
        if SEGMENTATION_NAME in self.viewer.layers:
            seg_mask = np.asarray(take_slice(np.asarray(self.viewer.layers[SEGMENTATION_NAME].data), axis, first)) > 0
        spec, box = record.get("model", "default"), record["params"].get("box")

        def work():
            yield 0, 1, None
            features = None
            if variant.startswith("fusion"):
                features = encoder_feature_map(load_segmenter(spec), image, box=box)
            mask = explainseg(heat, image, variant, feature_map=features)
            yield 1, 1, None
            return mask

        def done(mask):
            from .layers import slice_layer_kwargs

            kw = slice_layer_kwargs(self.viewer.layers[source], axis, first)
            kw["metadata"]["xaiclip_explainseg"] = {"variant": variant, "heatmap": name}
            replace_layer(self.viewer, f"{name} · {VARIANT_LABELS[variant]}",
                          slice_layer_data(mask.astype(np.uint8), axis), "labels", opacity=0.5, **kw)
            text = f"{int(mask.sum())} px"
            if seg_mask is not None:
                text += f" · Dice {dice(mask, seg_mask):.3f}, IoU {iou(mask, seg_mask):.3f} vs the segmentation"
            self.mask_info.setText(text)

        self.mask_run.start(work, on_done=done, description=f"ExplainSeg {VARIANT_LABELS[variant]}")

    # --- components --------------------------------------------------------------
    def _components_box(self):
        box = QGroupBox("Component analysis (SAM family)")
        self.image = LayerChoice(self.viewer, ("image",))
        self.model = SegmenterChoice()
        self.model.bind_image(self.image)
        self.ablation = QComboBox()
        self.ablation.addItems(["zero", "mean"])
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["component", "Dice after ablation", "ATE (Dice points)"])
        self.table.setSortingEnabled(True)
        self.table.setMinimumHeight(180)
        self.comp_run = RunPanel("Ablate components")
        form = QFormLayout(box)
        form.addRow("Image", self.image)
        form.addRow(self.model)
        form.addRow("Ablation", self.ablation)
        form.addRow(self.comp_run)
        form.addRow(self.table)
        self.comp_run.run_button.clicked.connect(self.run_components)
        self.records: list[dict] = []
        return box

    def run_components(self) -> None:
        from ..explain.components import iter_component_effects
        from ..models import load_segmenter

        layer = self.image.layer()
        try:
            volume, axis, index, box, _ = slice_prompt(self.viewer, layer)
            spec, device = self.model.spec(), self.model.device_name()
        except ValueError as exc:
            notify_error(str(exc))
            return
        plane = np.asarray(take_slice(volume, axis, index))
        mode = self.ablation.currentText()
        fillers = filler_slices(volume, axis, index) if mode == "mean" else None

        phantom = layer_is_phantom(layer)

        def work():
            yield 0, 1, None
            seg = load_segmenter(spec, device)
            warnings = phantom_warnings(phantom, seg)
            for w in warnings:
                yield 0, 1, w
            gen = iter_component_effects(seg, plane, box=box, mode=mode, filler_slices=fillers)
            while True:  # cancellable between components
                try:
                    p = next(gen)
                except StopIteration as stop:
                    records = stop.value
                    break
                yield p.done, p.total, None
            return [{**r, "warnings": [str(w) for w in warnings]} for r in records]

        self.comp_run.start(work, on_done=self._show_components, description="component analysis")

    def _show_components(self, records) -> None:
        self.records = records
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(records))
        for r, rec in enumerate(records):
            for c, value in enumerate((rec["component"], rec["target_ablated"], rec["ate"])):
                item = QTableWidgetItem(value if isinstance(value, str) else f"{value:.3f}")
                item.setData(0x0100, value)  # Qt.UserRole keeps the number for sorting
                self.table.setItem(r, c, item)
        self.table.setSortingEnabled(True)
        self.table.resizeColumnsToContents()
