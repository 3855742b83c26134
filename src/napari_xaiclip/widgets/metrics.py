"""Metrics dock: one row per explanation run, sortable, exportable; saving of
heatmaps, ROI and segmentation as NIfTI in the source geometry, plus a figure."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING


from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..pipeline import COST_FIELDS, METRIC_FIELDS, ROI_FIELDS
from .notify import notify_error, notify_info

if TYPE_CHECKING:
    import napari

#: Table columns; the warnings ("⚠ n", the texts as tooltip) next to the method, never scrolled out of view.
COLUMNS = ["image", "slice"] + METRIC_FIELDS[:2] + ["warnings"] + METRIC_FIELDS[2:] + ROI_FIELDS + COST_FIELDS + ["segu"]
#: Extra fields of the CSV export (the JSON keeps every field of every record).
EXPORT_EXTRA = ["run_id", "model", "target", "segmenter", "segmenter_trained_on"]
#: Columns shown until the user picks others under "Columns…"; hidden ones are still exported.
DEFAULT_VISIBLE = [c for c in COLUMNS if c in {
    "slice", "method", "mode", "warnings", "n_forward", "seconds", "deletion_auc", "dice_in_roi",
    "trivial_dice_in_roi", "pointing_in_roi", "trivial_pointing_in_roi", "trivial_deletion_auc"}]


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
        self.table.setMinimumHeight(100)  # the dock may sit in a column with others: no tall minimum
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.table.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.columns_menu = self._make_columns_menu()
        self.columns_button = QToolButton()
        self.columns_button.setText("Columns…")
        self.columns_button.setToolTip("Choose the table's columns (the CSV export keeps all of them)")
        self.columns_button.setMenu(self.columns_menu)
        self.columns_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        header = self.table.horizontalHeader()
        header.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        header.customContextMenuRequested.connect(lambda pos: self.columns_menu.popup(header.mapToGlobal(pos)))
        self.set_visible_columns(DEFAULT_VISIBLE)
        table_bar = QHBoxLayout()
        table_bar.addStretch(1)
        table_bar.addWidget(self.columns_button)
        from .autosave import AutosaveController

        self.autosave = AutosaveController(napari_viewer)
        self.autosave_box = QCheckBox("Autosave ROI and heatmaps to the session folder")
        self.autosave_box.setChecked(self.autosave.enabled)
        self.autosave_box.toggled.connect(self._toggle_autosave)
        self.autosave.on_off = lambda: self.autosave_box.setChecked(False)
        self.export_csv = QPushButton("Export CSV…")
        self.save_all = QPushButton("Save all…")
        self.save_all.setToolTip("Heatmaps, ROI and segmentation as NIfTI in the scan's geometry, metrics and figures")
        self.clear = QPushButton("Clear")
        row = QHBoxLayout()
        for w in (self.export_csv, self.save_all, self.clear):
            row.addWidget(w)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addLayout(table_bar)
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

    # --- columns -------------------------------------------------------------
    def _make_columns_menu(self) -> QMenu:
        menu = QMenu(self)
        for c, key in enumerate(COLUMNS):
            action = menu.addAction(key.replace("_", " "))
            action.setCheckable(True)
            action.setData(key)
            action.toggled.connect(lambda on, c=c: self.table.setColumnHidden(c, not on))
        menu.addSeparator()
        menu.addAction("Show all", lambda: self.set_visible_columns(COLUMNS))
        menu.addAction("Default columns", lambda: self.set_visible_columns(DEFAULT_VISIBLE))
        return menu

    def visible_columns(self) -> list[str]:
        """The keys of the columns the table shows, in table order."""
        return [key for c, key in enumerate(COLUMNS) if not self.table.isColumnHidden(c)]

    def set_visible_columns(self, keys) -> None:
        """Show the columns named in ``keys`` (COLUMNS entries), hide the others."""
        keys = set(keys)
        for c, action in enumerate(a for a in self.columns_menu.actions() if a.isCheckable()):
            action.setChecked(COLUMNS[c] in keys)
            self.table.setColumnHidden(c, COLUMNS[c] not in keys)  # toggled fires on changes only

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
        """Heatmaps, ROI and segmentation in the scan's geometry, metrics and figures, named as the CLI names them."""
        from .save_results import save_results

        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Save results into")
            if not folder:
                return []
        out = Path(folder)
        try:
            written = save_results(self.viewer, out, self.records, COLUMNS + EXPORT_EXTRA)
        except (ValueError, OSError) as exc:
            notify_error(f"saving failed: {exc}")
            return []
        self.status.setText(f"saved {len(written)} files into {out}")
        notify_info(f"saved {len(written)} files into {out}")
        return written
