"""Metrics dock: one row per explanation run, sortable, exportable; saving of
heatmaps, ROI and segmentation as NIfTI in the source geometry, plus a figure."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..pipeline import METRIC_FIELDS
from ._common import notify_error, notify_info

if TYPE_CHECKING:
    import napari

#: Table columns; the warnings ("⚠ n", the texts as tooltip) next to the method, never scrolled out of view.
COLUMNS = ["image", "slice"] + METRIC_FIELDS[:2] + ["warnings"] + METRIC_FIELDS[2:] + ["segu"]
#: Extra fields of the CSV export (the JSON keeps every field of every record).
EXPORT_EXTRA = ["run_id", "model", "target", "segmenter", "segmenter_trained_on"]


class _NumberItem(QTableWidgetItem):
    """Sorts numerically, with empty cells last."""

    def __init__(self, value):
        super().__init__("–" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value)))
        self.value = value
        self.setFlags(self.flags() & ~Qt.ItemFlag.ItemIsEditable)

    def __lt__(self, other):
        a, b = self.value, getattr(other, "value", None)
        if a is None or b is None:
            return b is None and a is not None
        try:
            return float(a) < float(b)
        except (TypeError, ValueError):
            return str(a) < str(b)


class _WarningsItem(_NumberItem):
    """How many warnings a run has ("–" for none), the warnings themselves as tooltip."""

    def __init__(self, warnings):
        warnings = list(warnings or [])
        super().__init__(len(warnings) or None)
        if warnings:
            self.setText(f"⚠ {len(warnings)}")
            self.setToolTip("\n\n".join(warnings))


class MetricsWidget(QWidget):
    """A table of every explanation run in the viewer; CSV export and "save everything"."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.records: list[dict] = []
        self._seen: set = set()
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c.replace("_", " ") for c in COLUMNS])
        self.table.setSortingEnabled(True)
        self.table.setMinimumHeight(160)
        from .autosave import AutosaveController

        self.autosave = AutosaveController(napari_viewer)
        self.autosave_box = QCheckBox("Autosave ROI and heatmaps to the session folder")
        self.autosave_box.setChecked(self.autosave.enabled)
        self.autosave_box.toggled.connect(self._toggle_autosave)
        self.export_csv = QPushButton("Export CSV…")
        self.save_all = QPushButton("Save heatmaps, ROI, segmentation, figure…")
        self.clear = QPushButton("Clear")
        row = QHBoxLayout()
        for w in (self.export_csv, self.save_all, self.clear):
            row.addWidget(w)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addWidget(self.table)
        lay.addLayout(row)
        lay.addWidget(self.autosave_box)
        lay.addWidget(self.status)
        self.export_csv.clicked.connect(lambda: self.write_csv())
        self.save_all.clicked.connect(lambda: self.save_everything())
        self.clear.clicked.connect(self._clear)
        napari_viewer.layers.events.inserted.connect(self._layer_added)
        for layer in napari_viewer.layers:
            self._watch(layer)

    def _toggle_autosave(self, on: bool) -> None:
        self.autosave.enabled = bool(on)
        if on:
            for layer in self.viewer.layers:
                self.autosave.mark(layer)

    # --- collecting --------------------------------------------------------
    def _layer_added(self, event):
        self._watch(event.value)

    def _watch(self, layer):
        if layer._type_string != "image":
            return
        layer.events.data.connect(lambda *_ , ly=layer: self.collect(ly))
        self.collect(layer)

    def collect(self, layer) -> None:
        """Add the rows of a heatmap layer's run, once per run."""
        meta = layer.metadata or {}
        run, records = meta.get("xaiclip_run_id"), meta.get("xaiclip_records")
        if not run or not records or (run, layer.name) in self._seen:
            return
        self._seen.add((run, layer.name))
        for rec in records:
            self.add_record(rec)

    def add_record(self, rec: dict) -> None:
        self.records.append(rec)
        sorting = self.table.isSortingEnabled()
        self.table.setSortingEnabled(False)
        r = self.table.rowCount()
        self.table.insertRow(r)
        for c, key in enumerate(COLUMNS):
            item = _WarningsItem(rec.get(key)) if key == "warnings" else _NumberItem(rec.get(key))
            self.table.setItem(r, c, item)
        self.table.setSortingEnabled(sorting)
        self.table.resizeColumnsToContents()

    def _clear(self):
        self.records.clear()
        self.table.setRowCount(0)

    # --- export ------------------------------------------------------------
    def write_csv(self, path: str | None = None) -> str | None:
        from ..reports import write_metrics

        if not self.records:
            notify_error("no explanation has run yet")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export metrics", "metrics.csv", "CSV (*.csv)")
            if not path:
                return None
        p = Path(path)
        write_metrics(p.parent, self.records, COLUMNS + EXPORT_EXTRA, stem=p.stem)
        self.status.setText(f"wrote {p.with_suffix('.csv')} and {p.with_suffix('.json')}")
        return str(p)

    def save_everything(self, folder: str | None = None) -> list[str]:
        """Heatmap layers, ROI and segmentation as NIfTI in the source geometry, metrics, and a figure."""
        from .._writer import write_image, write_labels

        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Save results into")
            if not folder:
                return []
        out = Path(folder)
        written = []
        try:
            for layer in list(self.viewer.layers):
                meta = layer.metadata or {}
                if "xaiclip_geometry" not in meta:
                    continue
                stem = _file_stem(layer.name)
                if layer._type_string == "labels" and layer.name in ("ROI", "segmentation"):
                    written += write_labels(str(out / f"{stem}.nii.gz"), layer.data, _layer_meta(layer))
                elif layer._type_string == "image" and meta.get("xaiclip_records"):
                    written += write_image(str(out / f"{stem}.nii.gz"), layer.data, _layer_meta(layer))
            if self.records:
                self.write_csv(str(out / "metrics.csv"))
                written += [str(out / "metrics.csv"), str(out / "metrics.json")]
            written += self.save_figure(out)
        except (ValueError, OSError) as exc:
            notify_error(f"saving failed: {exc}")
            return written
        self.status.setText(f"saved {len(written)} files into {out}")
        notify_info(f"saved {len(written)} files into {out}")
        return written

    def save_figure(self, out: Path) -> list[str]:
        """A PNG per explained slice: traditional and ROI-guided heatmaps side by side."""
        from ..reports import save_figure
        from ..slicing import take_slice

        by_slice: dict = {}
        for layer in self.viewer.layers:
            for rec in (layer.metadata or {}).get("xaiclip_records", []):
                by_slice.setdefault((rec["image"], rec["axis"], rec["slice"]), []).append((layer, rec))
        written = []
        for (image, axis, index), items in by_slice.items():
            if image not in self.viewer.layers:
                continue
            src = self.viewer.layers[image]
            plane = np.asarray(take_slice(np.asarray(src.data), axis, index))
            panels = []
            for layer, rec in sorted(items, key=lambda t: (t[1]["method"], t[1]["mode"] != "traditional")):
                k = index - layer.metadata["xaiclip_slice"]["index"]
                heat = np.asarray(take_slice(np.asarray(layer.data), axis, k))
                panels.append({"title": f"{rec['method']} ({rec['mode']})", "heatmap": heat,
                               "roi": _slice_of(self.viewer, "ROI", axis, index),
                               "mask": _slice_of(self.viewer, "segmentation", axis, index)})
            spacing = [s for a, s in enumerate(np.asarray(src.scale)[-3:]) if a != axis]
            path = out / f"{_file_stem(image)}-slice{index}.png"
            save_figure(path, plane, panels, spacing=spacing)
            written.append(str(path))
        return written


def _slice_of(viewer, name, axis, index):
    from ..slicing import take_slice

    if name not in viewer.layers:
        return None
    return np.asarray(take_slice(np.asarray(viewer.layers[name].data), axis, index)) > 0


def _layer_meta(layer) -> dict:
    return {"metadata": layer.metadata, "scale": layer.scale, "translate": layer.translate}


def _file_stem(name: str) -> str:
    keep = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in name.replace(" · ", "_"))
    return keep.strip("_") or "layer"
