"""``xaiclip explain`` through ``cli.main``: outputs, voxel-exact geometry on oblique anisotropic files,
slice ranges, and input errors (exit 2, one ``error:`` line, no traceback, no files)."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as ornt

from napari_xaiclip.cli import main
from napari_xaiclip.phantom import make_phantom

from toy_models import IdentityProbNet, make_segmenter

SHAPE = (6, 64, 64)  # (z, y, x) display order
SPACING = (0.8, 0.9, 3.0)  # mm along the file's i, j, k
FAST = ["--param", "occlusion.window=64", "--param", "occlusion.stride=64", "--no-curves", "--model", "phantom"]
CONTRACT = ["method", "mode", "n_forward", "n_patch", "n_patch_full", "rho", "seconds", "gflops", "dice_vs_baseline",
            "iou_vs_baseline", "dice_vs_gt", "iou_vs_gt", "pointing_game", "deletion_auc", "insertion_auc"]


def _rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    a, b = np.radians(degrees_z), np.radians(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _write_oblique(folder: Path, orientation: str):
    """Phantom CT and labels written with nibabel in an oblique, anisotropic file geometry.

    "LPS": file axes (i, j, k) run to the patient's left, posterior, superior (the display
    array transposed and flipped along z); "RAS": right, anterior, superior (and flipped in-plane).
    """
    vol, labels, _ = make_phantom(shape=SHAPE, seed=1)
    def to_file(display):  # display (z: I, y: P, x: L) -> file (i, j, k)
        arr = np.transpose(display, (2, 1, 0))[:, :, ::-1]
        return arr if orientation == "LPS" else arr[::-1, ::-1, :]
    signs = np.array([-1.0, -1.0, 1.0]) if orientation == "LPS" else np.array([1.0, 1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = _rotation(17.0, 11.0) @ np.diag(signs * np.array(SPACING))
    affine[:3, 3] = [12.5, -30.25, 41.0]
    paths = {}
    for name, data, dtype in (("ct", vol.data, np.float32), ("labels", labels, np.int16)):
        img = nib.Nifti1Image(np.ascontiguousarray(to_file(data)).astype(dtype), affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        paths[name] = folder / f"{name}_{orientation}.nii.gz"
        nib.save(img, paths[name])
    return paths, affine, labels


def _file_axis_of_display_z(affine):
    """(file axis, flipped) holding the display's axial index, from nibabel.orientations alone."""
    io = ornt.io_orientation(affine)  # per file axis: (RAS axis, direction)
    axis = int(np.nonzero(io[:, 0] == 2)[0][0])  # RAS axis 2 (S); display axis 0 runs to I
    return axis, io[axis, 1] > 0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    return {o: _write_oblique(folder, o) for o in ("LPS", "RAS")} | {"folder": folder}


def _err_lines(capsys):
    return capsys.readouterr().err.strip().splitlines()


def bright_segmenter():
    """A segmenter with a known answer: mask = min-max normalised slice > 0.5 (``--model module:test_cli:...``)."""
    return make_segmenter(IdentityProbNet(), size=SHAPE[1], normalize="minmax", counting=False)


TOY = ["--model", "module:test_cli:bright_segmenter", "--param", "occlusion.window=16",
       "--param", "occlusion.stride=16", "--no-curves"]


def _file_slice(shape, affine, z):
    """Index of display slice ``z`` in the file's own array and a mask of its voxels."""
    axis, flipped = _file_axis_of_display_z(affine)
    index = [slice(None)] * 3
    index[axis] = shape[axis] - 1 - z if flipped else z
    on_slice = np.zeros(shape, bool)
    on_slice[tuple(index)] = True
    return tuple(index), on_slice


