"""Asks which DICOM series to open when a folder holds several."""

from __future__ import annotations

from qtpy.QtWidgets import QApplication, QDialog, QDialogButtonBox, QLabel, QListWidget, QVBoxLayout

__all__ = ["SeriesDialog", "ask_series"]


class SeriesDialog(QDialog):
    """A list of the folder's series (modality, description, slice count, UID); OK opens the chosen one."""

    def __init__(self, error, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Choose a DICOM series")
        self.series = list(error.series)
        self.list = QListWidget()
        for info in self.series:
            self.list.addItem(f"{info.modality}  {info.description or '(no description)'}  ·  "
                              f"{info.n_files} slice{'s' if info.n_files != 1 else ''}  ·  {info.uid}")
        # the series with the most slices is usually the volume to explain
        self.list.setCurrentRow(max(range(len(self.series)), key=lambda i: self.series[i].n_files))
        self.list.itemDoubleClicked.connect(lambda *_: self.accept())
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel(f"{error.folder} holds {len(self.series)} series. Open:"))
        lay.addWidget(self.list)
        lay.addWidget(buttons)
        self.resize(720, 320)

    def chosen_uid(self) -> str | None:
        row = self.list.currentRow()
        return self.series[row].uid if 0 <= row < len(self.series) else None


def ask_series(error) -> str | None:
    """The UID the user picks for a :class:`~napari_xaiclip.io_itk.SeveralSeries` error, or None.

    None also without a running Qt application (headless callers get the error instead).
    """
    if QApplication.instance() is None:
        return None
    dialog = SeriesDialog(error, QApplication.activeWindow())
    accepted = QDialog.DialogCode.Accepted
    code = dialog.exec()  # an int or the enum, depending on the Qt binding
    if getattr(code, "value", code) != getattr(accepted, "value", accepted):
        return None
    return dialog.chosen_uid()
