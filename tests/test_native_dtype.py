"""An int16 CT is explained exactly like the same values held as float32: the CLI's maps and metrics,
and the plugin's layers (the scan stays int16 in napari; only explained slices become float32)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_xaiclip.cli import main
from napari_xaiclip.phantom import make_phantom

def _args(labels) -> list[str]:
    return ["--slice", "3", "--labels", str(labels), "--organ", "1", "--method", "occlusion", "--mode", "roi",
            "--roi", "labels", "--model", "phantom", "--param", "occlusion.window=32", "--no-curves"]


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """The phantom written twice in one geometry: int16 HU (slope 1, intercept -1024) and float32."""
    folder = tmp_path_factory.mktemp("scans")
    vol, labels, _ = make_phantom(shape=(6, 128, 128), seed=1)
    hu = np.clip(np.round(vol.data), -1024, 3071).astype(np.int16).T   # file (i, j, k): display reversed
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])            # LPS-ish: display order needs flips and a transpose
    stored = nib.Nifti1Image((hu + 1024).astype(np.uint16), affine, dtype=np.uint16)
    stored.header.set_slope_inter(1.0, -1024.0)
    nib.save(stored, str(folder / "ct_int.nii.gz"))
    nib.save(nib.Nifti1Image(hu.astype(np.float32), affine), str(folder / "ct_float.nii.gz"))
    nib.save(nib.Nifti1Image(labels.T.astype(np.uint8), affine, dtype=np.uint8), str(folder / "labels.nii.gz"))
    return folder


def test_the_int16_file_loads_as_int16_with_the_float_files_values(scans):
    from napari_xaiclip.io import load_volume

    a, b = load_volume(scans / "ct_int.nii.gz"), load_volume(scans / "ct_float.nii.gz")
    assert (a.data.dtype, b.data.dtype) == (np.int16, np.float32)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.affine, b.affine)


def test_cli_maps_and_metrics_are_those_of_the_float32_file(scans, tmp_path, capsys):
    outs = {}
    for kind in ("int", "float"):
        argv = ["explain", str(scans / f"ct_{kind}.nii.gz"), *_args(scans / "labels.nii.gz")]
        assert main([*argv, "--out", str(tmp_path / kind)]) == 0
        outs[kind] = tmp_path / kind
    capsys.readouterr()
    heat = {k: nib.load(str(p / "occlusion-roi.nii.gz")).get_fdata() for k, p in outs.items()}
    assert np.abs(heat["int"]).max() > 0
    np.testing.assert_array_equal(heat["int"], heat["float"])
    rows = {k: json.loads((p / "metrics.json").read_text()) for k, p in outs.items()}
    def same_run(record):   # timings and the file's own name differ between any two runs
        return {k: v for k, v in record.items() if not k.endswith("seconds") and k not in ("case", "volume")}

    assert len(rows["int"]) == len(rows["float"]) == 1
    assert same_run(rows["int"][0]) == same_run(rows["float"][0])


@pytest.mark.gui
def test_napari_shows_the_int16_scan_as_int16_and_explains_it_like_float32(scans, make_napari_viewer, qtbot):
    from napari_xaiclip.explain import explain
    from napari_xaiclip.models import load_segmenter
    from napari_xaiclip.widgets import ExplainerWidget, RoiWidget, SlicePickerWidget

    viewer = make_napari_viewer()
    (image,) = viewer.open(str(scans / "ct_int.nii.gz"), plugin="napari-xaiclip")
    assert image.data.dtype == np.int16
    picker, roi_w, ex_w = SlicePickerWidget(viewer), RoiWidget(viewer), ExplainerWidget(viewer)
    for chooser in (roi_w.segmenter, ex_w.model):
        chooser.choose("phantom")
    picker.set_index(3)
    roi_w.tabs.setCurrentIndex(2)
    roi_w.otsu.setChecked(False)
    roi_w.level.setValue(100.0)
    roi_w.compute()
    qtbot.waitUntil(lambda: not roi_w.run.running, timeout=120_000)
    roi = np.asarray(viewer.layers["ROI"].data[3]) > 0
    assert roi.any()
    ex_w.method.setCurrentText("occlusion")
    ex_w.mode.setCurrentText("ROI-guided")
    ex_w.params.set_value("window", 32)
    ex_w.curves.setChecked(False)
    ex_w.explain()
    qtbot.waitUntil(lambda: not ex_w.run.running, timeout=300_000)
    assert ex_w.run.last_error is None, ex_w.run.last_error
    heat = np.asarray(viewer.layers[f"{image.name} · occlusion (roi)"].data[0])
    record = viewer.layers[f"{image.name} · occlusion (roi)"].metadata["xaiclip_records"][0]
    plane = np.asarray(image.data[3], np.float32)
    ref = explain("occlusion", load_segmenter("phantom"), plane, box=record["params"]["box"], roi=roi,
                  window=32, seed=0)
    assert np.abs(ref.heatmap).max() > 0
    np.testing.assert_allclose(heat, ref.heatmap, atol=1e-6)
