"""Explainer widget: run a method in traditional and/or ROI-guided mode in a
background worker, watch the heatmap fill in, cancel at any time.

Heatmaps land as image layers ``"<image> · <method> (<mode>)"`` holding only
the explained slice(s), translated onto the volume, with parameters, cost and
metrics in ``metadata["xaiclip_records"]`` (the metrics dock lists them).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..slicing import put_slice, take_slice
from .controls import LayerChoice, slice_choice_layout
from .heatmap_style import heatmap_layer_kwargs, restyle_heatmap
from .layers import (
    find_box,
    LOCALIZER_MAP_NAME,
    replace_layer,
    roi_slice,
    slice_layer_kwargs,
    viewer_slice,
    volume_of,
)
from .notify import layer_is_phantom, notify_error, phantom_warnings, WorkerWarning
from .run_panel import RunPanel
from .model_choice import SegmenterChoice
from .state import state_of
from .params import ParamForm

if TYPE_CHECKING:
    import napari

MODES = {"ROI-guided and traditional": ("traditional", "roi"), "ROI-guided": ("roi",),
         "traditional (whole image)": ("traditional",)}
TARGETS = {"Dice vs baseline mask": "dice", "soft Dice": "soft-dice", "mean probability in ROI": "roi-prob",
           "Dice vs ground truth": "gt-dice"}


def heatmap_layer_name(image: str, method: str, mode: str) -> str:
    return f"{image} · {method} ({mode})"


class ExplainerWidget(QWidget):
    """Choose a method, its parameters, the mode and the model; explain the current slice or a range."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.image = LayerChoice(napari_viewer, ("image",))
        self.method = QComboBox()
        from ..explain.registry import methods

        self.method.addItems([name for name, spec in methods().items() if spec.gui])
        self.params = ParamForm()
        self.mode = QComboBox()
        self.mode.addItems(list(MODES))
        self.target = QComboBox()
        self.target.addItems(list(TARGETS))
        self.model = SegmenterChoice()
        self.model.bind_image(self.image)
        self.batch = QSpinBox()
        self.batch.setRange(0, 4096)
        self.batch.setSpecialValueText("auto")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.current = QRadioButton("current slice")
        self.current.setChecked(True)
        self.range = QRadioButton("range")
        self.first, self.last = QSpinBox(), QSpinBox()
        for s in (self.first, self.last):
            s.setRange(0, 9999)
        self.gt = LayerChoice(napari_viewer, ("labels",), allow_none=True)
        self.gt.setMinimumContentsLength(8)  # shares its row with the label value: keep the dock narrow
        self.gt_value = QSpinBox()
        self.gt_value.setRange(0, 65535)
        self.gt_value.setValue(1)
        self.curves = QCheckBox("deletion / insertion AUC (102 more forward passes)")
        self.curves.setChecked(True)
        self.run = RunPanel("Explain")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        slices = slice_choice_layout(self.current, self.range, self.first, self.last)
        gt_row = QHBoxLayout()
        gt_row.addWidget(self.gt, 1)
        gt_row.addWidget(QLabel("label"))
        gt_row.addWidget(self.gt_value)
        box = QGroupBox("Parameters")
        QVBoxLayout(box).addWidget(self.params)
        form = QFormLayout()
        form.addRow("Image", self.image)
        form.addRow("Method", self.method)
        form.addRow("Mode", self.mode)
        form.addRow("Target", self.target)
        form.addRow("Slices", slices)
        form.addRow("Ground truth", gt_row)
        form.addRow("Batch size", self.batch)
        form.addRow("Seed", self.seed)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(box)
        lay.addWidget(self.model)
        lay.addWidget(self.curves)
        lay.addWidget(self.run)
        lay.addWidget(self.summary)
        lay.addStretch(1)
        self.method.currentTextChanged.connect(self.params.set_method)
        self.params.set_method(self.method.currentText())
        self.run.run_button.clicked.connect(self.explain)
        self.layers_written: list[str] = []

    # --- inputs --------------------------------------------------------------
    def _indices(self, layer) -> tuple[int, list[int]]:
        axis, index = viewer_slice(self.viewer, layer)
        if self.current.isChecked():
            return axis, [index]
        lo, hi = sorted((self.first.value(), self.last.value()))
        if hi >= layer.data.shape[-3:][axis]:
            raise ValueError(f"slice range {lo}..{hi} is outside the volume along axis {axis}")
        return axis, list(range(lo, hi + 1))

    def collect_inputs(self) -> dict:
        """Everything the worker needs, read from the layers now (the ROI as it is at this moment)."""
        layer = self.image.layer()
        volume = volume_of(layer)
        axis, indices = self._indices(layer)
        modes = MODES[self.mode.currentText()]
        target = TARGETS[self.target.currentText()]
        gt_layer = self.gt.layer()
        if target == "gt-dice" and gt_layer is None:
            raise ValueError("target 'Dice vs ground truth' needs a ground-truth labels layer")
        if gt_layer is not None and tuple(gt_layer.data.shape[-3:]) != volume.shape:
            raise ValueError(f"ground truth {gt_layer.name!r} does not match the image's shape {volume.shape}")
        jobs = []
        for index in indices:
            box, _ = find_box(self.viewer, layer, axis, index)
            roi = roi_slice(self.viewer, layer, axis, index)
            if "roi" in modes and (roi is None or not roi.any()):
                raise ValueError(f"ROI-guided mode needs an ROI on slice {index}: use the ROI widget or paint one")
            gt = None
            if gt_layer is not None:
                gt = np.asarray(take_slice(np.asarray(gt_layer.data), axis, index)) == self.gt_value.value()
            jobs.append({"index": index, "plane": np.array(take_slice(volume, axis, index)), "box": box,
                         "roi": roi if "roi" in modes else None, "gt": gt, "score": self._score_map(axis, index)})
        method = self.method.currentText()
        params = {k: v for k, v in self.params.values().items() if v is not None}
        return {"volume": volume, "layer": layer, "axis": axis, "indices": indices, "modes": modes, "target": target,
                "method": method, "params": params, "jobs": jobs, "spec": self.model.spec(),
                "is_phantom": layer_is_phantom(layer),
                "device": self.model.device_name(), "speed": self.model.speed_mode(), "batch": self.batch.value() or "auto",
                "seed": self.seed.value(), "curves": self.curves.isChecked()}

    def _score_map(self, axis, index):
        if LOCALIZER_MAP_NAME not in self.viewer.layers:
            return None
        meta = self.viewer.layers[LOCALIZER_MAP_NAME].metadata.get("xaiclip_slice", {})
        if meta.get("axis") != axis or meta.get("index") != index:
            return None
        return np.asarray(take_slice(self.viewer.layers[LOCALIZER_MAP_NAME].data, axis, 0))

    # --- run -----------------------------------------------------------------
    def explain(self) -> None:
        if self.run.running:
            from .notify import notify_info

            notify_info("A run is already in progress; wait for it or press Cancel.")
            return
        try:
            job = self.collect_inputs()
        except ValueError as exc:
            notify_error(str(exc))
            return
        names = {mode: heatmap_layer_name(job["layer"].name, job["method"], mode) for mode in job["modes"]}
        busy = state_of(self.viewer).busy_layers
        if busy & set(names.values()):
            notify_error("another run is writing these heatmap layers; wait for it or cancel it")
            return
        layers = self._prepare_layers(job, names)
        busy.update(names.values())
        self.layers_written = list(names.values())
        worker_fn = _make_worker(job)

        def on_progress(done, total, payload):
            k, mode, heat = payload
            if heat is not None:
                self._show(layers[mode], job["axis"], k, heat)

        def finished_cleanup():
            busy.difference_update(names.values())

        def done(results):
            finished_cleanup()
            self._finish(job, layers, results)

        def aborted():
            finished_cleanup()
            for layer in layers.values():
                layer.metadata["xaiclip_partial"] = True
                if not layer.name.endswith("[partial]"):
                    layer.name = f"{layer.name} [partial]"

        started = self.run.start(worker_fn, on_progress=on_progress, on_done=done, on_aborted=aborted,
                                 description=f"{job['method']} on {job['layer'].name}")
        if started:
            self.run.worker.errored.connect(lambda *_: finished_cleanup())
        else:
            finished_cleanup()

    def _prepare_layers(self, job, names) -> dict:
        layer, axis, indices = job["layer"], job["axis"], job["indices"]
        plane_shape = job["jobs"][0]["plane"].shape
        shape = list(plane_shape)
        shape.insert(axis, len(indices))
        out = {}
        for mode, name in names.items():
            kw = slice_layer_kwargs(layer, axis, indices[0], len(indices))
            out[mode] = replace_layer(self.viewer, name, np.zeros(shape, np.float32), "image",
                                      **heatmap_layer_kwargs(np.zeros(1), signed=False), **kw)
            out[mode].metadata.update(kw["metadata"])
            out[mode].metadata.pop("xaiclip_partial", None)
        return out

    def _show(self, layer, axis, k, heat) -> None:
        """Write one slice of a heatmap layer with a single redraw (limits move only when they change much)."""
        put_slice(layer.data, axis, k, np.nan_to_num(heat).astype(np.float32))
        restyle_heatmap(layer)

    def _finish(self, job, layers, outcome) -> None:
        results, provenance = outcome
        run_id = uuid.uuid4().hex[:8]
        records = {mode: [] for mode in layers}
        for k, index, result in results:
            ex = result.explanation
            self._show(layers[ex.mode], job["axis"], k, ex.heatmap)
            rec = {"image": job["layer"].name, "axis": job["axis"], "slice": index, "run_id": run_id,
                   "model": job["spec"], "target": ex.target, **result.record, **provenance,
                   "params": ex.params, "layer": layers[ex.mode].name}
            records[ex.mode].append(rec)
        for mode, layer in layers.items():
            restyle_heatmap(layer, force=True)
            layer.metadata["xaiclip_records"] = records[mode]
            layer.metadata["xaiclip_run_id"] = run_id
            found = (w for r in records[mode] for w in r.get("warnings", []))
            layer.metadata["xaiclip_warnings"] = list(dict.fromkeys(found))
            layer.events.data()  # lets the metrics dock pick up the records
        first = [r for recs in records.values() for r in recs]
        text = "; ".join(f"{r['mode']}: {r['n_forward']} passes, {r['seconds']:.1f} s"
                         + (f", rho {r['rho']:.2f}" if r.get("rho") is not None else "") for r in first[:4])
        warnings = list(dict.fromkeys(w for r in first for w in r.get("warnings", [])))
        self.summary.setText(text + "".join(f"\n⚠ {w}" for w in warnings))


