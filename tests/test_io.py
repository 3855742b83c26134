"""Tests of napari_xaiclip.io: NIfTI reading into napari order, writing back into the source geometry.

Expected values are computed independently of the module: the reoriented array with
nibabel.orientations, world coordinates through the source file's own affine, voxel
sizes from how the affines are built, files read back with nibabel directly.
"""

from __future__ import annotations

import doctest
import importlib
import json
import os

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as ornt

from napari_xaiclip.io import (
    Volume,
    layer_geometry,
    load_volume,
    save_volume,
    volume_from_layer_metadata,
)

DISPLAY = ("I", "P", "L")


# --------------------------------------------------------------------------- helpers


def _rotation(axis: int, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affine(linear: np.ndarray, offset) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = offset
    return a


# Source geometries: (affine, expected (z, y, x) spacing of the display volume).
# Oblique LPS: voxel axis 0 towards -x (L) 0.7 mm, axis 1 towards -y (P) 0.9 mm,
# axis 2 towards +z (S) 3.0 mm, rotated by a few degrees about two axes.
OBLIQUE_LPS = _affine(_rotation(2, 7.0) @ _rotation(0, 4.0) @ np.diag([-0.7, -0.9, 3.0]),
                      [10.0, -20.0, 30.0])
PLAIN_RAS = _affine(np.diag([1.5, 0.8, 2.5]), [-100.0, 50.0, 7.0])
# A file stored with permuted axes: axis 0 -> A (1.1 mm), axis 1 -> S (2.0 mm), axis 2 -> R (0.6 mm).
PERMUTED_ASR = _affine(np.array([[0.0, 0.0, 0.6], [1.1, 0.0, 0.0], [0.0, 2.0, 0.0]]), [3.0, 4.0, 5.0])

GEOMETRIES = {
    "oblique-lps": (OBLIQUE_LPS, (3.0, 0.9, 0.7)),
    "plain-ras": (PLAIN_RAS, (2.5, 0.8, 1.5)),
    "permuted-asr": (PERMUTED_ASR, (2.0, 1.1, 0.6)),
}

SHAPE = (5, 6, 7)


def _distinct(shape=SHAPE) -> np.ndarray:
    """Every voxel a different value, so a value identifies its source index."""
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) + 1.0


def _write(path, array, affine, **header_items):
    img = nib.Nifti1Image(array, affine)
    for key, value in header_items.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


def _expected_display(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(DISPLAY))
    return ornt.apply_orientation(array, transform)


