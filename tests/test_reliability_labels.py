"""Label volumes must lie on the image's voxel grid and hold labels, not just have its shape.

Each case writes an image and a label file with nibabel and states by hand where the
label file puts its voxels (moved 200 mm, 0.5 mm instead of 1.5 mm, mirrored); the
accepted cases are the same grid written another way (other axis order, float32
rounding of the affine), checked voxel for voxel against the labels as drawn.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_xaiclip.io import layer_geometry, load_volume
from napari_xaiclip.labels import (
    GRID_TOLERANCE,
    check_labels_match,
    labels_from_volume,
    load_label_volume,
    load_organ_labels,
)

SHAPE = (16, 14, 6)
IMAGE_AFFINE = np.array([[1.5, 0.0, 0.0, -40.0],
                         [0.0, 1.5, 0.0, 20.0],
                         [0.0, 0.0, 3.0, -90.0],
                         [0.0, 0.0, 0.0, 1.0]])
RESAMPLE = "resample the labels onto the image grid (e.g. in 3D Slicer) first"


def _labels_array() -> np.ndarray:
    lab = np.zeros(SHAPE, np.int16)
    lab[3:9, 4:10, 1:5] = 1  # liver
    lab[10:14, 2:6, 2:4] = 3  # spleen
    return lab


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), str(path))
    return path


@pytest.fixture
def image(tmp_path):
    ct = np.random.default_rng(0).normal(40, 20, SHAPE).astype(np.float32)
    return load_volume(_save(tmp_path / "ct.nii.gz", ct, IMAGE_AFFINE))


def _moved(mm):
    a = IMAGE_AFFINE.copy()
    a[:3, 3] += mm
    return a


def _in_plane_spacing(mm):
    a = IMAGE_AFFINE.copy()
    a[0, 0] = a[1, 1] = mm
    return a


MISPLACED = {
    "moved 200 mm": _moved([200.0, 0.0, 0.0]),
    "spacing 0.5 mm": _in_plane_spacing(0.5),
    "mirrored x": IMAGE_AFFINE @ np.diag([-1.0, 1.0, 1.0, 1.0]),  # same origin, x runs the other way
    "moved half a voxel": _moved([0.75, 0.0, 0.0]),
}


@pytest.mark.parametrize("name", list(MISPLACED))
def test_labels_on_another_grid_are_refused(tmp_path, image, name):
    affine = MISPLACED[name]
    path = _save(tmp_path / "labels.nii.gz", _labels_array(), affine)
    with pytest.raises(ValueError) as info:
        load_label_volume(path, image)
    message = str(info.value)
    assert message.startswith(f"{path}: the labels lie on another grid than the image")
    assert message.endswith(RESAMPLE)
    origin = ", ".join(f"{v:.4g}" for v in affine[:3, 3])
    spacing = ", ".join(f"{v:.4g}" for v in np.linalg.norm(affine[:3, :3], axis=0))
    assert f"labels origin ({origin}) mm, spacing ({spacing}) mm" in message
    assert "image origin (-40, 20, -90) mm, spacing (1.5, 1.5, 3) mm, axes RAS" in message


def test_the_same_grid_in_another_axis_order_is_accepted(tmp_path, image):
    """LPS storage: axes 0 and 1 reversed, origin moved to the other corner; every voxel stays put."""
    lab = _labels_array()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [SHAPE[0] - 1, SHAPE[1] - 1]  # new index i' = n - 1 - i
    affine = IMAGE_AFFINE @ np.linalg.inv(flip)
    path = _save(tmp_path / "labels_lps.nii.gz", lab[::-1, ::-1], affine)
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    expected = load_volume(_save(tmp_path / "labels_ras.nii.gz", lab, IMAGE_AFFINE)).data
    np.testing.assert_array_equal(load_label_volume(path, image), expected)


def test_float32_rounding_of_the_affine_is_accepted(tmp_path, image):
    noisy = IMAGE_AFFINE + np.random.default_rng(1).uniform(-1e-5, 1e-5, (4, 4)) * np.r_[1, 1, 1, 0][:, None]
    path = _save(tmp_path / "labels.nii.gz", _labels_array(), noisy)
    assert load_label_volume(path, image).shape == image.shape


def test_tolerance_is_a_tenth_of_the_smallest_voxel(image):
    """Hand case on in-memory volumes: 0.09 and 0.11 of a 1.5 mm voxel at the far corner."""
    from napari_xaiclip.io import Volume

    for fraction, ok in ((0.09, True), (0.11, False)):
        a = image.affine.copy()
        a[:3, 3] += [0.0, 0.0, fraction * 1.5]
        labels = Volume(np.zeros(image.shape, np.float32), a)
        if ok:
            check_labels_match(labels, image)
        else:
            with pytest.raises(ValueError, match="another grid"):
                check_labels_match(labels, image)
    assert GRID_TOLERANCE == 0.1


def test_another_shape_is_refused(tmp_path, image):
    path = _save(tmp_path / "labels.nii.gz", _labels_array()[:, :, :5], IMAGE_AFFINE)
    with pytest.raises(ValueError, match=r"labels of shape .* do not match the image's") as info:
        load_label_volume(path, image)
    assert str(path) in str(info.value) and str(info.value).endswith(RESAMPLE)


def test_organ_labels_round_trip(tmp_path, image):
    path = _save(tmp_path / "labels.nii.gz", _labels_array(), IMAGE_AFFINE)
    labels, value = load_organ_labels(path, image, "spleen", {1: "liver", 3: "spleen"})
    assert value == 3 and int((labels == 3).sum()) == 4 * 4 * 2


@pytest.mark.parametrize("organ", ["0", 0])
def test_organ_zero_is_the_background(tmp_path, image, organ):
    path = _save(tmp_path / "labels.nii.gz", _labels_array(), IMAGE_AFFINE)
    with pytest.raises(ValueError, match="label 0 is the background"):
        load_organ_labels(path, image, organ, {1: "liver"})


def test_a_ct_given_as_labels_is_refused(tmp_path, image):
    with pytest.raises(ValueError, match=r"ct.nii.gz is not a label volume: it has non-integer values"):
        load_label_volume(tmp_path / "ct.nii.gz", image)
    hu = np.random.default_rng(3).integers(-1000, 1500, SHAPE).astype(np.int16)  # whole numbers, as CTs are
    whole = _save(tmp_path / "ct_hu.nii.gz", hu, IMAGE_AFFINE)
    with pytest.raises(ValueError, match=r"ct_hu.nii.gz is not a label volume: it has negative values"):
        load_label_volume(whole, image)


def test_integer_labels_without_negatives_pass_unchanged():
    lab = _labels_array()
    np.testing.assert_array_equal(labels_from_volume(lab.astype(np.float32)), lab)
    with pytest.raises(ValueError, match="negative values"):
        labels_from_volume(np.array([0, -1, 2], np.int16), source="x.nii")


def test_training_pairs_are_checked_too(tmp_path, image):
    from napari_xaiclip.models.data import nifti_volumes

    ct = tmp_path / "ct.nii.gz"
    good = _save(tmp_path / "good.nii.gz", _labels_array(), IMAGE_AFFINE)
    ((_, vol, lab, _, _),) = list(nifti_volumes([ct], [good]))
    assert lab.dtype == np.uint8 and int((lab == 1).sum()) == 6 * 6 * 4
    moved = _save(tmp_path / "moved.nii.gz", _labels_array(), _moved([0.0, 200.0, 0.0]))
    with pytest.raises(ValueError, match="another grid"):
        list(nifti_volumes([ct], [moved]))


def test_xaiclip_gui_labels_are_checked_before_anything_opens(tmp_path, image):
    from napari_xaiclip.gui import open_volume

    moved = _save(tmp_path / "moved.nii.gz", _labels_array(), _moved([0.0, 0.0, 200.0]))
    with pytest.raises(ValueError, match="resample the labels"):
        open_volume(None, tmp_path / "ct.nii.gz", moved)  # refused before the viewer is touched
    with pytest.raises(ValueError, match="is not a label volume"):
        open_volume(None, tmp_path / "ct.nii.gz", tmp_path / "ct.nii.gz")


# --- the CLI --------------------------------------------------------------------------------
def test_cli_refuses_labels_on_another_grid(tmp_path, image, capsys):
    from napari_xaiclip.cli import main

    moved = _save(tmp_path / "moved.nii.gz", _labels_array(), _moved([200.0, 0.0, 0.0]))
    out = tmp_path / "out"
    code = main(["explain", str(tmp_path / "ct.nii.gz"), "--labels", str(moved), "--organ", "liver",
                 "--roi", "labels", "--mode", "traditional", "--model", "phantom", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "moved.nii.gz" in err[0] and RESAMPLE in err[0], err
    assert not out.exists() or not any(out.rglob("*"))


# --- the GUI --------------------------------------------------------------------------------
@pytest.fixture
def gui_scene(make_napari_viewer, tmp_path, image):
    from napari_xaiclip.widgets import RoiWidget

    viewer = make_napari_viewer()
    layer = viewer.add_image(image.data, name="CT", **layer_geometry(image))
    widget = RoiWidget(viewer)
    widget.tabs.setCurrentIndex(3)
    assert widget.source == "labels"
    return viewer, layer, widget


def _add_labels(viewer, widget, path):
    vol = load_volume(path)
    viewer.add_labels(np.rint(vol.data).astype(np.int32), name=path.stem, **layer_geometry(vol))
    widget.labels.set_layer(path.stem)


@pytest.mark.gui
def test_gui_refuses_a_labels_layer_on_another_grid(gui_scene, tmp_path, notifications):
    viewer, layer, widget = gui_scene
    _add_labels(viewer, widget, _save(tmp_path / "moved.nii.gz", _labels_array(), _moved([200.0, 0.0, 0.0])))
    widget.compute()
    assert any(RESAMPLE in n for n in notifications), notifications
    assert "ROI" not in viewer.layers


@pytest.mark.gui
def test_gui_refuses_label_zero_and_takes_a_matching_layer(gui_scene, tmp_path, notifications, qtbot):
    viewer, layer, widget = gui_scene
    _add_labels(viewer, widget, _save(tmp_path / "good.nii.gz", _labels_array(), IMAGE_AFFINE))
    widget.label_value.setCurrentIndex(-1)
    widget.label_value.setEditText("0")  # typed by hand: the list offers only the labels present
    widget.compute()
    assert any("label 0 is the background" in n for n in notifications), notifications
    assert "ROI" not in viewer.layers
    widget.label_value.setCurrentIndex(widget.label_value.findData(1))
    widget.compute()
    qtbot.waitUntil(lambda: not widget.run.running, timeout=60_000)
    assert "ROI" in viewer.layers and viewer.layers["ROI"].data.any()
