"""Choosers for the segmenter and the localizer: the shipped demo models or the user's files."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QWidget,
)

SEGMENTER_KINDS = [
    ("Default (tiny SAM, phantom-trained demo)", "default"),
    ("MedSAM checkpoint (medsam_vit_b.pth)", "medsam"),
    ("SAM checkpoint", "sam"),
    ("TorchScript model", "torchscript"),
]
LOCALIZER_KINDS = [
    ("Default (trained CLIP localizer, phantom demo)", "default"),
    ("Trained localizer file", "file"),
    ("Zero-shot open_clip (MODEL:PRETRAINED)", "clip"),
]


class _PathRow(QWidget):
    def __init__(self, placeholder: str, filter_: str, parent=None):
        super().__init__(parent)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.browse = QPushButton("…")
        self.browse.setMaximumWidth(32)
        self.filter = filter_
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(self.browse)
        self.browse.clicked.connect(self._pick)

    def _pick(self):
        path, _ = QFileDialog.getOpenFileName(self, "Choose a file", "", self.filter)
        if path:
            self.edit.setText(path)

    def text(self) -> str:
        return self.edit.text().strip()


class SegmenterChoice(QWidget):
    """Segmenter kind, checkpoint path, SAM variant and device; ``spec()`` gives the load_segmenter spec."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.kind = QComboBox()
        for label, key in SEGMENTER_KINDS:
            self.kind.addItem(label, key)
        self.path = _PathRow("checkpoint file", "PyTorch files (*.pth *.pt);;All files (*)")
        self.variant = QComboBox()
        self.variant.addItems(["vit_b", "vit_l", "vit_h"])
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Model", self.kind)
        form.addRow("Weights", self.path)
        form.addRow("SAM variant", self.variant)
        form.addRow("Device", self.device)
        self.kind.currentIndexChanged.connect(self._update)
        self._update()

    def _update(self, *_):
        key = self.kind.currentData()
        self.path.setEnabled(key != "default")
        self.variant.setEnabled(key in ("sam", "medsam"))
        if key == "medsam" and self.variant.currentText() != "vit_b":
            self.variant.setCurrentText("vit_b")

    def spec(self) -> str:
        """The spec for :func:`napari_xaiclip.models.load_segmenter`; ValueError when incomplete."""
        key = self.kind.currentData()
        if key == "default":
            return "default"
        path = self.path.text()
        if not path:
            raise ValueError(f"choose a weights file for the {self.kind.currentText()}")
        if not Path(path).is_file():
            raise ValueError(f"{path}: no such file")
        if key == "medsam":
            return f"medsam:{self.variant.currentText()}:{path}" if self.variant.currentText() != "vit_b" \
                else f"medsam:{path}"
        if key == "sam":
            return f"sam:{self.variant.currentText()}:{path}"
        return f"torchscript:{path}"

    def device_name(self) -> str:
        return self.device.currentText()


class LocalizerChoice(QWidget):
    """Localizer kind and its file or open_clip spec; ``spec()`` gives the load_localizer spec."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.kind = QComboBox()
        for label, key in LOCALIZER_KINDS:
            self.kind.addItem(label, key)
        self.path = _PathRow("localizer file from `xaiclip train-localizer`", "PyTorch files (*.pt *.pth)")
        self.clip = QLineEdit()
        self.clip.setPlaceholderText("e.g. ViT-B-16:openai or hf-hub:microsoft/BiomedCLIP-…")
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Localizer", self.kind)
        form.addRow("File", self.path)
        form.addRow("open_clip", self.clip)
        self.kind.currentIndexChanged.connect(self._update)
        self._update()

    def _update(self, *_):
        key = self.kind.currentData()
        self.path.setEnabled(key == "file")
        self.clip.setEnabled(key == "clip")

    def spec(self) -> str:
        key = self.kind.currentData()
        if key == "default":
            return "default"
        if key == "file":
            path = self.path.text()
            if not path or not Path(path).is_file():
                raise ValueError(f"choose an existing localizer file (got {path!r})")
            return path
        text = self.clip.text().strip()
        if not text:
            raise ValueError("enter an open_clip spec such as ViT-B-16:openai")
        return f"clip:{text}"
