"""Slice picker, preprocessing widget and the napari hooks (reader, writer, sample data) in a real viewer."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_xaiclip.io import layer_geometry, load_volume, save_volume
from napari_xaiclip.phantom import make_phantom
from napari_xaiclip.preprocess import enhance

pytestmark = pytest.mark.gui


@pytest.fixture
def ct(make_napari_viewer):
    viewer = make_napari_viewer()
    vol, labels, _ = make_phantom(shape=(12, 96, 96), seed=2)
    layer = viewer.add_image(vol.data, name="CT", **layer_geometry(vol))
    return viewer, layer, vol


def test_slice_picker_and_dims_stay_in_sync(ct):
    from napari_xaiclip.widgets import SlicePickerWidget

    viewer, layer, vol = ct
    picker = SlicePickerWidget(viewer)
    picker.set_index(3)
    assert viewer.dims.point[0] == pytest.approx(layer.translate[0] + 3 * layer.scale[0])
    viewer.dims.set_point(0, layer.translate[0] + 7 * layer.scale[0])  # the viewer's own slider
    assert picker.index == 7 and picker.slider.value() == 7
    picker.go_to_middle()
    assert picker.index == 6
    assert "S = " in picker.position.text() and "mm" in picker.position.text()
    picker.set_axis(1)  # coronal: axis 1 becomes the sliced one
    assert viewer.dims.order[0] == 1 and picker.spin.maximum() == vol.data.shape[1] - 1
    picker.set_index(40)
    assert viewer.dims.point[1] == pytest.approx(layer.translate[1] + 40 * layer.scale[1])


def test_preprocessing_preview_and_volume_output_line_up(ct, qtbot):
    from napari_xaiclip.widgets import PreprocessingWidget, SlicePickerWidget

    viewer, layer, vol = ct
    SlicePickerWidget(viewer).set_index(5)
    widget = PreprocessingWidget(viewer)
    widget.preset.setCurrentIndex(widget.preset.findData("adaptive"))
    widget.clip_limit.setValue(3.0)
    widget.preview.setChecked(True)
    preview = viewer.layers["CT · preview"]
    assert preview.data.shape == (1, 96, 96)
    np.testing.assert_allclose(preview.translate, np.array(layer.translate) + [5 * layer.scale[0], 0, 0])
    np.testing.assert_array_equal(preview.data[0], enhance(vol.data[5], clip_limit=3.0))
    widget.run.run_button.click()
    qtbot.waitUntil(lambda: not widget.run.running, timeout=60_000)
    out = viewer.layers["CT · adaptive"]
    np.testing.assert_allclose(out.scale, layer.scale)
    np.testing.assert_allclose(out.translate, layer.translate)
    assert out.metadata["xaiclip_preprocess"]["clip_limit"] == 3.0
    assert out.metadata["xaiclip_source"] == "CT"
    np.testing.assert_array_equal(out.data[9], enhance(vol.data[9], clip_limit=3.0))


def test_ct_window_preset_applies_to_the_whole_volume(ct, qtbot):
    from napari_xaiclip.preprocess import window
    from napari_xaiclip.widgets import PreprocessingWidget

    viewer, layer, vol = ct
    widget = PreprocessingWidget(viewer)
    widget.preset.setCurrentIndex(widget.preset.findData("ct-liver"))
    assert (widget.level.value(), widget.width.value()) == (30.0, 150.0)
    widget.apply_to_volume()
    qtbot.waitUntil(lambda: not widget.run.running, timeout=60_000)
    np.testing.assert_array_equal(viewer.layers["CT · ct-liver"].data, window(vol.data, 30, 150))


def test_reader_writer_and_sample_hooks_round_trip(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-xaiclip", "ct_phantom")
    assert [ly._type_string for ly in layers] == ["image", "labels"]
    # a NIfTI with a non-trivial (LPS, anisotropic) affine opens aligned and saves back onto itself
    affine = np.diag([-0.8, -0.9, 3.0, 1.0])
    affine[:3, 3] = [10, 20, -30]
    data = np.arange(6 * 7 * 5, dtype=np.float32).reshape(6, 7, 5)
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(src))
    (image,) = viewer.open(str(src), plugin="napari-xaiclip")
    vol = load_volume(src)
    np.testing.assert_allclose(image.scale, vol.spacing)
    np.testing.assert_array_equal(image.data, vol.data)
    out = tmp_path / "saved.nii.gz"
    from napari_xaiclip._writer import write_image

    write_image(str(out), image.data * 2, {"metadata": image.metadata, "scale": image.scale,
                                            "translate": image.translate})
    back = nib.load(str(out))
    np.testing.assert_array_equal(back.affine, nib.load(str(src)).affine)
    np.testing.assert_array_equal(np.asarray(back.dataobj), data * 2)


def test_label_files_open_as_labels(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    vol, labels, _ = make_phantom(shape=(4, 32, 32), seed=0)
    path = tmp_path / "case_labels.nii.gz"
    save_volume(path, labels, like=vol)
    (layer,) = viewer.open(str(path), plugin="napari-xaiclip")
    assert layer._type_string == "labels"
    np.testing.assert_array_equal(layer.data, labels)


def test_reader_reports_corrupt_files(tmp_path):
    from napari_xaiclip._reader import get_reader

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    reader = get_reader(str(bad))
    with pytest.raises(ValueError, match="broken.nii.gz"):
        reader(str(bad))
    assert get_reader(str(tmp_path / "photo.png")) is None


def test_autosave_restores_roi_and_heatmaps_after_the_viewer_is_gone(make_napari_viewer, tmp_path, monkeypatch, qtbot):
    from napari_xaiclip.widgets import MetricsWidget
    from napari_xaiclip.widgets.layers import roi_layer, slice_layer_kwargs

    monkeypatch.setenv("XAICLIP_SESSION_DIR", str(tmp_path / "sessions"))
    vol, labels, _ = make_phantom(shape=(6, 64, 64), seed=4)

    def open_scene():
        viewer = make_napari_viewer()
        image = viewer.add_image(vol.data, name="CT", **layer_geometry(vol))
        return viewer, image, MetricsWidget(viewer)

    viewer, image, metrics = open_scene()
    roi = roi_layer(viewer, image)
    roi.data[3, 10:20, 12:30] = 1  # a brush stroke
    roi.events.data()
    heat = np.random.default_rng(0).random((1, 64, 64)).astype(np.float32)
    kw = slice_layer_kwargs(image, 0, 3)
    kw["metadata"]["xaiclip_records"] = [{"method": "occlusion", "mode": "roi", "slice": 3, "image": "CT"}]
    kw["metadata"]["xaiclip_run_id"] = "abc"
    viewer.add_image(heat, name="CT · occlusion (roi)", **kw)
    qtbot.waitUntil(lambda: len(metrics.autosave.saved_files) >= 2, timeout=10_000)
    viewer.close()  # the session ends (a crash would lose nothing saved so far)

    viewer2, image2, metrics2 = open_scene()
    added = [name for name in ("CT · occlusion (roi)", "ROI") if name in viewer2.layers]  # restored on opening
    assert sorted(added) == ["CT · occlusion (roi)", "ROI"]
    np.testing.assert_array_equal(viewer2.layers["ROI"].data, roi.data)
    np.testing.assert_array_equal(viewer2.layers["CT · occlusion (roi)"].data, heat)
    np.testing.assert_allclose(viewer2.layers["CT · occlusion (roi)"].translate, kw["translate"])
    assert metrics2.table.rowCount() == 1  # the restored run is listed again


def test_autosave_can_be_switched_off(make_napari_viewer, tmp_path, monkeypatch, qtbot):
    from napari_xaiclip.widgets import MetricsWidget
    from napari_xaiclip.widgets.layers import roi_layer

    monkeypatch.setenv("XAICLIP_SESSION_DIR", str(tmp_path / "sessions"))
    monkeypatch.setenv("XAICLIP_AUTOSAVE", "0")
    viewer = make_napari_viewer()
    vol, _, _ = make_phantom(shape=(4, 32, 32), seed=4)
    image = viewer.add_image(vol.data, name="CT", **layer_geometry(vol))
    metrics = MetricsWidget(viewer)
    assert not metrics.autosave_box.isChecked()
    roi = roi_layer(viewer, image)
    roi.data[1, 2:5, 2:5] = 1
    roi.events.data()
    qtbot.wait(1500)
    assert metrics.autosave.saved_files == [] and not (tmp_path / "sessions").exists()
