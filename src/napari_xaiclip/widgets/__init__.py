"""napari widgets: read layers, call the Qt-free core in workers, write layers.

Nothing outside this package (and the reader/writer/sample hooks) imports Qt.
"""

from ._guard import keep_triton_out

keep_triton_out()

from qtpy.QtWidgets import QFrame, QScrollArea, QWidget  # noqa: E402

from .companions import CompanionsWidget
from .explainer import ExplainerWidget
from .metrics import MetricsWidget
from .preprocessing import PreprocessingWidget
from .roi import RoiWidget
from .segmentation import SegmentationWidget
from .slice_picker import SlicePickerWidget

__all__ = ["DOCK_ORDER", "TAB_TITLES", "CompanionsWidget", "ExplainerWidget", "MetricsWidget", "PreprocessingWidget",
           "RoiWidget", "SegmentationWidget", "SlicePickerWidget"]

#: (title, widget class, dock area, tab group) in the order `xaiclip gui` docks them.
#: Metrics sits under the step tabs in the right column: a full-width bottom dock
#: would take the canvas's height.
DOCK_ORDER = [
    ("Slice picker", SlicePickerWidget, "right", None),
    ("1 Preprocessing", PreprocessingWidget, "right", "steps"),
    ("2 ROI", RoiWidget, "right", "steps"),
    ("3 Segmentation", SegmentationWidget, "right", "steps"),
    ("4 Explainers", ExplainerWidget, "right", "steps"),
    ("5 Masks & components", CompanionsWidget, "right", "steps"),
    ("Metrics", MetricsWidget, "right", None),
]

#: Tab labels of the tabbed docks: the five full titles do not fit side by side in
#: the right column; the dock's title bar (and its name) keeps the full title.
TAB_TITLES = {
    "1 Preprocessing": "1 Preprocess",
    "2 ROI": "2 ROI",
    "3 Segmentation": "3 Segment",
    "4 Explainers": "4 Explain",
    "5 Masks & components": "5 Masks",
}


class _ScrolledDock(QScrollArea):
    """A step widget in a scroll area: docked one by one from the Plugins menu, napari stacks the
    docks without tabs, and the steps' full heights would push the window off the screen."""

    widget_class: type = QWidget

    def __init__(self, napari_viewer):
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setWidget(self.widget_class(napari_viewer))


class PreprocessingDock(_ScrolledDock):
    widget_class = PreprocessingWidget


class RoiDock(_ScrolledDock):
    widget_class = RoiWidget


class SegmentationDock(_ScrolledDock):
    widget_class = SegmentationWidget


class ExplainerDock(_ScrolledDock):
    widget_class = ExplainerWidget


class CompanionsDock(_ScrolledDock):
    widget_class = CompanionsWidget