def _homog(idx: np.ndarray) -> np.ndarray:
    return np.c_[idx, np.ones(len(idx))]


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_load_reorients_voxel_for_voxel(tmp_path, name, suffix):
    affine, _ = GEOMETRIES[name]
    arr = _distinct()
    path = _write(tmp_path / f"scan{suffix}", arr, affine)
    vol = load_volume(path)

    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, _expected_display(arr, affine))
    assert ornt.aff2axcodes(vol.affine) == DISPLAY
    assert vol.path == str(path)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_load_affine_maps_every_voxel_to_its_source_world_position(tmp_path, name):
    affine, _ = GEOMETRIES[name]
    arr = _distinct()
    path = _write(tmp_path / "scan.nii.gz", arr, affine)
    file_affine = nib.load(str(path)).affine  # what the file holds (float32 sform)
    vol = load_volume(path)

    display_idx = np.argwhere(np.ones(vol.data.shape, bool))
    values = vol.data[tuple(display_idx.T)]
    # the value tells which source voxel this is (independent of any orientation code)
    source_idx = np.array(np.unravel_index(values.astype(np.int64) - 1, arr.shape)).T
    world_from_display = _homog(display_idx) @ vol.affine.T
    world_from_source = _homog(source_idx) @ file_affine.T
    np.testing.assert_allclose(world_from_display, world_from_source, atol=1e-5)

    # a few voxels picked by value, spelled out
    for ijk in [(0, 0, 0), (4, 5, 6), (2, 3, 1)]:
        value = arr[ijk]
        zyx = np.argwhere(vol.data == value)
        assert zyx.shape == (1, 3)
        np.testing.assert_allclose(vol.affine @ np.append(zyx[0], 1.0),
                                   file_affine @ np.append(ijk, 1.0), atol=1e-5)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_load_spacing_is_voxel_size_along_display_axes(tmp_path, name):
    affine, expected = GEOMETRIES[name]
    vol = load_volume(_write(tmp_path / "scan.nii", _distinct(), affine))
    assert vol.spacing == pytest.approx(expected, rel=1e-6)
    assert vol.shape == vol.data.shape


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_save_like_writes_back_into_source_layout_and_affine(tmp_path, name, suffix):
    affine, _ = GEOMETRIES[name]
    arr = _distinct()
    src_path = _write(tmp_path / f"scan{suffix}", arr, affine)
    source = nib.load(str(src_path))
    vol = load_volume(src_path)

    out_path = tmp_path / f"heat{suffix}"
    save_volume(out_path, vol.data * 2, like=vol)
    out = nib.load(str(out_path))

    assert out.shape == arr.shape
    np.testing.assert_array_equal(out.get_fdata(), 2.0 * arr)
    assert np.array_equal(out.affine, source.affine)
    assert out.get_data_dtype() == np.float32
    for code in ("qform_code", "sform_code"):
        assert int(out.header[code]) == int(source.header[code])
    # and it comes back identical through load_volume
    again = load_volume(out_path)
    np.testing.assert_array_equal(again.data, vol.data * 2)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-6)


@pytest.mark.parametrize("form", ["qform-only", "sform-only", "both"])
def test_save_keeps_affine_whichever_header_form_defines_it(tmp_path, form):
    arr = _distinct()
    img = nib.Nifti1Image(arr, None)
    if form in ("qform-only", "both"):
        img.header.set_qform(OBLIQUE_LPS, code=1)
    if form in ("sform-only", "both"):
        img.header.set_sform(OBLIQUE_LPS, code=4 if form == "both" else 2)
    nib.save(img, str(tmp_path / "src.nii"))
    source = nib.load(str(tmp_path / "src.nii"))
    np.testing.assert_allclose(source.affine, OBLIQUE_LPS, atol=1e-5)

    vol = load_volume(tmp_path / "src.nii")
    save_volume(tmp_path / "out.nii", vol.data + 1, like=vol)
    out = nib.load(str(tmp_path / "out.nii"))
    assert np.array_equal(out.affine, source.affine)
    np.testing.assert_array_equal(out.get_fdata(), arr + 1)


def test_save_like_nifti2_source_keeps_affine_exactly(tmp_path):
    arr = _distinct()
    nib.save(nib.Nifti2Image(arr, OBLIQUE_LPS), str(tmp_path / "src.nii"))
    source = nib.load(str(tmp_path / "src.nii"))
    vol = load_volume(tmp_path / "src.nii")
    save_volume(tmp_path / "out.nii", vol.data, like=vol)
    out = nib.load(str(tmp_path / "out.nii"))
    np.testing.assert_array_equal(out.get_fdata(), arr)
    assert np.array_equal(out.affine, source.affine)


def test_load_applies_scl_slope_and_inter(tmp_path):
    raw = (np.arange(60).reshape(3, 4, 5) * 10).astype(np.int16)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(tmp_path / "ct.nii"))
    on_disk = nib.load(str(tmp_path / "ct.nii"))
    assert (on_disk.dataobj.slope, on_disk.dataobj.inter) == (2.0, -1024.0)  # the file really is scaled

    vol = load_volume(tmp_path / "ct.nii")
    hu = raw.astype(np.float64) * 2.0 - 1024.0
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, _expected_display(hu, np.eye(4)))
    assert vol.data.min() == -1024.0 and vol.data.max() == 590 * 2 - 1024

    # writing back: the HU values land unscaled-by-the-old-slope (slope 1, inter 0)
    save_volume(tmp_path / "out.nii", vol.data, like=vol)
    out = nib.load(str(tmp_path / "out.nii"))
    assert (out.dataobj.slope, out.dataobj.inter) == (1.0, 0.0)
    np.testing.assert_array_equal(out.get_fdata(), hu)


