"""Long-session reliability in napari: cancel every method mid-run, refuse a second run,
close napari during a run, and keep the event loop responsive for every method."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_xaiclip.io import layer_geometry
from napari_xaiclip.phantom import make_phantom

pytestmark = pytest.mark.gui

#: Per method: parameters that make a run long enough to cancel and to probe.
LONG_RUNS = {
    "occlusion": {"window": 8, "stride": 2},
    "adaptive-occlusion": {"window": 8, "stride": 2},
    "rise": {"n_samples": 2000},
    "lime": {"n_samples": 500},
    "ig": {"n_steps": 16, "n_samples": 32},  # a batch of 4 x 16 gradient steps: well under a second
    "causal": {"n_samples": 50, "threshold_dice": 0.0},  # every block gets all 50 fillers, whatever the model
    "segx": {},
}


#: What a user accepts between Cancel (or closing napari) and the run stopping, on the test model.
CANCEL_LATENCY_S = 2.0

#: Shorter runs for the responsiveness probe: enough live updates to measure, no more.
PROBE_RUNS = {
    "occlusion": {"window": 16, "stride": 8},
    "adaptive-occlusion": {"window": 16, "stride": 8},
    "rise": {"n_samples": 400},
    "lime": {"n_samples": 200},
    "ig": {"n_steps": 16, "n_samples": 4},
    "causal": {"n_samples": 10},
}


@pytest.fixture
def scene(make_napari_viewer):
    from napari_xaiclip.widgets import ExplainerWidget, MetricsWidget, SlicePickerWidget
    from napari_xaiclip.widgets.layers import roi_layer

    viewer = make_napari_viewer()
    vol, labels, _ = make_phantom(shape=(8, 256, 256), seed=5)
    image = viewer.add_image(vol.data, name="CT", **layer_geometry(vol))
    index = int(np.argmax((labels == 3).sum((1, 2))))  # spleen
    SlicePickerWidget(viewer).set_index(index)
    roi = roi_layer(viewer, image)
    roi.data[index] = (labels[index] == 3).astype(np.uint8)
    widget = ExplainerWidget(viewer)
    widget.model.choose("phantom")  # fast; the default is LiteMedSAM
    widget.curves.setChecked(False)
    return viewer, widget, MetricsWidget(viewer)


def _configure(widget, method, **extra):
    widget.method.setCurrentText(method)
    widget.mode.setCurrentText("ROI-guided")
    for k, v in {**LONG_RUNS.get(method, {}), **extra}.items():
        widget.params.set_value(k, v)


def _spy_progress(panel):
    seen = []
    original = panel._yielded

    def spy(item):
        seen.append(item[0])
        original(item)

    panel._yielded = spy
    return seen


@pytest.mark.parametrize("method", ["occlusion", "adaptive-occlusion", "rise", "lime", "ig", "causal", "segx"])
def test_cancel_every_method_mid_run(scene, qtbot, method):
    viewer, widget, metrics = scene
    _configure(widget, method)
    widget.batch.setValue(4)
    seen = _spy_progress(widget.run)
    widget.explain()
    qtbot.waitUntil(lambda: len(seen) >= 2, timeout=180_000)
    t0 = time.perf_counter()
    widget.run.cancel()
    qtbot.waitUntil(lambda: not widget.run.running, timeout=120_000)
    latency = time.perf_counter() - t0
    print(f"{method}: stopped {latency:.2f} s after Cancel, at {max(seen) / 10:.1f} %")
    assert latency < CANCEL_LATENCY_S, f"{method} took {latency:.2f} s to stop after Cancel"
    assert widget.run.status.text() == "cancelled"
    assert max(seen) < 1000
    partial = [ly for ly in viewer.layers if ly.name.endswith("[partial]")]
    assert len(partial) == 1 and partial[0].metadata["xaiclip_partial"]
    assert metrics.table.rowCount() == 0
    assert widget.run.run_button.isEnabled()


def test_second_run_is_refused_while_one_runs(scene, qtbot, notifications):
    from napari_xaiclip.widgets import ExplainerWidget

    viewer, widget, _ = scene
    _configure(widget, "rise")
    other = ExplainerWidget(viewer)  # a second explainer dock on the same viewer
    other.model.choose("phantom")
    _configure(other, "rise")
    other.curves.setChecked(False)
    widget.explain()
    assert widget.run.running
    widget.explain()  # the same widget again
    other.explain()  # another widget aiming at the same heatmap layer
    assert not other.run.running
    assert any("already in progress" in m for m in notifications)
    assert any("another run is writing" in m for m in notifications)
    widget.run.cancel()
    qtbot.waitUntil(lambda: not widget.run.running, timeout=60_000)
    other.explain()  # free again once the first run is over
    assert other.run.running
    other.run.cancel()
    qtbot.waitUntil(lambda: not other.run.running, timeout=60_000)


@pytest.mark.parametrize("method", ["occlusion", "adaptive-occlusion", "rise", "lime", "ig", "causal", "segx"])
def test_closing_napari_during_a_run_stops_the_worker(make_napari_viewer, qtbot, method):
    from superqt.utils._qthreading import WorkerBase

    from napari_xaiclip.widgets import ExplainerWidget
    from napari_xaiclip.widgets.layers import roi_layer

    viewer = make_napari_viewer()
    vol, labels, _ = make_phantom(shape=(4, 256, 256), seed=5)
    image = viewer.add_image(vol.data, name="CT", **layer_geometry(vol))
    z = int(round(image.world_to_data(viewer.dims.point)[0]))
    roi_layer(viewer, image).data[z] = (labels[z] > 0).astype(np.uint8)
    widget = ExplainerWidget(viewer)
    widget.model.choose("phantom")
    viewer.window.add_dock_widget(widget)
    _configure(widget, method)
    widget.batch.setValue(4)
    widget.curves.setChecked(False)
    seen = _spy_progress(widget.run)
    widget.explain()
    qtbot.waitUntil(lambda: len(seen) >= 1, timeout=120_000)
    worker = widget.run.worker
    t0 = time.perf_counter()
    viewer.close()
    qtbot.waitUntil(lambda: worker not in WorkerBase._worker_set, timeout=60_000)
    latency = time.perf_counter() - t0
    print(f"{method}: worker stopped {latency:.2f} s after napari closed")
    assert worker.abort_requested and latency < CANCEL_LATENCY_S, f"{method} took {latency:.2f} s after close"


@pytest.mark.parametrize("method", ["occlusion", "adaptive-occlusion", "rise", "lime", "ig", "gradcam", "causal",
                                    "segx"])
def test_event_loop_probe_for_every_method(scene, qtbot, method):
    from qtpy.QtCore import QTimer

    _, widget, _ = scene
    _configure(widget, method, **PROBE_RUNS.get(method, {}))
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    widget.explain()
    qtbot.waitUntil(lambda: not widget.run.running, timeout=600_000)
    timer.stop()
    assert widget.run.last_error is None, widget.run.last_error
    worst = float(np.diff(ticks).max()) if len(ticks) > 1 else 0.0
    print(f"{method}: {len(ticks)} ticks over the run, worst event-loop stall {worst * 1000:.0f} ms")
    assert worst < 0.15


def test_cancel_after_the_run_returned_keeps_its_result(qtbot):
    """Cancel pressed while a finished run's result is being shown: nothing to stop, status stays done."""
    from napari_xaiclip.widgets.run_panel import RunPanel

    panel = RunPanel()
    qtbot.addWidget(panel)
    results = []

    def work():
        yield 1, 1, None
        return "result"

    def on_done(result):
        results.append(result)
        panel.cancel()  # runs after `returned`, before `finished`: the race the causal cancel test met

    assert panel.start(work, on_done=on_done, description="tiny run")
    qtbot.waitUntil(lambda: not panel.running, timeout=30_000)
    assert results == ["result"]
    assert panel.status.text().startswith("done in") and not panel.cancelled
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()