@pytest.mark.slow
def test_explain_with_default_models_writes_the_contract_outputs(data, tmp_path, capsys):
    paths, affine, labels_display = data["LPS"]
    z = int(np.argmax((labels_display == 1).sum(axis=(1, 2))))  # explain's default: the largest liver slice
    out = tmp_path / "out"
    code = main(["explain", str(paths["ct"]), "--labels", str(paths["labels"]), "--organ", "liver",
                 "--roi", "labels", "--mode", "both", "--out", str(out), *FAST])
    assert code == 0, capsys.readouterr().err
    for name in ("occlusion-traditional", "occlusion-roi"):
        assert (out / f"{name}.nii.gz").is_file() and (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    src = nib.load(paths["ct"])
    index, on_slice = _file_slice(src.shape, src.affine, z)
    for name in ("occlusion-traditional", "occlusion-roi", "roi", "segmentation"):
        img = nib.load(out / f"{name}.nii.gz")
        assert img.shape == src.shape
        np.testing.assert_allclose(img.affine, affine, atol=1e-5)
        assert not np.any(np.asarray(img.dataobj)[~on_slice]), f"{name} has values off the explained slice"
    # the ROI (from the labels) sits exactly on the labels file's liver voxels of that slice
    lab = np.asarray(nib.load(paths["labels"]).dataobj)
    roi = np.asarray(nib.load(out / "roi.nii.gz").dataobj)
    np.testing.assert_array_equal(roi[index] > 0, lab[index] == 1)

    records = json.loads((out / "metrics.json").read_text())
    assert [(r["method"], r["mode"]) for r in records] == [("occlusion", "traditional"), ("occlusion", "roi")]
    # the ROI is the ground truth's organ: its overlap figures are tautological, and the user is told
    assert "warning: the ROI comes from the same labels as the ground truth" in capsys.readouterr().err
    assert all(any("same labels as the ground truth" in w for w in r["warnings"]) for r in records)
    assert records[1]["trivial_dice_in_roi"] is not None and records[1]["dice_in_roi"] is not None
    curves = {"deletion_auc", "insertion_auc"}  # with --no-curves the JSON records leave them out
    for r in records:
        assert set(CONTRACT) - curves <= set(r)
        assert r["slice"] == z and r["dice_vs_gt"] is not None and r.get("deletion_auc") is None
    assert records[0]["rho"] == 1.0 and 0 < records[1]["rho"] < 1
    assert records[1]["n_patch"] < records[0]["n_patch"] == records[1]["n_patch_full"]
    with open(out / "metrics.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert set(CONTRACT) <= set(reader.fieldnames) and len(rows) == 2
    assert all(row["deletion_auc"] == "" and row["dice_vs_gt"] != "" for row in rows)
    assert not list(out.glob(".xaiclip-partial-*"))


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_explain_outputs_line_up_voxel_for_voxel_with_an_oblique_anisotropic_source(data, orientation, tmp_path,
                                                                                   capsys):
    paths, affine, _ = data[orientation]
    z = 3
    out = tmp_path / "out"
    code = main(["explain", str(paths["ct"]), "--slice", str(z), "--box", "4", "4", "60", "60", "--roi", "none",
                 "--mode", "traditional", "--out", str(out), *TOY])
    assert code == 0, capsys.readouterr().err
    src = nib.load(paths["ct"])
    assert np.linalg.norm(src.affine[:3, :3], axis=0) == pytest.approx(SPACING)
    index, on_slice = _file_slice(src.shape, src.affine, z)
    # the toy segmenter's mask, computed here from the source file's own voxels of that slice
    plane = np.asarray(src.dataobj, np.float64)[index]
    expected = (plane - plane.min()) / (plane.max() - plane.min()) > 0.5
    seg = nib.load(out / "segmentation.nii.gz")
    heat = nib.load(out / "occlusion-traditional.nii.gz")
    for img in (seg, heat):
        assert img.shape == src.shape
        np.testing.assert_allclose(img.affine, affine, atol=1e-5)
        arr = np.asarray(img.dataobj)
        assert np.count_nonzero(arr[index]) > 0 and not np.any(arr[~on_slice])
    np.testing.assert_array_equal(np.asarray(seg.dataobj)[index] > 0, expected)


def test_explain_slice_range(data, tmp_path, capsys):
    paths, _, _ = data["RAS"]
    out = tmp_path / "range"
    code = main(["explain", str(paths["ct"]), "--slices", "2:5", "--box", "4", "4", "60", "60", "--roi", "none",
                 "--mode", "traditional", "--out", str(out), *TOY])
    assert code == 0, capsys.readouterr().err
    heat = nib.load(out / "occlusion-traditional.nii.gz")
    arr = np.asarray(heat.dataobj)
    for z in range(SHAPE[0]):
        index, _ = _file_slice(arr.shape, heat.affine, z)
        assert (np.count_nonzero(arr[index]) > 0) == (z in (2, 3, 4)), z
    records = json.loads((out / "metrics.json").read_text())
    assert [r["slice"] for r in records] == [2, 3, 4]
    assert all(r["dice_vs_gt"] is None and r["iou_vs_gt"] is None for r in records)  # no labels: null
    assert sorted(p.name for p in out.glob("*.png")) == [f"occlusion-traditional-s{z}.png" for z in (2, 3, 4)]
    assert not (out / "roi.nii.gz").exists()


def _corrupt(folder: Path) -> Path:
    good = (folder / "ct_LPS.nii.gz").read_bytes()
    bad = folder / "truncated.nii.gz"
    bad.write_bytes(good[: len(good) // 3])
    return bad


NO_ROI = ["--roi", "none", "--mode", "traditional"]
ERRORS = {
    "missing volume": (lambda p, f: [str(f / "nope.nii.gz"), "--box", "1", "1", "9", "9", "--slice", "2", *NO_ROI],
                       "no such file"),
    "missing labels": (lambda p, f: [str(p["ct"]), "--labels", str(f / "nolabels.nii.gz"), "--organ", "liver"],
                       "no such file"),
    "unknown organ": (lambda p, f: [str(p["ct"]), "--labels", str(p["labels"]), "--organ", "unicorn"],
                      "unknown organ 'unicorn'"),
    "box outside": (lambda p, f: [str(p["ct"]), "--slice", "2", "--box", "100", "100", "120", "130", *NO_ROI],
                    "lies outside the 64x64"),
    "corrupt nifti": (lambda p, f: [str(_corrupt(f)), "--slice", "2", "--box", "1", "1", "9", "9", *NO_ROI],
                      "truncated.nii.gz"),
    "roi mode without roi": (lambda p, f: [str(p["ct"]), "--labels", str(p["labels"]), "--organ", "liver",
                                           "--mode", "roi", "--roi", "none"], "ROI-guided mode needs an ROI"),
    "slice outside": (lambda p, f: [str(p["ct"]), "--slice", "6", "--box", "1", "1", "9", "9", *NO_ROI],
                      "slice 6 is outside 0..5"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_explain_input_errors(name, data, tmp_path, capsys):
    args, message = ERRORS[name]
    out = tmp_path / "out"
    code = main(["explain", *args(data["LPS"][0], data["folder"]), "--out", str(out), *FAST])
    err = _err_lines(capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not out.exists() or not any(out.rglob("*"))


def test_unknown_method_is_refused_by_argparse(data, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["explain", str(data["LPS"][0]["ct"]), "--slice", "2", "--box", "1", "1", "9", "9",
              "--method", "magic", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'magic'" in err and "Traceback" not in err
    assert not out.exists()


def _xaiclip(*args):
    exe = Path(sys.executable).with_name("xaiclip")
    return subprocess.run([str(exe), *args], check=False, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_console_script_error_line_and_debug_traceback(tmp_path):
    missing = str(tmp_path / "nope.nii.gz")
    plain = _xaiclip("explain", missing, "--slice", "0", "--box", "1", "1", "9", "9", "--out", str(tmp_path / "a"))
    assert plain.returncode == 2
    assert plain.stderr.strip().splitlines() == [f"error: {missing}: no such file"]
    debug = _xaiclip("--debug", "explain", missing, "--slice", "0", "--box", "1", "1", "9", "9",
                     "--out", str(tmp_path / "b"))
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr and "no such file" in debug.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_truncated_gzip_really_is_corrupt(data):
    with pytest.raises((EOFError, OSError)):
        gzip.decompress(_corrupt(data["folder"]).read_bytes())
