"""The napari workflow end to end under Xvfb: phantom -> ROI from a prompt -> segmentation ->
ROI-guided occlusion, cancellation, responsiveness, and bad input as notifications."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_xaiclip.io import layer_geometry
from napari_xaiclip.phantom import make_phantom

pytestmark = pytest.mark.gui


@pytest.fixture
def scene(make_napari_viewer):
    viewer = make_napari_viewer()
    vol, labels, names = make_phantom(shape=(10, 256, 256), seed=3)
    image = viewer.add_image(vol.data, name="CT", colormap="gray", **layer_geometry(vol))
    lab = viewer.add_labels(labels, name="labels", **layer_geometry(vol))
    lab.metadata["label_names"] = names
    index = int(np.argmax((labels == 1).sum((1, 2))))
    return viewer, image, lab, labels, index


def _widgets(viewer):
    """The docks, every segmenter chooser set to the phantom model by name (fast; LiteMedSAM is the default)."""
    from napari_xaiclip.widgets import ExplainerWidget, MetricsWidget, RoiWidget, SegmentationWidget, SlicePickerWidget

    widgets = (SlicePickerWidget(viewer), RoiWidget(viewer), SegmentationWidget(viewer), ExplainerWidget(viewer),
               MetricsWidget(viewer))
    for chooser in (widgets[1].segmenter, widgets[2].model, widgets[3].model):
        chooser.choose("phantom")
    return widgets


def _wait(qtbot, panel, timeout=300):
    qtbot.waitUntil(lambda: not panel.running, timeout=timeout * 1000)


def test_prompt_roi_segmentation_and_roi_guided_occlusion(scene, qtbot, tmp_path):
    from napari_xaiclip.explain import explain
    from napari_xaiclip.models import load_segmenter
    from napari_xaiclip.slicing import take_slice

    viewer, image, _, labels, index = scene
    picker, roi_w, seg_w, ex_w, metrics = _widgets(viewer)
    picker.set_index(index)
    assert viewer.dims.point[0] == pytest.approx(image.translate[0] + index * image.scale[0])

    roi_w.tabs.setCurrentIndex(0)  # text prompt through the default localizer
    roi_w.prompt.setText("liver")
    roi_w.compute()
    _wait(qtbot, roi_w.run)
    roi = np.asarray(viewer.layers["ROI"].data[index]) > 0
    assert roi.any() and viewer.layers["ROI"].data.shape == image.data.shape
    assert np.allclose(viewer.layers["ROI"].scale, image.scale)
    assert "px" in roi_w.info.text() and "mm²" in roi_w.info.text()

    seg_w.segment()
    _wait(qtbot, seg_w.run)
    seg_layer = viewer.layers["segmentation"]
    assert (np.asarray(seg_layer.data[index]) > 0).any()
    assert f"0:{index}" in seg_layer.metadata["xaiclip_boxes"]

    ex_w.method.setCurrentText("occlusion")
    ex_w.mode.setCurrentText("ROI-guided")
    ex_w.params.set_value("window", 32)
    ex_w.curves.setChecked(False)
    ex_w.explain()
    _wait(qtbot, ex_w.run)
    assert ex_w.run.last_error is None, ex_w.run.last_error

    heat_layer = viewer.layers["CT · occlusion (roi)"]
    assert heat_layer.data.shape == (1, 256, 256)
    expected_translate = np.array(image.translate) + np.array([index * image.scale[0], 0, 0])
    np.testing.assert_allclose(heat_layer.translate, expected_translate)
    np.testing.assert_allclose(heat_layer.scale, image.scale)
    # readable over any scan: translucent, transparent where unimportant, limits from the map's own range
    assert heat_layer.blending == "translucent" and heat_layer.colormap.name == "xaiclip importance"
    assert heat_layer.colormap.colors[0][3] == 0
    assert heat_layer.contrast_limits[1] == pytest.approx(
        np.percentile(heat_layer.data[heat_layer.data > 0], 99.5), rel=1e-4)
    record = heat_layer.metadata["xaiclip_records"][0]
    for key in ("method", "mode", "params", "target", "model", "n_forward", "rho", "seconds", "gflops",
                "axis", "slice"):
        assert key in record
    assert (record["method"], record["mode"], record["slice"], record["axis"]) == ("occlusion", "roi", index, 0)
    assert record["model"] == "phantom" and record["warnings"] == []  # the phantom model on the phantom
    assert "synthetic abdominal phantom" in record["segmenter_trained_on"]
    assert heat_layer.metadata["xaiclip_slice"] == {"axis": 0, "index": index, "n_slices": 1}

    # the layer holds exactly what the library computes for the same inputs
    plane = np.asarray(take_slice(image.data, 0, index))
    ref = explain("occlusion", load_segmenter("phantom"), plane, box=record["params"]["box"], roi=roi,
                  window=32, seed=0)
    np.testing.assert_allclose(np.asarray(heat_layer.data[0]), ref.heatmap, atol=1e-6)
    # records keep 6 decimals
    assert record["n_forward"] == ref.n_forward and record["rho"] == pytest.approx(ref.rho, abs=1e-6)
    assert metrics.table.rowCount() == 1

    # Save all: the CLI's names and label value, volumes that load back onto the scan's grid
    written = metrics.save_everything(str(tmp_path / "saved"))
    names = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert names == ["metrics.csv", "metrics.json", "occlusion-roi.nii.gz", "occlusion-roi.png", "roi.nii.gz",
                     "segmentation.nii.gz"], names
    assert len(written) == len(names)
    from napari_xaiclip.io import load_volume

    saved_heat = load_volume(tmp_path / "saved" / "occlusion-roi.nii.gz").data
    np.testing.assert_allclose(saved_heat[index], ref.heatmap, atol=1e-6)
    assert not np.delete(saved_heat, index, axis=0).any()
    for stem, expected in (("roi", roi), ("segmentation", np.asarray(seg_layer.data[index]) > 0)):
        saved = load_volume(tmp_path / "saved" / f"{stem}.nii.gz").data
        assert set(np.unique(saved)) == {0.0, 1.0}
        np.testing.assert_array_equal(saved[index] > 0, expected)


def _prepare_roi(viewer, image, labels, index):
    from napari_xaiclip.widgets.layers import roi_layer

    roi = roi_layer(viewer, image)
    roi.data[index] = (labels[index] == 1).astype(np.uint8)
    roi.refresh()


def test_cancel_stops_within_a_batch_and_marks_partial(scene, qtbot):
    viewer, image, _, labels, index = scene
    picker, _, _, ex_w, metrics = _widgets(viewer)
    picker.set_index(index)
    _prepare_roi(viewer, image, labels, index)
    ex_w.method.setCurrentText("rise")
    ex_w.mode.setCurrentText("ROI-guided")
    ex_w.params.set_value("n_samples", 4000)
    ex_w.batch.setValue(8)
    ex_w.curves.setChecked(False)
    progressed = []
    original = ex_w.run._yielded

    def spy(item):
        progressed.append(item[0])
        original(item)

    ex_w.run._yielded = spy
    ex_w.explain()
    qtbot.waitUntil(lambda: len(progressed) >= 2, timeout=120_000)
    t0 = time.perf_counter()
    ex_w.run.cancel()
    _wait(qtbot, ex_w.run, timeout=60)
    stop_seconds = time.perf_counter() - t0
    assert ex_w.run.status.text() == "cancelled"
    assert ex_w.run.run_button.isEnabled() and not ex_w.run.cancel_button.isEnabled()
    partial = [ly for ly in viewer.layers if ly.name.endswith("[partial]")]
    assert len(partial) == 1 and partial[0].metadata["xaiclip_partial"] is True
    assert max(progressed) < 1000  # stopped long before the end
    assert stop_seconds < 20  # one batch of 8 forwards is well under this
    assert metrics.table.rowCount() == 0


def test_event_loop_stays_responsive_during_a_run(scene, qtbot):
    from qtpy.QtCore import QTimer

    viewer, image, _, labels, index = scene
    picker, _, _, ex_w, _ = _widgets(viewer)
    picker.set_index(index)
    _prepare_roi(viewer, image, labels, index)
    ex_w.method.setCurrentText("rise")
    ex_w.mode.setCurrentText("ROI-guided")
    ex_w.params.set_value("n_samples", 400)
    ex_w.curves.setChecked(False)
    ticks = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    ex_w.explain()
    _wait(qtbot, ex_w.run)
    timer.stop()
    gaps = np.diff(ticks)
    assert len(ticks) > 50
    worst = float(gaps.max())
    print(f"event loop: {len(ticks)} ticks, worst stall {worst * 1000:.0f} ms, "
          f"99th percentile {np.percentile(gaps, 99) * 1000:.0f} ms")
    assert worst < 0.15  # the issue asks for about 100 ms; measured ~40 ms here


@pytest.mark.parametrize("case", ["no image", "empty roi", "rgb", "4d"])
def test_bad_input_becomes_a_notification(make_napari_viewer, notifications, case):
    from napari_xaiclip.widgets import ExplainerWidget

    viewer = make_napari_viewer()
    if case == "empty roi":  # a box is drawn, but no ROI exists
        vol, labels, _ = make_phantom(shape=(4, 64, 64), seed=1)
        image = viewer.add_image(vol.data, name="CT", **layer_geometry(vol))
        z = int(round(image.world_to_data(viewer.dims.point)[0]))
        viewer.add_shapes([[[z, 10, 10], [z, 10, 50], [z, 50, 50], [z, 50, 10]]], shape_type="rectangle",
                          name="box prompt", **{k: v for k, v in layer_geometry(vol).items() if k != "metadata"})
    elif case == "rgb":
        viewer.add_image(np.zeros((32, 32, 3), np.uint8), rgb=True, name="photo")
    elif case == "4d":
        viewer.add_image(np.zeros((2, 3, 16, 16), np.float32), name="dynamic")
    widget = ExplainerWidget(viewer)
    widget.mode.setCurrentText("ROI-guided")
    widget.explain()
    expected = {"no image": "no image layer", "empty roi": "needs an ROI", "rgb": "RGB", "4d": "4 dimensions"}
    assert any(expected[case] in m for m in notifications), notifications
    assert not widget.run.running


def test_checkpoint_that_does_not_load_is_reported(scene, qtbot, notifications, tmp_path):
    viewer, image, _, labels, index = scene
    picker, _, _, ex_w, _ = _widgets(viewer)
    picker.set_index(index)
    _prepare_roi(viewer, image, labels, index)
    bad = tmp_path / "medsam_vit_b.pth"
    bad.write_bytes(b"this is not a checkpoint")
    ex_w.model.kind.setCurrentIndex(ex_w.model.kind.findData("medsam"))
    ex_w.model.path.edit.setText(str(bad))
    ex_w.explain()
    _wait(qtbot, ex_w.run)
    assert ex_w.run.last_error and "cannot be read" in ex_w.run.last_error
    assert any("cannot be read" in m for m in notifications)
    assert ex_w.run.run_button.isEnabled()
    assert not any(ly.name.startswith("CT · occlusion") and ly.metadata.get("xaiclip_records") for ly in viewer.layers)


def test_a_computed_roi_and_a_cleared_slice_are_undone_by_ctrl_z(scene, qtbot):
    """ROI edits go through napari's undoable path: one undo per computation, one per cleared slice."""
    viewer, image, _, labels, index = scene
    picker, roi_w, *_ = _widgets(viewer)
    picker.set_index(index)
    roi_w.tabs.setCurrentIndex(2)   # threshold: no model, the expected ROI is known
    roi_w.otsu.setChecked(False)
    roi_w.level.setValue(100.0)
    roi_w.compute()
    _wait(qtbot, roi_w.run)
    roi = viewer.layers["ROI"]
    computed = np.asarray(roi.data[index]).copy()
    assert computed.any() and not np.asarray(roi.data[:index]).any()
    roi.undo()                       # what Ctrl+Z calls on the active labels layer
    assert not np.asarray(roi.data).any()
    roi.redo()
    assert np.array_equal(np.asarray(roi.data[index]), computed)
    roi_w._clear_slice()
    assert not np.asarray(roi.data[index]).any()
    roi.undo()
    assert np.array_equal(np.asarray(roi.data[index]), computed)


def test_a_segmentation_is_undone_by_ctrl_z_slice_by_slice(scene, qtbot):
    """Each segmented slice is one undo step on the segmentation layer; earlier slices stay."""
    viewer, image, _, labels, index = scene
    picker, roi_w, seg_w, *_ = _widgets(viewer)
    masks = {}
    for k in (index, index + 1):
        picker.set_index(k)
        roi_w.tabs.setCurrentIndex(2)
        roi_w.otsu.setChecked(False)
        roi_w.level.setValue(100.0)
        roi_w.compute()
        _wait(qtbot, roi_w.run)
        seg_w.segment()
        _wait(qtbot, seg_w.run)
        masks[k] = np.asarray(viewer.layers["segmentation"].data[k]).copy()
        assert masks[k].any()
    seg = viewer.layers["segmentation"]
    seg.undo()
    assert not np.asarray(seg.data[index + 1]).any()
    assert np.array_equal(np.asarray(seg.data[index]), masks[index])
    seg.undo()
    assert not np.asarray(seg.data).any()
    seg.redo()
    assert np.array_equal(np.asarray(seg.data[index]), masks[index])