def _scaled_int_file(path, raw, slope, inter):
    img = nib.Nifti1Image(raw, np.eye(4), dtype=raw.dtype)
    img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))


@pytest.mark.parametrize("raw_dtype, values, inter, kept", [
    (np.int16, (-1024, 3071), 0.0, np.int16),        # HU stored as they are
    (np.uint16, (0, 4095), -1024.0, np.int16),       # unsigned + intercept: the HU fit int16
    (np.int16, (-1024, 32000), 1000.0, np.int32),    # shifted past int16: the next type that holds it
    (np.uint8, (0, 255), 0.0, np.uint8),
])
def test_integer_voxels_keep_an_exact_integer_type(tmp_path, raw_dtype, values, inter, kept):
    raw = np.linspace(*values, 60).round().astype(raw_dtype).reshape(3, 4, 5)
    _scaled_int_file(tmp_path / "ct.nii", raw, 1.0, inter)
    vol = load_volume(tmp_path / "ct.nii")
    assert vol.data.dtype == kept
    np.testing.assert_array_equal(vol.data, _expected_display(raw.astype(np.float64) + inter, np.eye(4)))


@pytest.mark.parametrize("raw_dtype, slope, inter", [(np.int16, 2.0, -1024.0), (np.int16, 1.0, 0.5),
                                                     (np.float64, 1.0, 0.0), (np.int64, 1.0, 0.0)])
def test_fractional_scaling_and_wide_types_load_as_float32(tmp_path, raw_dtype, slope, inter):
    raw = np.arange(60, dtype=raw_dtype).reshape(3, 4, 5)
    _scaled_int_file(tmp_path / "ct.nii", raw, slope, inter)
    vol = load_volume(tmp_path / "ct.nii")
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, _expected_display(raw * slope + inter, np.eye(4)))


@pytest.mark.parametrize("affine", ["PLAIN_RAS", "OBLIQUE_LPS"])
def test_the_display_volume_is_a_view_of_the_one_array_read(tmp_path, affine):
    """Reorientation costs no second copy: the display array shares the memory of what was read."""
    raw = _distinct().astype(np.int16)
    _write(tmp_path / "ct.nii.gz", raw, globals()[affine])
    vol = load_volume(tmp_path / "ct.nii.gz")
    assert vol.data.base is not None, "the display volume is a fresh copy, not a view of what was read"
    base = vol.data.base
    while getattr(base, "base", None) is not None:
        base = base.base
    assert np.asarray(base).nbytes == raw.nbytes and vol.data.dtype == np.int16


def test_4d_integer_file_keeps_only_its_first_volume(tmp_path):
    arr4 = np.stack([_distinct().astype(np.int16) * (t + 1) for t in range(3)], axis=-1)
    _scaled_int_file(tmp_path / "fmri.nii", arr4, 1.0, -5.0)
    with pytest.warns(UserWarning, match="3 time points"):
        vol = load_volume(tmp_path / "fmri.nii")
    assert vol.data.dtype == np.int16
    np.testing.assert_array_equal(vol.data, _expected_display(arr4[..., 0] - 5.0, np.eye(4)))
    base = vol.data
    while base.base is not None:
        base = base.base
    assert base.nbytes == arr4[..., 0].nbytes   # the other time points are not kept alive


