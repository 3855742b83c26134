"""napari widgets: read layers, call the Qt-free core in workers, write layers.

Nothing outside this package (and the reader/writer/sample hooks) imports Qt.
"""

from .preprocessing import PreprocessingWidget
from .slice_picker import SlicePickerWidget

__all__ = ["PreprocessingWidget", "SlicePickerWidget", "DOCK_ORDER"]

#: (title, widget class) in the order `xaiclip gui` docks them.
DOCK_ORDER = [
    ("Slice picker", SlicePickerWidget),
    ("Preprocessing", PreprocessingWidget),
]
