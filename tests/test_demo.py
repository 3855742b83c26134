"""``xaiclip demo`` on a small phantom with few samples: every output, written in the phantom's geometry,
a report that embeds the figures and the table and says the models are phantom-trained demo models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_xaiclip import demo as demo_mod
from napari_xaiclip import models as models_mod
from napari_xaiclip.cli import main
from napari_xaiclip.io import load_volume
from napari_xaiclip.phantom import make_phantom
from napari_xaiclip.models import Localizer
from napari_xaiclip.roi import clean_roi, roi_from_map

SMALL = (8, 96, 96)
QUICK = {"occlusion": {"window": 64, "stride": 64}, "rise": {"n_samples": 16}, "lime": {"n_samples": 16}}


@pytest.fixture
def small_demo(monkeypatch):
    monkeypatch.setattr(demo_mod, "DEMO_SHAPE", SMALL)
    monkeypatch.setattr(demo_mod, "FAST_PARAMS", QUICK)
    monkeypatch.setattr(demo_mod, "CURVES", False)


class SquareLocalizer(Localizer):
    """A localizer with a known answer: 1 inside a central square, 0 elsewhere (or 0 everywhere)."""

    def __init__(self, empty=False):
        self.empty, self.prompts = empty, []

    def locate(self, slice2d, prompt, allow_similar=False):
        self.prompts.append(prompt)
        score = np.zeros(np.shape(slice2d), np.float32)
        if not self.empty:
            h, w = score.shape
            score[h // 4: h // 2, w // 4: w // 2] = 1.0
        return score


def _liver_slice(shape):
    _, labels, _ = make_phantom(shape=shape, seed=0)
    return labels, int(np.argmax((labels == 1).sum(axis=(1, 2))))


@pytest.mark.slow
def test_demo_command_with_the_default_models(small_demo, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--fast"]) == 0
    stdout = capsys.readouterr().out
    labels, z = _liver_slice(SMALL)
    jobs = [(m, mode) for m in ("occlusion", "rise", "lime") for mode in ("traditional", "roi")]
    for m, mode in jobs:
        assert f"slice {z}: {m} ({mode})" in stdout
    assert "demo finished in" in stdout and "dice_vs_baseline" in stdout

    records = json.loads((out / "metrics.json").read_text())
    assert [(r["method"], r["mode"]) for r in records] == jobs
    assert all(r["slice"] == z and r["dice_vs_gt"] is not None for r in records)
    assert (out / "metrics.csv").read_text().startswith("method,mode,slice,n_forward")
    phantom = load_volume(out / "phantom_ct.nii.gz")
    assert phantom.data.shape == SMALL
    np.testing.assert_array_equal(load_volume(out / "phantom_labels.nii.gz").data, labels)
    for name in [f"{m}-{mode}" for m, mode in jobs] + ["roi", "segmentation"]:
        vol = load_volume(out / f"{name}.nii.gz")
        np.testing.assert_allclose(vol.affine, phantom.affine)
        off = np.delete(vol.data, z, axis=0)
        assert not off.any(), f"{name} has values off slice {z}"
    assert load_volume(out / "roi.nii.gz").data[z].any()
    for m in ("occlusion", "rise", "lime"):
        assert (out / f"{m}-comparison.png").read_bytes()[:4] == b"\x89PNG"

    report = (out / "report.md").read_text()
    assert "phantom-trained demo models" in report
    for m in ("occlusion", "rise", "lime"):
        assert f"]({m}-comparison.png)" in report
    assert "| method | mode | n_forward | rho |" in report and report.count("| occlusion |") == 2
    assert "Total run time: **" in report and "s**" in report
    assert not list(out.glob(".*"))  # no staging folders or temporary files left


@pytest.mark.parametrize("empty", [False, True], ids=["localizer ROI", "label fallback"])
def test_demo_roi_from_the_localizer_or_the_liver_label(empty, monkeypatch, tmp_path):
    shape = (6, 64, 64)
    loc = SquareLocalizer(empty=empty)
    monkeypatch.setattr(models_mod, "load_localizer", lambda spec="default", **kw: loc)
    monkeypatch.setattr(demo_mod, "METHODS", ("occlusion",))
    lines = []

    class Stream:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    result = demo_mod.run_demo(tmp_path / "d", shape=shape, params=QUICK, curves=False, stream=Stream())
    labels, z = _liver_slice(shape)
    assert result["slice"] == z and "liver" in loc.prompts
    roi = load_volume(tmp_path / "d" / "roi.nii.gz").data[z] > 0
    report = (tmp_path / "d" / "report.md").read_text()
    if empty:
        assert result["roi_source"] == "labels"
        np.testing.assert_array_equal(roi, labels[z] == 1)
        assert "from the liver label" in report and any("found no 'liver'" in t for t in lines)
    else:
        assert result["roi_source"] == "localizer"
        square = np.zeros((64, 64), np.float32)
        square[16:32, 16:32] = 1
        expected = clean_roi(roi_from_map(square, sigma=2.0, threshold=0.5), largest_component=True,
                             fill_holes=True)
        np.testing.assert_array_equal(roi, expected)
        assert 'from the CLIP localizer with the prompt "liver"' in report
    assert f"{result['seconds']:.1f} s" in report


@pytest.mark.parametrize("slice_index, message", [(99, "slice 99 is outside"), (7, "the liver is not on slice 7")])
def test_demo_bad_slice_is_an_input_error(small_demo, slice_index, message, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--slice", str(slice_index)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not out.exists()


@pytest.mark.litemedsam
def test_demo_runs_with_litemedsam(small_demo, monkeypatch, tmp_path, capsys):
    """`xaiclip demo --model litemedsam`: the real model, said so in the banner, the report and the records."""
    monkeypatch.setattr(demo_mod, "METHODS", ("occlusion",))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--fast", "--model", "litemedsam"]) == 0
    stdout = capsys.readouterr().out
    assert "segmenter litemedsam, phantom-trained localizer" in stdout and "phantom-trained demo models" not in stdout
    assert "LiteMedSAM, a real medical model" in (out / "report.md").read_text()
    records = json.loads((out / "metrics.json").read_text())
    assert {r["segmenter"] for r in records} == {"litemedsam"}
    assert all("MedSAM" in r["segmenter_trained_on"] for r in records)


def test_demo_says_it_uses_the_phantom_models(small_demo, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo_mod, "METHODS", ("occlusion",))
    assert main(["demo", "--out", str(tmp_path / "d"), "--fast"]) == 0
    assert "phantom-trained demo models (for speed; real scans: the default LiteMedSAM)" in capsys.readouterr().out
    records = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert {r["segmenter"] for r in records} == {"phantom"} and all(r["warnings"] == [] for r in records)
