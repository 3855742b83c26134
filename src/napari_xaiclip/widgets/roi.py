"""ROI widget: an editable "ROI" labels layer from a text prompt (CLIP localizer),
the segmenter with a box, a threshold, an existing labels layer, or by hand.

The ROI layer has the volume's shape and geometry; each run fills the current
slice (or a range). Brush and eraser edits are kept: every explainer reads the
ROI as it is when it starts.

The shipped localizer knows only the synthetic phantom: on any other volume the
default source is the segmenter's mask of a drawn box, grown by a margin (the
text prompt stays available). A prompt the localizer does not know is an error
naming its classes, unless text-similarity matching is ticked; a prompt mapped
to a class (synonym, words, similarity) says so in the status and the metadata.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..jobs import SEGMENTER_ROI_MARGIN
from ..roi import clean_roi, roi_area, roi_bbox, roi_from_labels, roi_from_map, roi_from_threshold
from ..slicing import slice_layer_data, take_slice
from ._cards import localizer_classes
from .controls import double_spin, LayerChoice, slice_choice_layout
from .heatmap_style import heatmap_layer_kwargs
from .layers import (
    box_from_shapes,
    set_labels_slice,
    LOCALIZER_MAP_NAME,
    replace_layer,
    roi_layer,
    ROI_NAME,
    roi_slice,
    slice_layer_kwargs,
    start_box_drawing,
    viewer_slice,
    volume_of,
)
from .notify import layer_is_phantom, notify_error, phantom_warnings, WorkerWarning
from .state import state_of
from .run_panel import RunPanel
from .model_choice import LocalizerChoice, SegmenterChoice

if TYPE_CHECKING:
    import napari

SOURCES = ("prompt", "segmenter", "threshold", "labels", "draw")
#: What the status says of a prompt mapped onto a class.
MAPPED = ("synonym", "words", "similarity")
SIMILAR_BOX = "match other prompts by text similarity"


class RoiWidget(QWidget):
    """Make and inspect the ROI that ROI-guided explainers perturb."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.image = LayerChoice(napari_viewer, ("image",))
        self.current = QRadioButton("current slice")
        self.current.setChecked(True)
        self.range = QRadioButton("range")
        self.first = QSpinBox()
        self.last = QSpinBox()
        for s in (self.first, self.last):
            s.setRange(0, 9999)
        slices = slice_choice_layout(self.current, self.range, self.first, self.last)
        self.tabs = QTabWidget()
        self.tabs.addTab(self._prompt_tab(), "Prompt")
        self.tabs.addTab(self._segmenter_tab(), "Box")
        self.tabs.addTab(self._threshold_tab(), "Threshold")
        self.tabs.addTab(self._labels_tab(), "Labels")
        self.tabs.addTab(self._draw_tab(), "Draw")
        self.margin = QSpinBox()
        self.margin.setRange(-50, 100)
        self.margin.setToolTip(f"pixels the ROI is grown by ({SEGMENTER_ROI_MARGIN} by default for the "
                               "segmenter's mask, 0 for the other sources)")
        self.largest = QCheckBox("keep largest component")
        self.largest.setChecked(True)
        self.holes = QCheckBox("fill holes")
        self.holes.setChecked(True)
        post = QFormLayout()
        post.addRow("Margin (px)", self.margin)
        checks = QHBoxLayout()
        checks.addWidget(self.largest)
        checks.addWidget(self.holes)
        post.addRow(checks)
        self.run = RunPanel("Compute ROI")
        self.info = QLabel("no ROI yet")
        self.info.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Image", self.image)
        form.addRow("Slices", slices)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.tabs)
        lay.addLayout(post)
        lay.addWidget(self.run)
        lay.addWidget(self.info)
        lay.addStretch(1)
        self.run.run_button.clicked.connect(self.compute)
        napari_viewer.dims.events.point.connect(self.update_info)
        napari_viewer.layers.events.inserted.connect(self._watch_roi)
        self._source_chosen = self._margin_chosen = self._setting_margin = False
        self.tabs.tabBarClicked.connect(self._source_picked)
        self.tabs.currentChanged.connect(self._default_margin)
        self.margin.valueChanged.connect(self._margin_picked)
        self.image.currentIndexChanged.connect(self.follow_image)
        self.segmenter.bind_image(self.image)
        self.follow_image()
        self._watch_roi()

    # --- defaults that follow the image ------------------------------------
    def follow_image(self, *_):
        """Until the user picks a source: the prompt on the phantom, the segmenter's box mask elsewhere."""
        layer = self.image.layer()
        if self._source_chosen or layer is None:
            return
        self.tabs.setCurrentIndex(SOURCES.index("prompt" if layer_is_phantom(layer) else "segmenter"))
        self._default_margin()

    def _source_picked(self, *_):
        self._source_chosen = True

    def _margin_picked(self, *_):
        if not self._setting_margin:
            self._margin_chosen = True

    def _default_margin(self, *_):
        if self._margin_chosen:
            return
        self._setting_margin = True
        self.margin.setValue(SEGMENTER_ROI_MARGIN if self.source == "segmenter" else 0)
        self._setting_margin = False

    # --- tabs ----------------------------------------------------------
    def _prompt_tab(self):
        w = QWidget()
        self.localizer = LocalizerChoice()
        self.prompt = QLineEdit("liver")
        self.classes = QComboBox()
        self.load_classes = QPushButton("List classes")
        self.load_classes.clicked.connect(self._list_classes)
        self.classes.activated.connect(self._class_chosen)
        self.class_hint = QLabel()
        self.class_hint.setWordWrap(True)
        self.allow_similar = QCheckBox(SIMILAR_BOX)
        self.allow_similar.setToolTip("off: a prompt that is not a class, a known synonym or the words of a class "
                                      "is an error; on: it maps to the class with the most similar text "
                                      "embedding, and the status says which")
        self.prompt_status = QLabel("")
        self.prompt_status.setWordWrap(True)
        self.prompt_status.setVisible(False)
        self.prompt_sigma = double_spin(0, 20, 2.0, 0.5, 1)
        self.prompt_threshold = double_spin(0, 1, 0.5, 0.05, 2)
        row = QHBoxLayout()
        row.addWidget(self.classes, 1)
        row.addWidget(self.load_classes)
        form = QFormLayout(w)
        form.addRow(self.localizer)
        form.addRow("Text prompt", self.prompt)
        form.addRow(self.class_hint)
        form.addRow("Classes", row)
        form.addRow(self.allow_similar)
        form.addRow(self.prompt_status)
        form.addRow("Smoothing sigma (px)", self.prompt_sigma)
        form.addRow("Threshold", self.prompt_threshold)
        self.localizer.kind.currentIndexChanged.connect(self._show_classes)
        self._show_classes()
        return w

    def _segmenter_tab(self):
        w = QWidget()
        self.segmenter = SegmenterChoice()
        self.draw_box = QPushButton("Draw a box (rectangle in 'box prompt')")
        self.draw_box.clicked.connect(self._start_box)
        self.box_from_roi = QCheckBox("no box drawn: use the ROI's bounding box")
        self.box_from_roi.setToolTip("without a rectangle on this slice, the current ROI's bounding box is the box")
        self.box_from_roi.setChecked(True)
        hint = QLabel("The ROI is the segmenter's mask of the box, grown by the margin below: "
                      "the source for scans the localizer was not trained on.")
        hint.setWordWrap(True)
        form = QFormLayout(w)
        form.addRow(hint)
        form.addRow(self.draw_box)
        form.addRow(self.box_from_roi)
        form.addRow(self.segmenter)
        return w

    def _threshold_tab(self):
        w = QWidget()
        self.otsu = QCheckBox("Otsu")
        self.otsu.setChecked(True)
        self.level = double_spin(-1e5, 1e5, 100.0, 10, 1)
        self.below = QCheckBox("keep values below instead of above")
        self.in_box = QCheckBox("only inside the drawn box")
        form = QFormLayout(w)
        row = QHBoxLayout()
        row.addWidget(self.otsu)
        row.addWidget(self.level, 1)
        form.addRow("Threshold", row)
        form.addRow(self.below)
        form.addRow(self.in_box)
        return w

    def _labels_tab(self):
        w = QWidget()
        self.labels = LayerChoice(self.viewer, ("labels",))
        self.label_value = QComboBox()
        self.label_value.setEditable(True)
        self.labels.currentIndexChanged.connect(self._fill_label_values)
        form = QFormLayout(w)
        form.addRow("Labels layer", self.labels)
        form.addRow("Label", self.label_value)
        self._fill_label_values()
        return w

    def _draw_tab(self):
        w = QWidget()
        self.start_drawing = QPushButton("Paint the ROI by hand")
        self.start_drawing.clicked.connect(self.paint_by_hand)
        self.clear_slice = QPushButton("Clear the ROI on this slice")
        self.clear_slice.clicked.connect(self._clear_slice)
        lay = QVBoxLayout(w)
        note = QLabel("Brush (paint) and eraser work on the ROI layer at any time; "
                      "explainers read the ROI when they start.")
        note.setWordWrap(True)
        lay.addWidget(note)
        lay.addWidget(self.start_drawing)
        lay.addWidget(self.clear_slice)
        return w

    # --- helpers ---------------------------------------------------------
    @property
    def source(self) -> str:
        return SOURCES[self.tabs.currentIndex()]

    def _slices(self, layer) -> tuple[int, list[int]]:
        axis, index = viewer_slice(self.viewer, layer)
        if self.current.isChecked():
            return axis, [index]
        lo, hi = sorted((self.first.value(), self.last.value()))
        n = layer.data.shape[-3:][axis]
        if hi >= n:
            raise ValueError(f"slice range {lo}..{hi} is outside 0..{n - 1}")
        return axis, list(range(lo, hi + 1))

    def _fill_label_values(self, *_):
        self.label_value.clear()
        layer = self.labels.layer()
        if layer is None:
            return
        names = (layer.metadata or {}).get("label_names", {})
        present = np.unique(np.asarray(layer.data)[:: max(1, layer.data.shape[0] // 16)])
        for v in present[present != 0]:
            self.label_value.addItem(f"{int(v)} {names.get(int(v), '')}".strip(), int(v))

    def _show_classes(self, *_):
        """The localizer's classes under the prompt, in its tooltip and in the class list (no model loaded)."""
        key = self.localizer.key
        classes = localizer_classes(key)
        if classes:
            text = "classes: " + ", ".join(classes)
        elif key == "clip":
            text = "open vocabulary: any text prompt"
        else:
            text = "classes: press 'List classes'"
        self.class_hint.setText(text)
        self.prompt.setToolTip(f"an organ the localizer knows; {text}")
        self.prompt.setPlaceholderText(", ".join(classes[:3]) if classes else "e.g. liver")
        self._fill_classes(classes)

    def _fill_classes(self, classes):
        self.classes.clear()
        self.classes.addItems(classes or ["(classes of the localizer)"])

    def _list_classes(self):
        from ..models import load_localizer

        if localizer_classes(self.localizer.key):  # known without loading the model
            self._show_classes()
            return
        try:
            loc = load_localizer(self.localizer.spec())
        except ValueError as exc:
            notify_error(str(exc))
            return
        classes = [c for c in loc.classes if c.lower() != "background"]
        self._fill_classes(classes or ["(open vocabulary: type a prompt)"])
        if classes:
            self.class_hint.setText("classes: " + ", ".join(classes))

    def _class_chosen(self, index: int):
        text = self.classes.itemText(index)
        if text and not text.startswith("("):
            self.prompt.setText(text)

    def _start_box(self):
        start_box_drawing(self.viewer, self.image.layer())

    def paint_by_hand(self):
        layer = self.image.layer()
        if layer is None:
            notify_error("open a volume first")
            return
        roi = roi_layer(self.viewer, layer)
        self.viewer.layers.selection.active = roi
        roi.selected_label = 1
        roi.brush_size = max(3, roi.brush_size)
        roi.mode = "paint"

    def _clear_slice(self):
        layer = self.image.layer()
        if layer is None:
            return
        roi = roi_layer(self.viewer, layer, create=False)
        if roi is None:
            return
        axis, index = viewer_slice(self.viewer, layer)
        set_labels_slice(roi, axis, index, np.zeros(np.delete(roi.data.shape, axis), roi.data.dtype))
        self.update_info()

    # --- compute -----------------------------------------------------------
    def compute(self) -> None:
        """Fill the ROI on the chosen slices from the active tab's source."""
        layer = self.image.layer()
        try:
            volume = volume_of(layer)
            axis, indices = self._slices(layer)
            maker = self._maker(layer, volume, axis)
        except ValueError as exc:
            notify_error(str(exc))
            return
        if maker is None:  # drawing by hand: nothing to compute
            return
        prepare, make = maker
        post = dict(largest_component=self.largest.isChecked(), fill_holes=self.holes.isChecked(),
                    margin=self.margin.value())
        params = {"source": self.source, **self._source_params(), "margin": self.margin.value()}
        self.prompt_status.setText("")
        self.prompt_status.setVisible(False)

        def work():
            info = yield from prepare(len(indices))
            out = {}
            for k, index in enumerate(indices):
                roi, score = make(index)
                out[index] = (clean_roi(roi, **post), score)
                yield k + 1, len(indices), None
            return out, info

        def done(result):
            out, info = result
            roi = roi_layer(self.viewer, layer)
            with roi.block_history():   # one Ctrl+Z undoes the whole computed ROI
                for index, (mask, _) in out.items():
                    set_labels_slice(roi, axis, index, mask.astype(roi.data.dtype))
            for index, (_, score) in out.items():
                if score is not None:
                    replace_layer(self.viewer, LOCALIZER_MAP_NAME, slice_layer_data(score.astype(np.float32), axis),
                                  "image", visible=False, **{**heatmap_layer_kwargs(score, signed=False),
                                                             "contrast_limits": (0.0, 1.0)},
                                  **slice_layer_kwargs(layer, axis, index))
            roi.metadata["xaiclip_roi_source"] = {**params, **info}
            roi.refresh()
            self.update_info()
            self._show_resolution(info)
            if not any(m.any() for m, _ in out.values()):
                notify_error("the ROI came out empty: lower the threshold, change the prompt or draw it")

        self.run.start(work, on_done=done, description=f"ROI from {self.source}")

    def _show_resolution(self, info: dict) -> None:
        """Say which class a mapped prompt became, in the prompt tab and the run's status line."""
        if info.get("prompt_match") not in MAPPED:
            return
        sim, match = info.get("prompt_similarity"), info["prompt_match"]
        how = f"text similarity {sim:.2f}" if match == "similarity" and sim is not None else match
        text = f"prompt {info['prompt']!r} → class {info['prompt_class']!r} ({how})"
        self.prompt_status.setText(text)
        self.prompt_status.setVisible(True)
        self.run.status.setText(f"{self.run.status.text()} · {text}")

    def _source_params(self) -> dict:
        if self.source == "prompt":
            return {"prompt": self.prompt.text(), "sigma": self.prompt_sigma.value(),
                    "threshold": self.prompt_threshold.value()}
        if self.source == "threshold":
            return {"otsu": self.otsu.isChecked(), "value": self.level.value(), "below": self.below.isChecked()}
        if self.source == "labels":
            return {"labels": self.labels.currentText(), "value": self.label_value.currentData()}
        return {}

    def _maker(self, layer, volume, axis):
        """(prepare, make) for the active source, checked up front; None when drawing by hand.

        ``prepare(n)`` runs first in the worker: it loads the model, yields warnings
        and returns what the ROI layer's metadata records; ``make(i)`` gives
        (ROI, score map or None) for slice ``i``.
        """
        src = self.source
        if src == "draw":
            self.paint_by_hand()
            return None
        if src == "prompt":
            return self._prompt_maker(layer, volume, axis)
        if src == "segmenter":
            return self._segmenter_maker(layer, volume, axis)
        if src == "threshold":
            value = None if self.otsu.isChecked() else self.level.value()
            above, in_box = not self.below.isChecked(), self.in_box.isChecked()

            def make(i):
                box = self._box(layer, axis, i, allow_roi=False) if in_box else None
                return roi_from_threshold(take_slice(volume, axis, i), value, box, above), None
            return _nothing_to_prepare, make
        data, value = self._labels_source(layer)
        return _nothing_to_prepare, lambda i: (roi_from_labels(take_slice(data, axis, i), value), None)

    def _prompt_maker(self, layer, volume, axis):
        from ..models import load_localizer

        prompt, spec = self.prompt.text().strip(), self.localizer.spec()
        if not prompt:
            raise ValueError(f"type a text prompt; {self.class_hint.text()}")
        sigma, thr = self.prompt_sigma.value(), self.prompt_threshold.value()
        similar, phantom = self.allow_similar.isChecked(), layer_is_phantom(layer)
        state = {}

        def prepare(n):
            loc = load_localizer(spec)
            res = resolve(loc, prompt, similar)
            state.update(loc=loc, cls=res.resolved)
            warnings = phantom_warnings(phantom, localizer=loc)
            if res.match == "similarity":
                warnings.append(WorkerWarning(f"{res.describe()}; the match is by text similarity only"))
            for w in warnings:
                yield 0, n, w
            return {**res.to_record(), "localizer": loc.name, "warnings": [str(w) for w in warnings]}

        def make(i):
            score = state["loc"].locate(take_slice(volume, axis, i), state["cls"])
            return roi_from_map(score, sigma=sigma, threshold=thr), score
        return prepare, make

    def _segmenter_maker(self, layer, volume, axis):
        from ..models import load_segmenter

        spec, device, phantom = self.segmenter.spec(), self.segmenter.device_name(), layer_is_phantom(layer)
        state = {}

        def prepare(n):
            state["seg"] = seg = load_segmenter(spec, device)
            warnings = phantom_warnings(phantom, seg)
            for w in warnings:
                yield 0, n, w
            return {"segmenter": seg.name, "warnings": [str(w) for w in warnings]}

        def make(i):
            box = self._box(layer, axis, i)
            return state["seg"].segment(take_slice(volume, axis, i), box=box) > 0.5, None
        return prepare, make

    def _labels_source(self, image_layer):
        from ..labels import check_same_grid, organ_value

        labels = self.labels.layer()
        if labels is None:
            raise ValueError("no labels layer: open a label volume or the phantom sample")
        (lab_affine, img_affine), shown = _comparable_affines(labels, image_layer)
        check_same_grid(lab_affine, labels.data.shape, img_affine, image_layer.data.shape,
                        f"labels layer {labels.name!r}", shown=shown)
        value = self.label_value.currentData()
        if value is None:
            text = self.label_value.currentText().split(" ")[0]
            if not text.lstrip("+-").isdigit():
                raise ValueError("choose a label value")
            value = organ_value(text, {})  # refuses 0, the background
        return np.asarray(labels.data), value

    def _box(self, layer, axis, index, allow_roi=True):
        box = box_from_shapes(self.viewer, layer, axis, index)
        if box is None and allow_roi and self.box_from_roi.isChecked():
            roi = roi_slice(self.viewer, layer, axis, index)
            if roi is not None and roi.any():
                from ..pipeline import box_from_mask

                box = box_from_mask(roi, 5)
        if box is None:
            raise ValueError(f"no box on slice {index}: draw a rectangle in the 'box prompt' layer")
        return box

    # --- info ----------------------------------------------------------------
    def _watch_roi(self, *_):
        layer = self.viewer.layers[ROI_NAME] if ROI_NAME in self.viewer.layers else None
        watched = state_of(self.viewer).watched
        if layer is not None and layer not in watched:
            layer.events.data.connect(self.update_info)
            if hasattr(layer.events, "paint"):
                layer.events.paint.connect(self.update_info)
            watched.add(layer)
        self.update_info()

    def update_info(self, *_):
        layer = self.image.layer()
        if layer is None or ROI_NAME not in self.viewer.layers:
            self.info.setText("no ROI yet")
            return
        axis, index = viewer_slice(self.viewer, layer)
        roi = roi_slice(self.viewer, layer, axis, index)
        if roi is None or not roi.any():
            self.info.setText(f"slice {index}: ROI empty")
            return
        spacing = [s for a, s in enumerate(np.asarray(layer.scale)[-3:]) if a != axis]
        px, mm2 = roi_area(roi, spacing)
        x0, y0, x1, y1 = roi_bbox(roi)
        self.info.setText(f"slice {index}: {px} px = {mm2:.0f} mm² · bounding box x {x0}–{x1}, y {y0}–{y1}")


def _comparable_affines(labels_layer, image_layer):
    """((labels, image) voxel-to-world affines, the same pair to describe) of two layers.

    Patient (RAS) affines when this plugin read both; otherwise napari's own transforms,
    which are what the user sees overlaid (a labels layer made in napari has no RAS geometry).
    """
    from ..layer_geometry import transform_matrix

    pair = (labels_layer, image_layer)
    geometries = [(ly.metadata or {}).get("xaiclip_geometry") or {} for ly in pair]
    if all(g.get("affine") is not None for g in geometries):
        files = [g.get("source_affine") for g in geometries]
        shown = tuple(files) if all(f is not None for f in files) else (None, None)
        return tuple(np.asarray(g["affine"], float) for g in geometries), shown
    mats = tuple(transform_matrix(ly.scale, ly.translate, ly.rotate, ly.shear, ly.affine.affine_matrix)
                 for ly in pair)
    return mats, (None, None)


def _nothing_to_prepare(n):
    """The ``prepare`` of sources without a model: no warnings, nothing to record."""
    return {}
    yield  # a generator function


def resolve(localizer, prompt: str, allow_similar: bool):
    """The localizer's class for ``prompt``; an unknown prompt is a ValueError naming the classes."""
    try:
        return localizer.resolve_prompt(prompt, allow_similar=allow_similar)
    except ValueError:
        classes = [c for c in getattr(localizer, "classes", ()) if c.lower() != "background"]
        if not classes:
            raise
        raise ValueError(f"the localizer knows no class {prompt!r}; its classes: {', '.join(classes)}. "
                         f"Type one of them, or tick '{SIMILAR_BOX}'") from None
