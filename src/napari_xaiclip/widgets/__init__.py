"""napari widgets: read layers, call the Qt-free core in workers, write layers.

Nothing outside this package (and the reader/writer/sample hooks) imports Qt.
"""

from ._guard import keep_triton_out

keep_triton_out()

from .companions import CompanionsWidget
from .explainer import ExplainerWidget
from .metrics import MetricsWidget
from .preprocessing import PreprocessingWidget
from .roi import RoiWidget
from .segmentation import SegmentationWidget
from .slice_picker import SlicePickerWidget

__all__ = ["DOCK_ORDER", "CompanionsWidget", "ExplainerWidget", "MetricsWidget", "PreprocessingWidget", "RoiWidget",
           "SegmentationWidget", "SlicePickerWidget"]

#: (title, widget class, dock area, tab group) in the order `xaiclip gui` docks them.
DOCK_ORDER = [
    ("Slice picker", SlicePickerWidget, "right", None),
    ("1 Preprocessing", PreprocessingWidget, "right", "steps"),
    ("2 ROI", RoiWidget, "right", "steps"),
    ("3 Segmentation", SegmentationWidget, "right", "steps"),
    ("4 Explainers", ExplainerWidget, "right", "steps"),
    ("5 Masks & components", CompanionsWidget, "right", "steps"),
    ("Metrics", MetricsWidget, "bottom", None),
]
