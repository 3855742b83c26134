"""Outputs of `xaiclip explain` on DICOM and NRRD sources land on the scan, read back independently."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from test_io_formats import LPS_TO_RAS, write_series
from toy_models import IdentityProbNet, make_segmenter

from napari_xaiclip.cli import main
from napari_xaiclip.outputs import LABEL_VALUE, figure_name, heatmap_stem

ROWS, COLS = 40, 40  # square: the toy segmenter is exact only without resizing
TOY = ["--model", "module:test_outputs:bright_segmenter", "--param", "occlusion.window=16",
       "--param", "occlusion.stride=16", "--no-curves", "--roi", "none", "--mode", "traditional"]


def bright_segmenter():
    """mask = min-max normalised slice > 0.5: a known answer for every output."""
    return make_segmenter(IdentityProbNet(), size=COLS, normalize="minmax", counting=False)


def _world_of_nonzero(path) -> np.ndarray:
    img = nib.load(path)
    ijk = np.argwhere(np.asarray(img.dataobj) != 0)
    return nib.affines.apply_affine(img.affine, ijk)


def _same_points(a: np.ndarray, b: np.ndarray, tol: float = 1e-3) -> bool:
    """Same world points (one-to-one within ``tol`` mm; NIfTI stores its affine in float32)."""
    from scipy.spatial import cKDTree

    if len(a) != len(b):
        return False
    dist, index = cKDTree(b).query(a)
    return bool(np.all(dist < tol)) and len(set(index.tolist())) == len(b)


def _subset_points(a: np.ndarray, b: np.ndarray, tol: float = 1e-3) -> bool:
    from scipy.spatial import cKDTree

    return bool(np.all(cKDTree(b).query(a)[0] < tol))


def test_explain_on_a_dicom_folder_writes_outputs_on_the_series_slices(tmp_path, capsys):
    folder, worlds, values, _ = write_series(tmp_path / "series", "oblique", shape=(5, ROWS, COLS))
    per_slice = worlds.reshape(5, ROWS * COLS, 3), values.reshape(5, ROWS * COLS)
    out = tmp_path / "out"
    code = main(["explain", str(folder), "--slice", "1", "--box", "0", "0", str(COLS - 1), str(ROWS - 1),
                 "--out", str(out), *TOY])
    assert code == 0, capsys.readouterr().err
    # display slice 1 = the second most superior DICOM slice (display axis 0 runs superior to inferior)
    k = int(np.argsort(-per_slice[0][:, :, 2].mean(axis=1))[1])
    slice_worlds, slice_values = per_slice[0][k], per_slice[1][k]
    lo, hi = slice_values.min(), slice_values.max()
    bright = slice_worlds[(slice_values - lo) / (hi - lo) > 0.5]
    seg = nib.load(out / "segmentation.nii.gz")
    assert set(np.unique(np.asarray(seg.dataobj))) == {0, LABEL_VALUE}
    assert _same_points(_world_of_nonzero(out / "segmentation.nii.gz"), bright)
    heat_points = _world_of_nonzero(out / f"{heatmap_stem('occlusion', 'traditional')}.nii.gz")
    assert len(heat_points) and _subset_points(heat_points, slice_worlds)
    assert (out / figure_name("occlusion", "traditional")).read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob("*.nrrd"))  # NRRD copies are for NRRD sources
    assert json.loads((out / "metrics.json").read_text())[0]["slice"] == 1


def _oblique_nrrd(path, shape=(6, ROWS, COLS)):
    rng = np.random.default_rng(5)
    array = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32)  # (k, j, i)
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((0.9, 0.7, 2.5))
    img.SetOrigin((12.5, -30.25, 41.0))
    a, b = np.radians(17.0), np.radians(11.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    img.SetDirection(tuple((rz @ rx).ravel()))
    sitk.WriteImage(img, str(path))
    return img


@pytest.mark.parametrize("name", ["scan.nrrd", "scan.mha"])
def test_nrrd_source_gets_nrrd_outputs_in_its_own_grid(tmp_path, capsys, name):
    src = _oblique_nrrd(tmp_path / name)
    out = tmp_path / "out"
    code = main(["explain", str(tmp_path / name), "--slice", "2", "--box", "0", "0", str(COLS - 1),
                 str(ROWS - 1), "--out", str(out), *TOY])
    assert code == 0, capsys.readouterr().err
    nrrds = sorted(p.name for p in out.glob("*.nrrd"))
    if name.endswith(".mha"):
        assert nrrds == []
        return
    assert nrrds == ["occlusion-traditional.nrrd", "segmentation.nrrd"]
    for stem in ("segmentation", "occlusion-traditional"):
        back = sitk.ReadImage(str(out / f"{stem}.nrrd"))
        assert back.GetSize() == src.GetSize()
        np.testing.assert_allclose(back.GetSpacing(), src.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(back.GetOrigin(), src.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(back.GetDirection(), src.GetDirection(), atol=1e-6)
        # the NRRD and the NIfTI hold the same voxels at the same world points
        arr = sitk.GetArrayFromImage(back)  # (k, j, i)
        kji = np.argwhere(arr != 0)
        lps = np.array([back.TransformIndexToPhysicalPoint([int(i), int(j), int(k)]) for k, j, i in kji])
        ras = lps * LPS_TO_RAS
        assert _same_points(ras, _world_of_nonzero(out / f"{stem}.nii.gz"))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "segmentation.nrrd")))
    values = sitk.GetArrayFromImage(src)
    on = np.argwhere(seg)
    axis = [a for a in range(3) if np.ptp(on[:, a]) == 0]
    assert len(axis) == 1, "the mask lies on one plane of the source grid"
    plane = np.take(values, on[0, axis[0]], axis=axis[0])
    expected = (plane - plane.min()) / (plane.max() - plane.min()) > 0.5
    np.testing.assert_array_equal(np.take(seg, on[0, axis[0]], axis=axis[0]) == LABEL_VALUE, expected)


def test_segmenter_roi_cost_is_one_segmenter_forward(tmp_path, capsys):
    folder, _, _, _ = write_series(tmp_path / "series", "axial", shape=(3, ROWS, COLS))
    out = tmp_path / "out"
    args = [a for a in TOY if a not in ("none", "traditional")]
    args[args.index("--roi") + 1:args.index("--roi") + 1] = ["segmenter"]
    args[args.index("--mode") + 1:args.index("--mode") + 1] = ["both"]
    code = main(["explain", str(folder), "--slice", "1", "--box", "0", "0", str(COLS - 1), str(ROWS - 1),
                 "--out", str(out), *args])
    assert code == 0, capsys.readouterr().err
    records = {r["mode"]: r for r in json.loads((out / "metrics.json").read_text())}
    gflops = bright_segmenter().gflops
    assert records["roi"]["roi_gflops"] == pytest.approx(gflops, rel=1e-4, abs=1e-6)
    assert records["roi"]["roi_seconds"] > 0
    assert records["roi"]["total_gflops"] == pytest.approx(records["roi"]["gflops"] + gflops, rel=1e-4, abs=1e-5)
    assert records["traditional"]["total_gflops"] == pytest.approx(records["traditional"]["gflops"], abs=1e-6)
