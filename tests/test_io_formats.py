"""DICOM (file and series folder), NRRD and MetaImage through ``load_volume``.

Every geometry test computes where each voxel lies in the patient (RAS mm) from the
file's own tags (DICOM: ImagePositionPatient, ImageOrientationPatient, PixelSpacing, in
LPS; ITK files: origin, direction, spacing, in LPS) and checks that the loaded Volume,
and the NIfTI saved from it, put that voxel's value exactly there.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from napari_xaiclip.io import load_volume, save_volume

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
SLOPE, INTERCEPT = 2.0, -1024.0


def _rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    a, b = np.radians(degrees_z), np.radians(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


#: (row direction, column direction) in LPS, as in ImageOrientationPatient.
ORIENTATIONS = {
    "axial": (np.array([1.0, 0, 0]), np.array([0, 1.0, 0])),
    "oblique": tuple(_rotation(17.0, 11.0)[:, :2].T),
    "rows-right-to-left": (np.array([-1.0, 0, 0]), np.array([0, 1.0, 0])),  # normal points feet-wards
}


def _ds_number(v: float) -> str:
    return f"{v:.6f}"[:16]


def _write(ds: Dataset, path: Path) -> None:
    try:
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    except TypeError:  # pydicom 2.x
        ds.save_as(str(path), write_like_original=False)


def _slice_dataset(stored: np.ndarray, ipp, iop, pixel_spacing, series_uid, study_uid, number,
                   description="test series", modality="CT", slope=SLOPE, intercept=INTERCEPT) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CT_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.PatientName = "Test^Phantom"
    ds.PatientID = "xaiclip"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [_ds_number(v) for v in ipp]
    ds.ImageOrientationPatient = [_ds_number(v) for v in iop]
    ds.PixelSpacing = [_ds_number(v) for v in pixel_spacing]
    ds.SliceThickness = "2.5"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope = _ds_number(slope)
    ds.RescaleIntercept = _ds_number(intercept)
    ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(stored.astype("<i2")).tobytes()
    return ds


def write_series(folder: Path, orientation: str = "oblique", shape=(4, 3, 5), spacing=(2.5, 0.7, 0.9),
                 origin=(12.5, -30.25, 41.0), description="test series", seed=0, positions=None,
                 series_uid=None, prefix="img", slope=SLOPE, intercept=INTERCEPT):
    """A DICOM series of ``shape`` (slices, rows, columns), one file per slice, named out of order.

    ``spacing`` = (between slices, between rows, between columns) mm. Returns the folder, the
    world RAS positions (N, 3) and HU values (N,) of every voxel, computed from the tags written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    row, col = ORIENTATIONS[orientation]
    normal = np.cross(row, col)
    n, rows, cols = shape
    rng = np.random.default_rng(seed)
    stored = rng.permutation(n * rows * cols).reshape(shape).astype(np.int16) - 20  # distinct values
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    worlds, values = [], []
    order = rng.permutation(n)  # file names do not follow the slice order
    for k in range(n):
        ipp = np.asarray(origin) + k * spacing[0] * normal if positions is None else np.asarray(positions[k])
        iop = np.concatenate([row, col])
        ds = _slice_dataset(stored[k], ipp, iop, (spacing[1], spacing[2]), series_uid, study_uid,
                            number=k + 1, description=description, slope=slope, intercept=intercept)
        _write(ds, folder / f"{prefix}{order[k]:03d}.dcm")
        # independently of the reader: world position of pixel (row r, column c) from the written tags
        ipp_t = np.array([float(v) for v in ds.ImagePositionPatient])
        iop_t = np.array([float(v) for v in ds.ImageOrientationPatient])
        dr, dc = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        lps = ipp_t + c[..., None] * dc * iop_t[:3] + r[..., None] * dr * iop_t[3:]
        worlds.append((lps * LPS_TO_RAS).reshape(-1, 3))
        values.append(stored[k].reshape(-1) * slope + intercept)
    return folder, np.concatenate(worlds), np.concatenate(values), series_uid


def assert_lands(data: np.ndarray, affine: np.ndarray, worlds: np.ndarray, values: np.ndarray) -> None:
    """Each world point is a voxel centre of ``data`` under ``affine`` holding its value; all voxels covered."""
    ijk = (np.linalg.inv(affine) @ np.c_[worlds, np.ones(len(worlds))].T)[:3].T
    idx = np.rint(ijk).astype(int)
    np.testing.assert_allclose(ijk, idx, atol=1e-3)
    assert np.all(idx >= 0) and np.all(idx < np.asarray(data.shape))
    assert len({tuple(i) for i in idx}) == len(idx) == data.size  # one-to-one onto the array
    np.testing.assert_array_equal(data[tuple(idx.T)], values)


