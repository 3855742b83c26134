"""A form of an explainer's parameters, built from its registry entry (types, ranges, choices)."""

from __future__ import annotations

import math

from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QSpinBox, QWidget

from ..explain.registry import Param, get_method

#: shown in a choice box for a parameter chosen automatically
AUTO = "auto"


class ParamForm(QWidget):
    """Editors for a method's parameters; ``values()`` returns every shown parameter (None = automatic)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.form = QFormLayout(self)
        self.form.setContentsMargins(0, 0, 0, 0)
        self.editors: dict = {}
        self.specs: dict[str, Param] = {}

    def set_method(self, method: str) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        self.editors.clear()
        self.specs = {p.name: p for p in get_method(method).params if p.gui}
        for name, param in self.specs.items():
            editor = _editor(param)
            editor.setToolTip(param.help)
            self.editors[name] = editor
            self.form.addRow(name.replace("_", " "), editor)

    def values(self) -> dict:
        """Parameter values as Python objects (None where 'auto' is chosen)."""
        return {name: _value(self.specs[name], w) for name, w in self.editors.items()}

    def set_value(self, name: str, value) -> None:
        w = self.editors[name]
        if isinstance(w, QCheckBox):
            w.setChecked(bool(value))
        elif isinstance(w, QComboBox):
            w.setCurrentText(AUTO if value is None else str(value))
        else:
            w.setValue(w.minimum() if value is None else value)   # the minimum reads "auto"


def _editor(param: Param):
    auto = param.auto and param.default in (None, "auto")
    if param.kind is bool:
        w = QCheckBox()
        w.setChecked(bool(param.default))
        return w
    if param.kind is str:
        w = QComboBox()
        w.addItems(([AUTO] if auto else []) + [str(c) for c in param.options()])
        w.setCurrentText(AUTO if auto else str(param.default))
        return w
    w = QSpinBox() if param.kind is int else QDoubleSpinBox()
    low = param.low if param.low is not None else -1e6
    high = param.high if param.high is not None else 1e6
    if param.kind is int:
        w.setRange(int(max(low, -2**31 + 1)) - (1 if auto else 0), int(min(high, 2**31 - 1)))
    else:
        w.setDecimals(4)
        w.setRange(low - (1 if auto else 0), high)
        w.setSingleStep(0.05 if high <= 5 else 1.0)
    if auto:  # the lowest value (one below the valid range) reads "auto"
        w.setSpecialValueText(AUTO)
        w.setValue(w.minimum())
    else:
        w.setValue(param.default)
    return w


def _value(param: Param, w):
    auto = param.auto and param.default in (None, "auto")
    if isinstance(w, QCheckBox):
        return w.isChecked()
    if isinstance(w, QComboBox):
        text = w.currentText()
        return None if text == AUTO else text
    if auto and math.isclose(w.value(), w.minimum()):
        return None
    return w.value()
