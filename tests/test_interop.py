"""Layers opened by other readers save aligned with their scan, or are refused when nothing is known."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_xaiclip._writer import write_image, write_labels
from napari_xaiclip.layer_geometry import GeometryUnknown, layer_ras_affine

# A RAS file, 0.8 x 0.8 x 2.5 mm, origin (-150, -120, 40): what a napari-nifti layer carries as `affine`
SOURCE_AFFINE = np.array([[0.8, 0.0, 0.0, -150.0], [0.0, 0.8, 0.0, -120.0],
                          [0.0, 0.0, 2.5, 40.0], [0.0, 0.0, 0.0, 1.0]])


def _labels_in_file_order(shape=(6, 7, 5)):
    rng = np.random.default_rng(3)
    return rng.integers(0, 4, size=shape).astype(np.uint8)


def _napari_state(layer_type: str, data, **transform):
    """The (data, meta) a napari writer hook receives for a layer built with ``transform``."""
    import napari.layers

    layer = getattr(napari.layers, layer_type)(data, name="from another reader", **transform)
    data, meta, _ = layer.as_layer_data_tuple()
    return data, meta


def test_labels_from_a_nifti_reader_with_a_layer_affine_save_onto_the_source_grid(tmp_path):
    labels = _labels_in_file_order()
    data, meta = _napari_state("Labels", labels, affine=SOURCE_AFFINE)
    assert "xaiclip_geometry" not in (meta.get("metadata") or {})
    path = str(tmp_path / "seg.nii.gz")
    write_labels(path, data, meta)
    back = nib.load(path)
    # read back independently: same RAS axes, spacing, origin and voxels
    assert nib.aff2axcodes(back.affine) == ("R", "A", "S")
    np.testing.assert_allclose(back.affine, SOURCE_AFFINE, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels)


def test_rotated_scaled_translated_layer_maps_each_voxel_to_the_world_point_napari_shows(tmp_path):
    import napari.layers

    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    transform = {"scale": (2.0, 0.5, 0.7), "translate": (3.0, -4.0, 5.0), "rotate": 30}
    layer = napari.layers.Image(data, **transform)
    layer.rotate = _rotation_x(25.0)
    data, meta, _ = layer.as_layer_data_tuple()
    path = str(tmp_path / "img.nii.gz")
    write_image(path, data, meta)
    back = nib.load(path)
    for voxel in ([0, 0, 0], [3, 4, 5], [1, 2, 3]):
        world = layer.data_to_world(voxel)
        np.testing.assert_allclose(nib.affines.apply_affine(back.affine, voxel), world, atol=1e-6)


def _rotation_x(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])


def test_a_layer_with_no_transform_is_refused_not_written_at_the_scanner_origin(tmp_path):
    data, meta = _napari_state("Labels", _labels_in_file_order())
    path = tmp_path / "seg.nii.gz"
    with pytest.raises(GeometryUnknown, match="no patient geometry"):
        write_labels(str(path), data, meta)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_scale_and_translate_alone_follow_the_display_convention():
    from napari_xaiclip.io import display_affine

    affine = layer_ras_affine(scale=(2.5, 0.8, 0.8), translate=(10.0, 20.0, 30.0))
    np.testing.assert_allclose(affine, display_affine((2.5, 0.8, 0.8), (10.0, 20.0, 30.0)))
    assert nib.aff2axcodes(affine) == ("I", "P", "L")
    assert layer_ras_affine() is None


def test_a_layer_read_from_nrrd_saves_as_nrrd_in_the_source_grid(tmp_path):
    import SimpleITK as sitk

    from napari_xaiclip._reader import read_volume

    array = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)  # (k, j, i)
    src = sitk.GetImageFromArray(array)
    src.SetSpacing((0.8, 0.9, 2.5))
    src.SetOrigin((-150.0, -120.0, 40.0))
    src.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # rows and columns swapped, one flipped
    sitk.WriteImage(src, str(tmp_path / "scan.nrrd"))
    data, kwargs, _ = read_volume(str(tmp_path / "scan.nrrd"))[0]
    mask = (data > data.mean()).astype(np.uint8)
    data_l, meta = _napari_state("Labels", mask, **{k: kwargs[k] for k in ("scale", "translate", "metadata")})
    write_labels(str(tmp_path / "mask.nrrd"), data_l, meta)
    back = sitk.ReadImage(str(tmp_path / "mask.nrrd"))
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(back, get)(), getattr(src, get)(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), (array > array.mean()).astype(np.uint8))
