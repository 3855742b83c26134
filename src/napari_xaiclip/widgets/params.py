"""A form of an explainer's parameters, built from its signature and defaults."""

from __future__ import annotations

import ast

from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLineEdit, QSpinBox, QWidget

#: Choices offered for string parameters, by name.
CHOICES = {
    "fill": ["zero", "mean", "blur", "segment-mean"],
    "algorithm": ["felzenszwalb", "slic", "quickshift"],
    "target": ["(default)", "soft-dice", "logit-sum"],
    "base": ["occlusion", "adaptive-occlusion", "rise", "lime", "ig", "gradcam"],
    "n_samples": ["auto", "200", "300", "500"],
}
#: Parameters whose None default means "automatic"; shown as a spin box where 0 = auto.
AUTO_INTS = {"patch", "stride", "block", "internal_batch_size"}
HIDDEN = {"filler_bank", "bank_slices", "layer", "scales"}


class ParamForm(QWidget):
    """Editors for a method's keyword parameters; ``values()`` returns what differs from the defaults."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.form = QFormLayout(self)
        self.form.setContentsMargins(0, 0, 0, 0)
        self.editors: dict = {}
        self.defaults: dict = {}

    def set_method(self, method: str) -> None:
        from ..explain import method_defaults

        while self.form.rowCount():
            self.form.removeRow(0)
        self.editors.clear()
        self.defaults = {k: v for k, v in method_defaults(method).items() if k not in HIDDEN}
        if method == "lime":
            self.defaults.setdefault("fill", "segment-mean")
        for name, default in self.defaults.items():
            editor = self._editor(name, default)
            self.editors[name] = editor
            self.form.addRow(name.replace("_", " "), editor)

    def _editor(self, name: str, default):
        if isinstance(default, bool):
            w = QCheckBox()
            w.setChecked(default)
            return w
        if name in CHOICES:
            w = QComboBox()
            w.addItems(CHOICES[name])
            w.setCurrentText("(default)" if default is None else str(default))
            return w
        if isinstance(default, int) or (default is None and name in AUTO_INTS):
            w = QSpinBox()
            w.setRange(0, 100000)
            if default is None:
                w.setSpecialValueText("auto")  # shown for 0
            w.setValue(0 if default is None else default)
            return w
        if isinstance(default, float):
            w = QDoubleSpinBox()
            w.setDecimals(4)
            w.setRange(-1e6, 1e6)
            w.setSingleStep(0.05 if abs(default) < 5 else 1.0)
            w.setValue(default)
            return w
        w = QLineEdit("" if default is None else repr(default))
        w.setPlaceholderText("(default)")
        return w

    def values(self) -> dict:
        """Parameter values as Python objects (None for 'auto' / '(default)')."""
        out = {}
        for name, w in self.editors.items():
            default = self.defaults[name]
            if isinstance(w, QCheckBox):
                value = w.isChecked()
            elif isinstance(w, QComboBox):
                text = w.currentText()
                value = None if text == "(default)" else (int(text) if text.isdigit() else text)
            elif isinstance(w, QSpinBox):
                value = None if (default is None and w.value() == 0) else w.value()
            elif isinstance(w, QDoubleSpinBox):
                value = w.value()
            else:
                text = w.text().strip()
                try:
                    value = None if not text else ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    raise ValueError(f"parameter {name}: {text!r} is not a Python value") from None
            out[name] = value
        return out

    def set_value(self, name: str, value) -> None:
        w = self.editors[name]
        if isinstance(w, QCheckBox):
            w.setChecked(bool(value))
        elif isinstance(w, QComboBox):
            w.setCurrentText(str(value))
        elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
            w.setValue(value)
        else:
            w.setText(repr(value))