def test_load_4d_time_series_gives_first_volume_with_warning(tmp_path):
    arr4 = np.stack([_distinct() * (t + 1) for t in range(3)], axis=-1)
    _write(tmp_path / "fmri.nii.gz", arr4, OBLIQUE_LPS)
    with pytest.warns(UserWarning, match="3 time points"):
        vol = load_volume(tmp_path / "fmri.nii.gz")
    np.testing.assert_array_equal(vol.data, _expected_display(arr4[..., 0], OBLIQUE_LPS))

    # saving against it gives a 3D file in the source geometry, intent cleared
    save_volume(tmp_path / "out.nii.gz", vol.data * 3, like=vol)
    out = nib.load(str(tmp_path / "out.nii.gz"))
    assert out.shape == SHAPE
    np.testing.assert_array_equal(out.get_fdata(), 3 * arr4[..., 0])
    assert np.array_equal(out.affine, nib.load(str(tmp_path / "fmri.nii.gz")).affine)
    assert out.header.get_intent()[0] == "none"


def test_load_5d_with_trailing_singletons_is_3d(tmp_path):
    arr = _distinct()
    _write(tmp_path / "s.nii", arr[..., None, None], PLAIN_RAS)
    vol = load_volume(tmp_path / "s.nii")
    np.testing.assert_array_equal(vol.data, _expected_display(arr, PLAIN_RAS))


def test_load_2d_file_gives_one_slice_volume(tmp_path):
    arr2 = _distinct((4, 5))
    _write(tmp_path / "xray.nii", arr2, PLAIN_RAS)
    vol = load_volume(tmp_path / "xray.nii")
    assert vol.data.shape == (1, 5, 4)
    np.testing.assert_array_equal(vol.data, _expected_display(arr2[:, :, None], PLAIN_RAS))


# --------------------------------------------------------------------------- load errors


def _missing(d):
    return d / "missing.nii.gz"


def _wrong_suffix(d):
    p = d / "scan.img"
    nib.save(nib.Nifti1Image(_distinct(), np.eye(4)), str(d / "tmp.nii"))
    os.replace(d / "tmp.nii", p)
    return p


def _text_named_nii(d):
    p = d / "notes.nii"
    p.write_text("this is not an image\n" * 20)
    return p


def _empty_file(d):
    p = d / "empty.nii"
    p.write_bytes(b"")
    return p


def _directory(d):
    p = d / "folder.nii"
    p.mkdir()
    return p


def _truncated_gz(d):
    full = d / "full.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32),
                             np.eye(4)), str(full))
    data = full.read_bytes()
    p = d / "cut.nii.gz"
    p.write_bytes(data[: len(data) // 2])
    return p


def _truncated_nii(d):
    full = d / "full.nii"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)), str(full))
    data = full.read_bytes()
    p = d / "cut.nii"
    p.write_bytes(data[: len(data) // 2])
    return p


def _zero_affine(d):
    img = nib.Nifti1Image(_distinct(), None)
    img.header.set_sform(np.diag([0.0, 0.0, 0.0, 1.0]), code=2)
    p = d / "zero.nii"
    nib.save(img, str(p))
    return p


def _rgb(d):
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = 200
    p = d / "rgb.nii"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(p))
    return p


def _vector_4d(d):
    img = nib.Nifti1Image(np.ones(SHAPE + (3,), np.float32), np.eye(4))
    img.header.set_intent("vector")
    p = d / "field.nii.gz"
    nib.save(img, str(p))
    return p


def _five_d(d):
    p = d / "five.nii"
    nib.save(nib.Nifti1Image(np.ones(SHAPE + (2, 3), np.float32), np.eye(4)), str(p))
    return p


LOAD_ERRORS = [
    ("missing", _missing, "no such file"),
    ("wrong-suffix", _wrong_suffix, "not a NIfTI file"),
    ("text-named-nii", _text_named_nii, "not a readable NIfTI"),
    ("empty-file", _empty_file, "not a readable NIfTI"),
    ("directory", _directory, "directory"),
    ("truncated-gz", _truncated_gz, "truncated"),
    ("truncated-nii", _truncated_nii, "truncated"),
    ("zero-affine", _zero_affine, "not invertible"),
    ("rgb", _rgb, "RGB"),
    ("vector-4d", _vector_4d, "not time"),
    ("five-d", _five_d, "5D"),
]


@pytest.mark.parametrize("make, fragment", [c[1:] for c in LOAD_ERRORS], ids=[c[0] for c in LOAD_ERRORS])
def test_load_errors_are_value_errors_naming_the_file(tmp_path, make, fragment):
    path = make(tmp_path)
    with pytest.raises(ValueError) as info:
        load_volume(path)
    message = str(info.value)
    assert str(path) in message
    assert fragment in message


def test_load_accepts_str_path(tmp_path):
    p = _write(tmp_path / "a.nii", _distinct(), PLAIN_RAS)
    assert load_volume(str(p)).shape == load_volume(p).shape


# --------------------------------------------------------------------------- saving


def _fake_failing_save(exc):
    def fake_save(img, filename, *args, **kwargs):
        with open(filename, "wb") as fh:
            fh.write(b"partial NIfTI bytes")
        raise exc

    return fake_save


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()], ids=["oserror", "interrupt"])
def test_save_is_atomic_no_destination_no_temporaries(tmp_path, monkeypatch, exc):
    vol = Volume(np.ones((2, 3, 4), np.float32))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    monkeypatch.setattr(nib, "save", _fake_failing_save(exc))
    with pytest.raises(type(exc)):
        save_volume(out_dir / "heat.nii.gz", vol.data, like=vol)
    assert os.listdir(out_dir) == []