# --------------------------------------------------------------------------- (a) DICOM series


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_dicom_series_puts_every_voxel_at_its_world_position_in_hu(tmp_path, orientation):
    folder, worlds, values, _ = write_series(tmp_path / "series", orientation)
    vol = load_volume(folder)
    assert vol.data.dtype == np.float32 and sorted(vol.shape) == [3, 4, 5]
    assert vol.description == "DICOM CT test series"
    assert vol.header is None and vol.source_shape == (5, 3, 4)  # ITK index order (columns, rows, slices)
    assert_lands(vol.data, vol.affine, worlds, values)
    # display order: axis 0 superior -> inferior, axis 1 anterior -> posterior, axis 2 right -> left
    directions = vol.affine[:3, :3]
    assert directions[2, 0] < 0 and directions[1, 1] < 0 and directions[0, 2] < 0
    if orientation != "oblique":
        assert vol.spacing == pytest.approx((2.5, 0.7, 0.9))


def test_dicom_ct_values_are_hu_like_pydicom(tmp_path):
    folder, *_ = write_series(tmp_path / "s", "axial")
    vol = load_volume(folder)
    expected = []
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        assert float(ds.RescaleSlope) == SLOPE and float(ds.RescaleIntercept) == INTERCEPT
        expected.append(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    np.testing.assert_array_equal(np.sort(vol.data, axis=None), np.sort(np.concatenate(expected), axis=None))


@pytest.mark.parametrize("slope, intercept, kept", [(1.0, -1024.0, np.int16), (0.5, -1024.0, np.float32)])
def test_dicom_voxels_stay_integers_when_the_rescale_keeps_them_whole(tmp_path, slope, intercept, kept):
    """RescaleSlope 1 with a whole intercept: int16 HU (half the memory of float32), same values."""
    folder, worlds, values, _ = write_series(tmp_path / "s", "oblique", slope=slope, intercept=intercept)
    vol = load_volume(folder)
    assert vol.data.dtype == kept
    assert_lands(vol.data, vol.affine, worlds, values)


@pytest.mark.parametrize("dtype, kept", [(np.int16, np.int16), (np.uint8, np.uint8), (np.float64, np.float32)])
def test_nrrd_voxels_keep_their_type_or_become_float32(tmp_path, dtype, kept):
    array = (np.arange(60).reshape(3, 4, 5) - 7).astype(dtype) if dtype != np.uint8 else \
        np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "scan.nrrd"))
    vol = load_volume(tmp_path / "scan.nrrd")
    assert vol.data.dtype == kept
    np.testing.assert_array_equal(np.sort(vol.data, axis=None), np.sort(array, axis=None))


def test_single_dicom_slice_file(tmp_path):
    folder, worlds, values, _ = write_series(tmp_path / "s", "oblique", shape=(1, 3, 5))
    (path,) = folder.iterdir()
    vol = load_volume(path)
    assert sorted(vol.shape) == [1, 3, 5]
    assert_lands(vol.data, vol.affine, worlds, values)


# --------------------------------------------------------------------------- (b) NRRD, MetaImage


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".mha", ".mhd"])
def test_itk_files_with_oblique_direction(tmp_path, suffix):
    rng = np.random.default_rng(3)
    array = rng.permutation(4 * 3 * 5).reshape(4, 3, 5).astype(np.float32) - 7  # (k, j, i)
    img = sitk.GetImageFromArray(array)
    direction = _rotation(-23.0, 31.0) @ np.diag([1.0, -1.0, 1.0])  # improper: a flipped axis too
    img.SetDirection(direction.ravel().tolist())
    img.SetSpacing((0.9, 0.7, 2.5))
    img.SetOrigin((-5.0, 20.0, 13.0))
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(img, str(path))
    k, j, i = np.meshgrid(*(np.arange(s) for s in array.shape), indexing="ij")
    ijk = np.stack([i, j, k], -1).reshape(-1, 3) * np.array([0.9, 0.7, 2.5])
    lps = np.array([-5.0, 20.0, 13.0]) + ijk @ direction.T
    vol = load_volume(path)
    assert_lands(vol.data, vol.affine, lps * LPS_TO_RAS, array.reshape(-1))
    assert vol.description == ""


