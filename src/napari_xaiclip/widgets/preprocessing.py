"""Preprocessing widget: CT windows, MR percentile clipping and the XAI-CLIP
adaptive enhancement, with a live preview on the current slice and
"apply to volume" in a background worker."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..preprocess import CT_WINDOWS, apply_preset
from ..slicing import slice_layer_data, take_slice
from .controls import double_spin, LayerChoice
from .layers import geometry_kwargs, replace_layer, slice_layer_kwargs, source_metadata, viewer_slice, volume_of
from .notify import notify_error
from .run_panel import RunPanel

if TYPE_CHECKING:
    import napari

PRESET_LABELS = {**{f"ct-{k}": f"CT {k} ({lv:g}/{w:g} HU)" for k, (lv, w) in CT_WINDOWS.items()},
                 "mr": "MR percentile clip", "adaptive": "Adaptive (XAI-CLIP)", "none": "None (raw)"}


class PreprocessingWidget(QWidget):
    """Enhance slices for the models: preview on the current slice, apply to the whole volume."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.source = LayerChoice(napari_viewer, ("image",))
        self.preset = QComboBox()
        for key, label in PRESET_LABELS.items():
            self.preset.addItem(label, key)
        self.level = double_spin(-2000, 4000, 40)
        self.width = double_spin(1, 8000, 400)
        self.auto_bg = QCheckBox("Otsu")
        self.auto_bg.setChecked(True)
        self.bg_value = double_spin(-5000, 1e6, 0)
        self.bg_value.setEnabled(False)
        self.p_low = double_spin(0, 100, 5, 0.5)
        self.p_high = double_spin(0, 100, 95, 0.5)
        self.clip_limit = double_spin(0.1, 100, 2.0, 0.1, 2)
        self.tiles = QSpinBox()
        self.tiles.setRange(1, 64)
        self.tiles.setValue(8)
        self.preview = QCheckBox("Live preview on the current slice")
        self.run = RunPanel("Apply to volume")
        bg_row = QHBoxLayout()
        bg_row.addWidget(self.auto_bg)
        bg_row.addWidget(self.bg_value, 1)
        pct_row = QHBoxLayout()
        pct_row.addWidget(self.p_low)
        pct_row.addWidget(self.p_high)
        form = QFormLayout()
        form.addRow("Image", self.source)
        form.addRow("Preset", self.preset)
        form.addRow("Level (HU)", self.level)
        form.addRow("Width (HU)", self.width)
        form.addRow("Background threshold", bg_row)
        form.addRow("Percentiles (low, high)", pct_row)
        form.addRow("CLAHE clip limit", self.clip_limit)
        form.addRow("CLAHE tiles (n x n)", self.tiles)
        self._form = form
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.preview)
        lay.addWidget(self.run)
        lay.addStretch(1)
        self.preset.currentIndexChanged.connect(self._preset_changed)
        self.auto_bg.toggled.connect(lambda on: self.bg_value.setEnabled(not on))
        for w in (self.level, self.width, self.bg_value, self.p_low, self.p_high, self.clip_limit):
            w.valueChanged.connect(self._update_preview)
        self.tiles.valueChanged.connect(self._update_preview)
        self.auto_bg.toggled.connect(self._update_preview)
        self.preview.toggled.connect(self._preview_toggled)
        self.source.currentIndexChanged.connect(self._update_preview)
        napari_viewer.dims.events.point.connect(self._update_preview)
        self.run.run_button.clicked.connect(self.apply_to_volume)
        self.preset.setCurrentIndex(self.preset.findData("adaptive"))
        self._preset_changed()

    # --- parameters -------------------------------------------------
    @property
    def preset_key(self) -> str:
        return str(self.preset.currentData())

    def params(self) -> dict:
        """Keyword arguments of :func:`~napari_xaiclip.preprocess.apply_preset` for the chosen preset."""
        key = self.preset_key
        if key.startswith("ct-"):
            return {"level": self.level.value(), "width": self.width.value()}
        if key == "mr":
            return {"percentiles": (self.p_low.value(), self.p_high.value())}
        if key == "adaptive":
            return {"bg_threshold": None if self.auto_bg.isChecked() else self.bg_value.value(),
                    "percentiles": (self.p_low.value(), self.p_high.value()),
                    "clip_limit": self.clip_limit.value(), "tile_grid": (self.tiles.value(),) * 2}
        return {}

    def _preset_changed(self, *_):
        key = self.preset_key
        ct, adaptive, mr = key.startswith("ct-"), key == "adaptive", key == "mr"
        if ct:
            level, width = CT_WINDOWS[key[3:]]
            self.level.setValue(level)
            self.width.setValue(width)
        if adaptive:
            self.p_low.setValue(5.0)
            self.p_high.setValue(95.0)
        if mr:
            self.p_low.setValue(0.5)
            self.p_high.setValue(99.5)
        for w, on in ((self.level, ct), (self.width, ct), (self.bg_value, adaptive and not self.auto_bg.isChecked()),
                      (self.auto_bg, adaptive), (self.p_low, adaptive or mr), (self.p_high, adaptive or mr),
                      (self.clip_limit, adaptive), (self.tiles, adaptive)):
            w.setEnabled(on)
        self._update_preview()

    def _check_params(self) -> None:
        if self.p_low.value() >= self.p_high.value():
            raise ValueError(f"low percentile {self.p_low.value()} must be below high {self.p_high.value()}")

    # --- preview ----------------------------------------------------
    @property
    def preview_name(self) -> str:
        layer = self.source.layer()
        return f"{layer.name if layer else 'image'} · preview"

    def _preview_toggled(self, on: bool) -> None:
        if on:
            self._update_preview()
        elif self.preview_name in self.viewer.layers:
            self.viewer.layers.remove(self.preview_name)

    def _update_preview(self, *_):
        if not self.preview.isChecked():
            return
        layer = self.source.layer()
        if layer is None:
            return
        try:
            self._check_params()
            volume = volume_of(layer)
            axis, index = viewer_slice(self.viewer, layer)
            out = apply_preset(take_slice(volume, axis, index), self.preset_key, **self.params())
        except ValueError as exc:
            notify_error(f"preview: {exc}")
            return
        kw = slice_layer_kwargs(layer, axis, index)
        kw["metadata"]["xaiclip_preprocess"] = {"preset": self.preset_key, **self.params()}
        replace_layer(self.viewer, self.preview_name, slice_layer_data(out, axis), "image",
                      colormap="gray", contrast_limits=_limits(out), **kw)

    # --- apply ------------------------------------------------------
    def apply_to_volume(self) -> None:
        layer = self.source.layer()
        try:
            self._check_params()
            volume = volume_of(layer)
        except ValueError as exc:
            notify_error(str(exc))
            return
        preset, params = self.preset_key, self.params()

        def work():
            n = volume.shape[0]
            if preset != "adaptive":
                yield 0, 1, None
                out = apply_preset(volume, preset, **params)
                yield 1, 1, None
                return out
            out = np.zeros(volume.shape, np.uint8)
            for k in range(n):
                out[k] = apply_preset(volume[k], preset, **params)
                yield k + 1, n, None
            return out

        def done(out):
            meta = source_metadata(layer)
            meta["xaiclip_preprocess"] = {"preset": preset, **params}
            name = f"{layer.name} · {preset}"
            replace_layer(self.viewer, name, out, "image", colormap="gray",
                          contrast_limits=_limits(out), metadata=meta, **geometry_kwargs(layer))

        self.run.start(work, on_done=done, description=f"{PRESET_LABELS[preset]} on {layer.name}")


def _limits(out: np.ndarray) -> tuple[float, float]:
    if out.dtype == np.uint8:
        return 0.0, 255.0
    lo, hi = float(np.nanmin(out)), float(np.nanmax(out))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)