def test_save_failure_leaves_existing_destination_untouched(tmp_path, monkeypatch):
    vol = Volume(np.ones((2, 3, 4), np.float32))
    dest = tmp_path / "heat.nii.gz"
    save_volume(dest, vol.data, like=vol)
    before = dest.read_bytes()
    listing = sorted(os.listdir(tmp_path))
    monkeypatch.setattr(nib, "save", _fake_failing_save(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_volume(dest, vol.data * 5, like=vol)
    assert dest.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == listing


def test_save_leaves_only_the_destination_with_usual_mode(tmp_path):
    save_volume(tmp_path / "sub" / "a.nii", np.zeros((2, 2, 2)))
    assert os.listdir(tmp_path / "sub") == ["a.nii"]
    mask = os.umask(0)
    os.umask(mask)
    assert (os.stat(tmp_path / "sub" / "a.nii").st_mode & 0o777) == (0o666 & ~mask)


@pytest.mark.parametrize("dtype, stored", [
    (bool, np.uint8), (np.uint8, np.uint8), (np.int16, np.int16), (np.int32, np.int32),
    (np.int64, np.int32), (np.float64, np.float32), (np.float32, np.float32),
])
def test_save_dtypes(tmp_path, dtype, stored):
    arr = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    save_volume(tmp_path / "a.nii", arr)
    out = nib.load(str(tmp_path / "a.nii"))
    assert out.get_data_dtype() == stored
    np.testing.assert_array_equal(np.asarray(out.dataobj), arr.astype(stored))


def test_save_without_like_uses_given_affine_or_identity(tmp_path):
    arr = _distinct((2, 3, 4))
    save_volume(tmp_path / "a.nii", arr, affine=PLAIN_RAS)
    out = nib.load(str(tmp_path / "a.nii"))
    np.testing.assert_array_equal(out.get_fdata(), arr)
    np.testing.assert_allclose(out.affine, PLAIN_RAS, atol=1e-6)
    save_volume(tmp_path / "b.nii", arr)
    np.testing.assert_array_equal(nib.load(str(tmp_path / "b.nii")).affine, np.eye(4))


@pytest.mark.parametrize("name, array, like, fragment", [
    ("bad-suffix", np.zeros((2, 3, 4)), None, ".nii"),
    ("2d-array", np.zeros((3, 4)), None, "(3, 4)"),
    ("4d-array", np.zeros((2, 3, 4, 5)), None, "(2, 3, 4, 5)"),
    ("shape-mismatch", np.zeros((2, 3, 5)), Volume(np.zeros((2, 3, 4))), "(2, 3, 4)"),
])
def test_save_errors(tmp_path, name, array, like, fragment):
    path = tmp_path / ("a.png" if name == "bad-suffix" else "a.nii.gz")
    with pytest.raises(ValueError) as info:
        save_volume(path, array, like=like)
    assert fragment in str(info.value)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- Volume


def test_volume_spacing_and_translate_axis_aligned_hand_worked():
    # display axes S, P, L: z -> +S 2.5 mm, y -> -A 0.9 mm, x -> -R 0.8 mm
    affine = np.array([[0.0, 0.0, -0.8, 100.0],
                       [0.0, -0.9, 0.0, 50.0],
                       [2.5, 0.0, 0.0, -30.0],
                       [0.0, 0.0, 0.0, 1.0]])
    vol = Volume(np.zeros((4, 5, 6), np.float32), affine)
    assert vol.spacing == pytest.approx((2.5, 0.9, 0.8))
    # translate = RAS origin rotated into display axes: (S, P, L) = (-30, -50, -100)
    assert vol.translate == pytest.approx((-30.0, -50.0, -100.0))
    # napari world (scale * index + translate) equals RAS rotated into (S, P, L) for every voxel
    idx = np.argwhere(np.ones(vol.shape, bool)).astype(float)
    ras = _homog(idx) @ affine.T
    sp_l = np.c_[ras[:, 2], -ras[:, 1], -ras[:, 0]]
    np.testing.assert_allclose(idx * np.array(vol.spacing) + np.array(vol.translate), sp_l, atol=1e-9)


def test_volume_translate_of_loaded_axis_aligned_lps_file(tmp_path):
    lps = _affine(np.diag([-0.7, -0.9, 3.0]), [10.0, -20.0, 30.0])
    vol = load_volume(_write(tmp_path / "a.nii", _distinct(), lps))
    idx = np.argwhere(np.ones(vol.shape, bool)).astype(float)
    values = vol.data[tuple(idx.astype(int).T)]
    src = np.array(np.unravel_index(values.astype(np.int64) - 1, SHAPE)).T
    ras = _homog(src) @ lps.T
    expected = np.c_[-ras[:, 2], -ras[:, 1], -ras[:, 0]]
    got = idx * np.array(vol.spacing) + np.array(vol.translate)
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("data, affine, fragment", [
    (np.zeros((3, 4)), np.eye(4), "(3, 4)"),
    (np.zeros((2, 3, 4, 5)), np.eye(4), "(2, 3, 4, 5)"),
    (np.zeros((2, 3, 4)), np.eye(3), "(3, 3)"),
])
def test_volume_validation(data, affine, fragment):
    with pytest.raises(ValueError) as info:
        Volume(data, affine)
    assert fragment in str(info.value)


def test_with_data_keeps_geometry_and_checks_shape(tmp_path):
    vol = load_volume(_write(tmp_path / "a.nii", _distinct(), OBLIQUE_LPS))
    other = vol.with_data(vol.data * 0 + 7)
    assert np.array_equal(other.affine, vol.affine) and other.affine is not vol.affine
    assert np.array_equal(other.source_affine, vol.source_affine)
    assert other.source_shape == vol.source_shape and other.path == vol.path
    assert np.all(other.data == 7)
    with pytest.raises(ValueError, match=r"\(7, 6, 5\)"):
        vol.with_data(np.zeros((1, 2, 3)))


# --------------------------------------------------------------------------- napari layer geometry


def test_layer_geometry_and_metadata_round_trip_land_on_source_file(tmp_path):
    arr = _distinct()
    src_path = _write(tmp_path / "scan.nii.gz", arr, OBLIQUE_LPS)
    source = nib.load(str(src_path))
    vol = load_volume(src_path)

    geometry = layer_geometry(vol)
    assert geometry["scale"] == pytest.approx(vol.spacing)
    assert geometry["translate"] == pytest.approx(vol.translate)
    meta = geometry["metadata"]["xaiclip_geometry"]
    assert meta["shape"] == list(vol.shape)
    assert meta["spacing"] == pytest.approx(vol.spacing)
    # plain values (the nibabel header, kept for in-session exact saving, aside)
    json.dumps({k: v for k, v in meta.items() if k != "header"})

    # a derived layer (e.g. heatmap) carries the metadata; rebuild a Volume from it and save
    rebuilt = volume_from_layer_metadata(vol.data * 3, geometry["metadata"])
    np.testing.assert_array_equal(rebuilt.affine, vol.affine)
    assert rebuilt.path == str(src_path)
    save_volume(tmp_path / "heat.nii.gz", rebuilt.data, like=rebuilt)
    out = nib.load(str(tmp_path / "heat.nii.gz"))
    np.testing.assert_array_equal(out.get_fdata(), 3 * arr)
    assert np.array_equal(out.affine, source.affine)

    # the same after the metadata went through JSON (a saved session: no header object)
    plain = json.loads(json.dumps({k: v for k, v in meta.items() if k != "header"}))
    rebuilt = volume_from_layer_metadata(vol.data - 1, {"xaiclip_geometry": plain})
    assert rebuilt.header is None
    save_volume(tmp_path / "heat2.nii.gz", rebuilt.data, like=rebuilt)
    out = nib.load(str(tmp_path / "heat2.nii.gz"))
    np.testing.assert_array_equal(out.get_fdata(), arr - 1)
    assert np.array_equal(out.affine, source.affine)


def test_volume_from_layer_metadata_without_geometry_keeps_scale_and_translate():
    data = np.zeros((2, 3, 4), np.float32)
    vol = volume_from_layer_metadata(data, {}, scale=(3.0, 0.5, 0.7), translate=(10.0, 20.0, 30.0))
    assert vol.spacing == pytest.approx((3.0, 0.5, 0.7))
    assert vol.translate == pytest.approx((10.0, 20.0, 30.0))
    # napari layers may have a leading extra axis: the last three count
    vol4 = volume_from_layer_metadata(data, None, scale=(1.0, 3.0, 0.5, 0.7), translate=(9.0, 1.0, 2.0, 3.0))
    assert vol4.spacing == pytest.approx((3.0, 0.5, 0.7))
    assert vol4.translate == pytest.approx((1.0, 2.0, 3.0))
    plain = volume_from_layer_metadata(data, None)
    assert plain.spacing == (1.0, 1.0, 1.0) and plain.translate == (0.0, 0.0, 0.0)


def test_volume_from_layer_metadata_without_geometry_save_load_round_trip(tmp_path):
    data = _distinct((2, 3, 4))
    vol = volume_from_layer_metadata(data, None, scale=(3.0, 0.5, 0.7), translate=(10.0, 20.0, 30.0))
    assert ornt.aff2axcodes(vol.affine) == DISPLAY
    save_volume(tmp_path / "labels.nii.gz", data, like=vol)
    back = load_volume(tmp_path / "labels.nii.gz")
    np.testing.assert_array_equal(back.data, data)
    assert back.spacing == pytest.approx((3.0, 0.5, 0.7), rel=1e-6)


def test_in_memory_display_oriented_volume_round_trips(tmp_path):
    # an affine in display orientation (z -> I, y -> P, x -> L), as the phantom builds
    affine = np.array([[0.0, 0.0, -0.8, 12.0], [0.0, -0.9, 0.0, 34.0],
                       [-2.5, 0.0, 0.0, -56.0], [0.0, 0.0, 0.0, 1.0]])
    data = _distinct((3, 4, 5))
    vol = Volume(data, affine)
    save_volume(tmp_path / "a.nii.gz", data, like=vol)
    back = load_volume(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.affine, affine, atol=1e-6)


# --------------------------------------------------------------------------- docstrings


DOCTEST_MODULES = [
    "io",
    "preprocess",
    "slicing", "roi", "phantom",
    "metrics",
]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_module_doctests(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # io's example uses tempfile.mkdtemp
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    module = importlib.import_module(f"napari_xaiclip.{name}")
    result = doctest.testmod(module, verbose=False, report=False)
    assert result.attempted > 0
    assert result.failed == 0
