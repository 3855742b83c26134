"""Autosave restores a volume's own ROI and nothing else, follows renamed layers, and survives
a session folder it cannot write.

Each test draws a known ROI, saves it through the controller, closes the viewer and opens
a volume again in a fresh one: the restored ROI is compared with the one drawn (same
volume) or must be absent (another volume that the old key, path as typed plus shape,
could not tell apart).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_xaiclip.io import layer_geometry, load_volume

pytestmark = pytest.mark.gui

SHAPE = (24, 20, 6)  # file order: 6 axial slices of 24 x 20


def _write_ct(path, seed: int):
    """An uncompressed NIfTI: every seed gives a file of exactly the same size."""
    data = np.random.default_rng(seed).normal(40, 20, SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
    return path


def _open(make_napari_viewer, path, name="CT"):
    from napari_xaiclip.widgets import MetricsWidget

    viewer = make_napari_viewer()
    vol = load_volume(path)
    image = viewer.add_image(vol.data, name=name, **layer_geometry(vol))
    return viewer, image, MetricsWidget(viewer)


def _draw_and_save(qtbot, viewer, image, metrics) -> np.ndarray:
    from napari_xaiclip.widgets.layers import roi_layer

    roi = roi_layer(viewer, image)
    roi.data[2, 3:9, 4:12] = 1  # a brush stroke
    roi.events.data()
    qtbot.waitUntil(lambda: len(metrics.autosave.saved_files) >= 1, timeout=10_000)
    return np.asarray(roi.data).copy()


def test_same_file_name_in_two_patient_folders(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """`xaiclip gui ct.nii.gz` typed in patient_a/, then in patient_b/: two volumes, two sessions."""
    for folder, seed in (("patient_a", 1), ("patient_b", 2)):
        (tmp_path / folder).mkdir()
        _write_ct(tmp_path / folder / "ct.nii", seed)
    monkeypatch.chdir(tmp_path / "patient_a")
    viewer, image, metrics = _open(make_napari_viewer, "ct.nii")
    drawn = _draw_and_save(qtbot, viewer, image, metrics)
    viewer.close()

    monkeypatch.chdir(tmp_path / "patient_b")
    viewer_b, image_b, metrics_b = _open(make_napari_viewer, "ct.nii")
    assert metrics_b.autosave.restore(image_b) == []
    assert "ROI" not in viewer_b.layers

    monkeypatch.chdir(tmp_path / "patient_a")  # patient A again: the ROI comes back
    viewer_a, image_a, metrics_a = _open(make_napari_viewer, "ct.nii")
    assert "ROI" in viewer_a.layers  # brought back when the scan was opened
    np.testing.assert_array_equal(viewer_a.layers["ROI"].data, drawn)


def test_file_replaced_at_the_same_path(make_napari_viewer, qtbot, tmp_path):
    path = _write_ct(tmp_path / "ct.nii", seed=1)
    viewer, image, metrics = _open(make_napari_viewer, path)
    _draw_and_save(qtbot, viewer, image, metrics)
    viewer.close()

    size = path.stat().st_size
    _write_ct(path, seed=2)  # another patient exported to the same name
    assert path.stat().st_size == size
    viewer2, image2, metrics2 = _open(make_napari_viewer, path)
    assert metrics2.autosave.restore(image2) == []
    assert "ROI" not in viewer2.layers


def test_renamed_image_layer_keeps_autosave_working(make_napari_viewer, qtbot, tmp_path):
    path = _write_ct(tmp_path / "ct.nii", seed=1)
    viewer, image, metrics = _open(make_napari_viewer, path)
    _draw_and_save(qtbot, viewer, image, metrics)
    image.name = "patient 17 CT"
    n_saved = len(metrics.autosave.saved_files)
    roi = viewer.layers["ROI"]
    roi.data[4, 10:14, 1:5] = 1  # an edit after the rename
    roi.events.data()
    qtbot.waitUntil(lambda: len(metrics.autosave.saved_files) > n_saved, timeout=10_000)
    edited = np.asarray(roi.data).copy()
    viewer.close()

    viewer2, image2, metrics2 = _open(make_napari_viewer, path)
    assert "ROI" in viewer2.layers
    np.testing.assert_array_equal(viewer2.layers["ROI"].data, edited)


def test_unwritable_session_folder_turns_autosave_off_once(make_napari_viewer, qtbot, tmp_path, monkeypatch,
                                                            notifications):
    from napari_xaiclip.widgets.layers import roi_layer

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the session folder should be")
    monkeypatch.setenv("XAICLIP_SESSION_DIR", str(blocker))
    viewer, image, metrics = _open(make_napari_viewer, _write_ct(tmp_path / "ct.nii", seed=1))
    assert metrics.autosave_box.isChecked()
    roi = roi_layer(viewer, image)
    with qtbot.capture_exceptions() as raised:
        for k in range(3):  # several edits, each past the debounce delay
            roi.data[k, 1:3, 1:3] = 1
            roi.events.data()
            qtbot.wait(1300)
        metrics.autosave.flush()
    assert raised == []
    said = [n for n in notifications if n.startswith("autosave is off")]
    assert said == [f"autosave is off: cannot write {blocker}: Not a directory"], notifications
    assert not metrics.autosave.enabled and not metrics.autosave_box.isChecked()
    assert metrics.autosave.saved_files == []


def test_a_session_comes_back_when_the_plugin_was_opened_first(make_napari_viewer, qtbot, tmp_path):
    """napari's Plugins menu: the dock exists before the scan is opened; the session still returns."""
    from napari_xaiclip.widgets import MetricsWidget

    path = _write_ct(tmp_path / "ct.nii", seed=1)
    viewer, image, metrics = _open(make_napari_viewer, path)
    drawn = _draw_and_save(qtbot, viewer, image, metrics)
    viewer.close()

    viewer2 = make_napari_viewer()
    metrics2 = MetricsWidget(viewer2)  # docked from the Plugins menu, no scan yet
    vol = load_volume(path)
    viewer2.add_image(vol.data, name="CT", **layer_geometry(vol))  # then File > Open
    assert "ROI" in viewer2.layers
    np.testing.assert_array_equal(viewer2.layers["ROI"].data, drawn)
    assert metrics2.autosave.enabled


def test_fingerprint_depends_on_the_voxels_not_their_layout_or_integer_type():
    """A reoriented view, its C-ordered copy and the same values as float32 are one volume to autosave;
    a change of one sampled voxel is another."""
    from napari_xaiclip.session import volume_fingerprint

    base = np.random.default_rng(0).integers(-1024, 2000, (7, 6, 5), dtype=np.int16)
    view = base.transpose(2, 1, 0)[::-1]
    assert not view.flags.c_contiguous
    key = volume_fingerprint(None, view, np.eye(4))
    assert key == volume_fingerprint(None, np.ascontiguousarray(view), np.eye(4))
    assert key == volume_fingerprint(None, view.astype(np.float32), np.eye(4))
    changed = np.ascontiguousarray(view)
    changed[0, 0, 0] += 1
    assert key != volume_fingerprint(None, changed, np.eye(4))
