"""Choosers for the segmenter and the localizer: LiteMedSAM (the default), the shipped
phantom demo models, or the user's files. Every item's tooltip is its model card.

A segmenter chooser bound to an image picker follows the image until the user
picks a model: the phantom demo model on the synthetic phantom (fast), the
default LiteMedSAM on anything else.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from ._cards import PHANTOM_NOTE, localizer_card, segmenter_card
from .notify import layer_is_phantom

SEGMENTER_KINDS = [
    ("Default: LiteMedSAM (real medical model, research use)", "default"),
    ("Phantom demo (tiny SAM, synthetic phantom only)", "phantom"),
    ("LiteMedSAM checkpoint (fine-tuned)", "litemedsam"),
    ("MedSAM checkpoint (medsam_vit_b.pth)", "medsam"),
    ("SAM checkpoint", "sam"),
    ("TorchScript model", "torchscript"),
]
#: Segmenter kinds that need no file.
BUILT_IN = ("default", "phantom")
LOCALIZER_KINDS = [
    ("Default (trained on the synthetic phantom only)", "default"),
    ("Trained localizer file", "file"),
    ("Zero-shot open_clip (MODEL:PRETRAINED)", "clip"),
]


def _fill(combo: QComboBox, kinds, card) -> None:
    """Add (label, key) items, each with its model card as tooltip; long labels do not widen the dock."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(18)
    for i, (label, key) in enumerate(kinds):
        combo.addItem(label, key)
        combo.setItemData(i, card(key), Qt.ItemDataRole.ToolTipRole)


def _sync_tooltip(combo: QComboBox) -> None:
    """The combo box's own tooltip is the chosen item's card."""
    combo.setToolTip(combo.itemData(combo.currentIndex(), Qt.ItemDataRole.ToolTipRole) or "")


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
        _fill(self.kind, SEGMENTER_KINDS, segmenter_card)
        self.user_chosen = False  # set when the user picks a model: the image no longer decides
        self._auto_phantom = False
        self.note = QLabel(PHANTOM_NOTE)
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #e0b050")
        self.path = _PathRow("checkpoint file", "PyTorch files (*.pth *.pt);;All files (*)")
        self.variant = QComboBox()
        self.variant.addItems(["vit_b", "vit_l", "vit_h"])
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.speed = QComboBox()
        self.speed.addItems(["auto", "eager", "bf16", "compile"])
        self.speed.setToolTip("How the segmenter's forward passes run: auto (the default: torch.compile on a "
                              "GPU, and on a CPU once `xaiclip warmup` compiled the model; bf16 on a CPU "
                              "before that; else eager); eager (fp32 as loaded, "
                              "turns the speed-ups off); bf16 (where the hardware has it, checked against "
                              "fp32 first); compile (torch.compile: minutes the first time on a CPU, cached "
                              "afterwards). Gradient methods always run eager. Recorded with every result.")
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Model", self.kind)
        form.addRow(self.note)
        form.addRow("Weights", self.path)
        form.addRow("SAM variant", self.variant)
        form.addRow("Device", self.device)
        form.addRow("Speed", self.speed)
        self.kind.currentIndexChanged.connect(self._update)
        self.kind.activated.connect(self._picked)
        self._update()

    def _update(self, *_):
        key = self.kind.currentData()
        self.path.setEnabled(key not in BUILT_IN)
        self.variant.setEnabled(key in ("sam", "medsam"))
        if key == "medsam" and self.variant.currentText() != "vit_b":
            self.variant.setCurrentText("vit_b")
        self.note.setVisible(self._auto_phantom and key == "phantom")
        _sync_tooltip(self.kind)

    def _picked(self, *_):
        self.user_chosen = True
        self._auto_phantom = False
        self._update()

    @property
    def key(self) -> str:
        return self.kind.currentData()

    def choose(self, key: str) -> None:
        """Pick a kind as the user would (the image no longer changes it)."""
        index = self.kind.findData(key)
        if index < 0:
            raise ValueError(f"unknown segmenter kind {key!r}")
        self.kind.setCurrentIndex(index)
        self._picked()

    def follow_image(self, layer) -> None:
        """Until the user picks a model: the phantom demo model on the phantom, the default elsewhere."""
        if self.user_chosen or layer is None:
            return
        phantom = layer_is_phantom(layer)
        self._auto_phantom = phantom
        self.kind.setCurrentIndex(self.kind.findData("phantom" if phantom else "default"))
        self._update()

    def bind_image(self, layer_choice) -> None:
        """Follow the image chosen in ``layer_choice`` (a LayerChoice)."""
        layer_choice.currentIndexChanged.connect(lambda *_: self.follow_image(layer_choice.layer()))
        self.follow_image(layer_choice.layer())

    def spec(self) -> str:
        """The spec for :func:`napari_xaiclip.models.load_segmenter`; ValueError when incomplete."""
        key = self.kind.currentData()
        if key in BUILT_IN:
            return key
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
        if key == "litemedsam":
            return f"litemedsam:{path}"
        return f"torchscript:{path}"

    def device_name(self) -> str:
        return self.device.currentText()

    def speed_mode(self) -> str:
        return self.speed.currentText()


class LocalizerChoice(QWidget):
    """Localizer kind and its file or open_clip spec; ``spec()`` gives the load_localizer spec."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.kind = QComboBox()
        _fill(self.kind, LOCALIZER_KINDS, localizer_card)
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
        _sync_tooltip(self.kind)

    @property
    def key(self) -> str:
        return self.kind.currentData()

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