def _make_worker(job):
    """The generator run in the worker: every slice x mode through the shared pipeline."""
    from ..models import load_segmenter
    from ..pipeline import iter_explain_slice, with_filler_bank
    from ..provenance import model_provenance

    def work():
        seg = load_segmenter(job["spec"], job["device"])
        from ..models.speed import ensure_speed

        batch = job.get("batch", "auto")   # compile compiles for the run's batch size
        ensure_speed(seg, job.get("speed", "auto"), batch=None if batch in (None, "auto") else int(batch))
        warnings = phantom_warnings(job["is_phantom"], seg)
        for w in warnings:
            yield 0, 1000, w
        out = []
        n = len(job["jobs"])
        for k, item in enumerate(job["jobs"]):
            found: list[str] = []  # the ROI-overlap warning, from this (worker) thread
            params = with_filler_bank({job["method"]: job["params"]}, job["volume"], job["axis"], item["index"])
            gen = iter_explain_slice(seg, item["plane"], item["box"], [job["method"]], job["modes"],
                                     roi=item["roi"], gt=item["gt"], score_map=item["score"], seed=job["seed"],
                                     params=params, curves=job["curves"],
                                     batch_size=job["batch"], target=job["target"], warnings=list(map(str, warnings)),
                                     on_warning=found.append)
            while True:
                try:
                    step = next(gen)
                except StopIteration as stop:
                    results = stop.value
                    break
                yield from _drain(found, item["index"])  # shown before the explainers' results
                frac = (k + step.fraction) / n
                yield int(frac * 1000), 1000, (k, step.mode, step.progress.slice_heatmap())
            yield from _drain(found, item["index"])
            out += [(k, item["index"], r) for r in results]
        return out, model_provenance(seg)

    return work


def _drain(found: list, index: int):
    """Yield the warnings a pipeline call reported (in this worker thread) as RunPanel warning payloads."""
    while found:
        yield 0, 1000, WorkerWarning(f"slice {index}: {found.pop(0)}")