# --------------------------------------------------------------------------- (c) saving back as NIfTI


@pytest.mark.parametrize("orientation", ["oblique", "rows-right-to-left"])
def test_saved_nifti_overlays_the_dicom_voxel_for_voxel(tmp_path, orientation):
    folder, worlds, values, _ = write_series(tmp_path / "s", orientation)
    vol = load_volume(folder)
    out = tmp_path / "derived.nii.gz"
    save_volume(out, vol.data, like=vol)
    img = nib.load(out)
    assert img.shape == vol.source_shape
    assert img.header.get_qform(coded=True)[1] == 1 and img.header.get_sform(coded=True)[1] == 1
    assert_lands(np.asarray(img.dataobj), img.affine, worlds, values)
    assert img.header["descrip"].item().decode().startswith("DICOM CT")
    back = load_volume(out)  # and reads back as the same display volume
    np.testing.assert_array_equal(back.data, vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


def test_saved_nifti_overlays_an_nrrd(tmp_path):
    array = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    img = sitk.GetImageFromArray(array)
    direction = _rotation(40.0, -15.0)
    img.SetDirection(direction.ravel().tolist())
    img.SetSpacing((1.5, 0.5, 3.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(img, str(tmp_path / "a.nrrd"))
    vol = load_volume(tmp_path / "a.nrrd")
    save_volume(tmp_path / "a.nii.gz", vol.data, like=vol)
    k, j, i = np.meshgrid(*(np.arange(s) for s in array.shape), indexing="ij")
    lps = np.array([1.0, 2.0, 3.0]) + (np.stack([i, j, k], -1).reshape(-1, 3) * [1.5, 0.5, 3.0]) @ direction.T
    saved = nib.load(tmp_path / "a.nii.gz")
    assert_lands(np.asarray(saved.dataobj), saved.affine, lps * LPS_TO_RAS, array.reshape(-1))


# --------------------------------------------------------------------------- (d) several series


def test_folder_with_two_series_lists_them_and_series_picks_one(tmp_path):
    folder = tmp_path / "two"
    _, w1, v1, uid1 = write_series(folder, "axial", description="arterial", prefix="a")
    _, w2, v2, uid2 = write_series(folder, "oblique", shape=(3, 3, 5), description="venous", seed=1, prefix="b")
    with pytest.raises(ValueError) as info:
        load_volume(folder)
    message = str(info.value)
    assert "\n" not in message and "2 DICOM series" in message
    assert uid1 in message and uid2 in message and "'arterial', 4 slices" in message
    assert "'venous', 3 slices" in message
    vol = load_volume(folder, series=uid2)
    assert vol.description == "DICOM CT venous"
    assert_lands(vol.data, vol.affine, w2, v2)
    assert_lands(load_volume(folder, series=uid1).data, load_volume(folder, series=uid1).affine, w1, v1)
    with pytest.raises(ValueError, match="no DICOM series '1.2.3'"):
        load_volume(folder, series="1.2.3")


# --------------------------------------------------------------------------- (e) real DICOM files


def test_pydicom_ct_small_loads_in_hu_at_its_position():
    path = get_testdata_file("CT_small.dcm")
    vol = load_volume(path)
    assert vol.shape == (1, 128, 128)
    assert vol.data.min() == pytest.approx(-896, abs=1) and vol.description.startswith("DICOM CT")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
    lps = np.array([float(v) for v in ds.ImagePositionPatient]) + c[..., None] * dc * iop[:3] \
        + r[..., None] * dr * iop[3:]
    assert_lands(vol.data, vol.affine, (lps * LPS_TO_RAS).reshape(-1, 3), hu.reshape(-1))


def test_pydicom_mr_small_loads():
    vol = load_volume(get_testdata_file("MR_small.dcm"))
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert vol.shape == (1, 64, 64) and vol.description.startswith("DICOM MR")
    np.testing.assert_array_equal(np.sort(vol.data, axis=None), np.sort(ds.pixel_array, axis=None))


# --------------------------------------------------------------------------- (f) refusals


def _no_pixels(tmp_path):
    ds = _slice_dataset(np.zeros((2, 2), np.int16), (0, 0, 0), (1, 0, 0, 0, 1, 0), (1, 1), generate_uid(),
                        generate_uid(), 1, modality="SR")
    for name in ("PixelData", "Rows", "Columns"):
        delattr(ds, name)
    path = tmp_path / "report.dcm"
    _write(ds, path)
    return path


BAD = {
    "empty folder": (lambda t: (t / "empty").mkdir() or t / "empty", "is a directory with no DICOM files"),
    "text named .dcm": (lambda t: (t / "x.dcm").write_text("hello, not DICOM\n" * 20) and t / "x.dcm",
                        "not a DICOM file"),
    "no pixel data": (_no_pixels, "holds no pixel data"),
    "folder of SR only": (lambda t: _no_pixels(t) and t, "holds no pixel data"),
    "RTSTRUCT": (lambda t: Path(get_testdata_file("rtstruct.dcm")), "DICOM RTSTRUCT"),
    "SEG": (lambda t: Path(get_testdata_file("liver_1frame.dcm")), "segmentation (DICOM SEG)"),
    "RTDOSE": (lambda t: Path(get_testdata_file("rtdose.dcm")), "RT dose grid"),
    "colour": (lambda t: Path(get_testdata_file("SC_rgb_jpeg.dcm")), "colour DICOM"),
    "12-bit JPEG": (lambda t: Path(get_testdata_file("JPEG-lossy.dcm")), "JPEG Extended (Process 2 and 4)"),
    "corrupt nrrd": (lambda t: (t / "b.nrrd").write_text("NRRD0004\ngarbage\n") and t / "b.nrrd",
                     "not a readable NRRD"),
    "missing slice": (lambda t: write_series(t / "gap", "axial", shape=(4, 3, 5), positions=[
        (0, 0, 0), (0, 0, 2.5), (0, 0, 5.0), (0, 0, 10.0)])[0], "not evenly spaced"),
    "two phases in one series": (lambda t: write_series(t / "dup", "axial", shape=(4, 3, 5), positions=[
        (0, 0, 0), (0, 0, 2.5), (0, 0, 0), (0, 0, 2.5)])[0], "share one position"),
    "gantry tilt": (lambda t: write_series(t / "tilt", "axial", shape=(3, 3, 5), positions=[
        (0, 0, 0), (0, 1.0, 2.5), (0, 2.0, 5.0)])[0], "offset sideways"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_unsupported_inputs_are_one_line_value_errors(tmp_path, name):
    make, fragment = BAD[name]
    path = make(tmp_path)
    with pytest.raises(ValueError) as info:
        load_volume(path)
    message = str(info.value)
    assert fragment in message and "\n" not in message and str(path) in message


def test_series_argument_only_for_dicom_folders(tmp_path):
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    nib.save(img, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match="series="):
        load_volume(tmp_path / "a.nii.gz", series="1.2.3")


# --------------------------------------------------------------------------- napari reader hook, CLI


def test_reader_hook_takes_new_formats_and_dicom_folders(tmp_path):
    from napari_xaiclip._reader import get_reader
    from napari_xaiclip.io import layer_geometry

    folder, *_ = write_series(tmp_path / "ct_series", "oblique")
    reader = get_reader(str(folder))
    assert reader is not None and get_reader([str(folder)]) is reader
    (data, kwargs, kind), = reader(str(folder))
    vol = load_volume(folder)
    assert kind == "image" and kwargs["name"] == "ct_series" and kwargs["contrast_limits"] == (-160.0, 240.0)
    np.testing.assert_array_equal(data, vol.data)
    geometry = layer_geometry(vol)
    assert kwargs["scale"] == geometry["scale"] and kwargs["translate"] == geometry["translate"]
    for name in ("a.nrrd", "a.nhdr", "a.mha", "a.mhd", "a.dcm", "a.nii.gz"):
        assert get_reader(str(tmp_path / name)) is not None
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("x")
    assert get_reader(str(tmp_path / "plain")) is None
    assert get_reader(str(tmp_path / "a.png")) is None


def test_cli_explains_a_dicom_series_and_the_heatmap_overlays_it(tmp_path, capsys):
    from napari_xaiclip.cli import main

    folder, worlds, values, _ = write_series(tmp_path / "series", "oblique", shape=(3, 64, 64),
                                             spacing=(3.0, 0.8, 0.8))
    out = tmp_path / "out"
    code = main(["explain", str(folder), "--slice", "1", "--box", "8", "8", "56", "56", "--roi", "none",
                 "--mode", "traditional", "--model", "phantom", "--param", "occlusion.window=64",
                 "--param", "occlusion.stride=64", "--no-curves", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    heat = nib.load(out / "occlusion-traditional.nii.gz")
    assert heat.shape == (64, 64, 3)
    # the heatmap's voxels are the series' voxels: every DICOM voxel centre is a heatmap voxel centre
    ijk = (np.linalg.inv(heat.affine) @ np.c_[worlds, np.ones(len(worlds))].T)[:3].T
    np.testing.assert_allclose(ijk, np.rint(ijk), atol=1e-3)
    # and it is non-zero only on the DICOM slice that the display's slice 1 shows
    vol = load_volume(folder)
    shown = (np.linalg.inv(vol.affine) @ np.c_[worlds, np.ones(len(worlds))].T)[0]
    on_slice = np.isclose(shown, 1.0)
    heat_at = np.asarray(heat.dataobj)[tuple(np.rint(ijk).astype(int).T)]
    assert np.any(heat_at[on_slice] != 0) and not np.any(heat_at[~on_slice])


# --------------------------------------------------------------------------- enhanced multi-frame DICOM

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def write_enhanced(path: Path, orientation="oblique", shape=(4, 3, 5), spacing=(2.5, 0.7, 0.9),
                   origin=(12.5, -30.25, 41.0), reverse=False, steps=None, per_frame=True):
    """An Enhanced CT file: shared orientation, spacing and rescale; a position per frame.

    Returns the world RAS positions and HU values of every voxel, computed from the tags.
    """
    from pydicom.sequence import Sequence

    row, col = ORIENTATIONS[orientation]
    normal = np.cross(row, col)
    n, rows, cols = shape
    stored = np.random.default_rng(0).permutation(n * rows * cols).reshape(shape).astype(np.int16) - 20
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENHANCED_CT
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_CT, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.SeriesDescription = "CT", "enhanced"
    ds.NumberOfFrames, ds.Rows, ds.Columns = n, rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    orientation_item, measures, transform = Dataset(), Dataset(), Dataset()
    orientation_item.ImageOrientationPatient = [_ds_number(v) for v in np.concatenate([row, col])]
    measures.PixelSpacing = [_ds_number(spacing[1]), _ds_number(spacing[2])]
    measures.SliceThickness = "2.5"
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = _ds_number(SLOPE), \
        _ds_number(INTERCEPT), "HU"
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([orientation_item])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    offsets = np.arange(n) * spacing[0] if steps is None else np.asarray(steps, float)
    iop = np.array([float(v) for v in orientation_item.ImageOrientationPatient])
    dr, dc = (float(v) for v in measures.PixelSpacing)
    frames, groups, worlds, values = [], [], [], []
    for k in (range(n - 1, -1, -1) if reverse else range(n)):
        position = Dataset()
        position.ImagePositionPatient = [_ds_number(v) for v in np.asarray(origin) + offsets[k] * normal]
        group = Dataset()
        group.PlanePositionSequence = Sequence([position])
        groups.append(group)
        frames.append(stored[k])
        ipp = np.array([float(v) for v in position.ImagePositionPatient])
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        lps = ipp + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]
        worlds.append((lps * LPS_TO_RAS).reshape(-1, 3))
        values.append(stored[k].reshape(-1) * SLOPE + INTERCEPT)
    if per_frame:
        ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    ds.PixelData = np.ascontiguousarray(np.stack(frames)).astype("<i2").tobytes()
    _write(ds, path)
    return np.concatenate(worlds), np.concatenate(values)


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
@pytest.mark.parametrize("reverse", [False, True], ids=["frames-ascending", "frames-descending"])
def test_enhanced_multiframe_ct_lands_in_hu(tmp_path, orientation, reverse):
    path = tmp_path / "enhanced.dcm"
    worlds, values = write_enhanced(path, orientation, reverse=reverse)
    vol = load_volume(path)
    assert vol.description == "DICOM CT enhanced" and sorted(vol.shape) == [3, 4, 5]
    assert_lands(vol.data, vol.affine, worlds, values)
    save_volume(tmp_path / "out.nii.gz", vol.data, like=vol)
    saved = nib.load(tmp_path / "out.nii.gz")
    assert_lands(np.asarray(saved.dataobj), saved.affine, worlds, values)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"steps": [0.0, 2.5, 5.0, 10.0]}, "not evenly spaced"),
    ({"per_frame": False}, "without per-frame positions"),
], ids=["uneven-frames", "no-per-frame-groups"])
def test_enhanced_multiframe_with_unknown_geometry_is_refused(tmp_path, kwargs, fragment):
    path = tmp_path / "enhanced.dcm"
    write_enhanced(path, "axial", **kwargs)
    with pytest.raises(ValueError, match=fragment):
        load_volume(path)
