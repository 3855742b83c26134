"""Honest behaviour on volumes a model does not know: the phantom marker, phantom-model warnings,
strict prompt resolution, the ROI-overlap warning, and what the CLI and metrics.json say."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_xaiclip.cli import main
from napari_xaiclip.io import PHANTOM_MARKER, load_volume, save_volume
from napari_xaiclip.models import load_localizer, load_segmenter
from napari_xaiclip.phantom import make_phantom
from napari_xaiclip.provenance import model_provenance, phantom_model_warnings, roi_overlap_warning

FAST = ["--param", "occlusion.window=64", "--param", "occlusion.stride=64", "--no-curves", "--model", "phantom"]
CLASSES = "liver, right kidney, spleen, pancreas, aorta, stomach, left kidney"


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """The phantom saved by the project (marked) and a 'real' scan: the same voxels written by nibabel alone."""
    folder = tmp_path_factory.mktemp("prov")
    vol, labels, _ = make_phantom(shape=(4, 64, 64), modality="ct", seed=3)
    phantom = folder / "phantom.nii.gz"
    save_volume(phantom, vol.data, like=vol)
    save_volume(folder / "labels.nii.gz", labels, like=vol)
    other = folder / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(nib.load(phantom).dataobj), nib.load(phantom).affine), other)
    return {"phantom": phantom, "scan": other, "labels": folder / "labels.nii.gz"}


def test_the_phantom_marker_survives_a_nifti_round_trip(volumes):
    vol = load_volume(volumes["phantom"])
    assert vol.is_phantom and vol.description.startswith(PHANTOM_MARKER)
    assert not load_volume(volumes["scan"]).is_phantom
    derived = volumes["phantom"].with_name("heat.nii.gz")
    save_volume(derived, np.zeros(vol.shape, np.float32), like=vol)
    assert load_volume(derived).is_phantom


def test_phantom_models_warn_on_other_volumes_only():
    seg, loc = load_segmenter("phantom", device="cpu"), load_localizer("default", device="cpu")
    assert phantom_model_warnings(True, seg, loc) == []
    seg_warning, loc_warning = phantom_model_warnings(False, seg, loc)
    assert "synthetic abdominal phantom" in seg_warning and "LiteMedSAM" in seg_warning
    assert "synthetic abdominal phantom" in loc_warning and CLASSES in loc_warning
    assert "--roi segmenter" in loc_warning


def test_provenance_names_models_and_training_data():
    seg, loc = load_segmenter("phantom", device="cpu"), load_localizer("default", device="cpu")
    rec = model_provenance(seg, loc)
    assert rec["segmenter"] == "phantom" and rec["localizer"] == "default"
    assert "synthetic abdominal phantom" in rec["segmenter_trained_on"]
    assert "synthetic abdominal phantom" in rec["localizer_trained_on"]


@pytest.mark.parametrize("prompt,resolved,match", [
    ("liver", "liver", "exact"),
    ("The Liver", "liver", "exact"),
    ("hepatic region", "liver", "synonym"),
    ("kidney on the left side", "left kidney", "words"),
])
def test_known_prompts_resolve_and_say_how(prompt, resolved, match):
    r = load_localizer("default", device="cpu").resolve_prompt(prompt)
    assert (r.resolved, r.match, r.similarity) == (resolved, match, None)


@pytest.mark.parametrize("prompt", ["brain", "lateral ventricle", "white matter", "tumor"])
def test_unknown_prompts_are_errors_naming_the_classes(prompt):
    loc = load_localizer("default", device="cpu")
    with pytest.raises(ValueError, match=f"knows no class '{prompt}'; its classes: {CLASSES}"):
        loc.resolve_prompt(prompt)
    with pytest.raises(ValueError, match="knows no class"):
        loc.locate(np.zeros((32, 32)), prompt)
    mapped = loc.resolve_prompt(prompt, allow_similar=True)
    assert mapped.match == "similarity" and mapped.resolved in CLASSES and -1 <= mapped.similarity <= 1
    assert f"resolved to the localizer class {mapped.resolved!r}" in mapped.describe()
    assert f"{mapped.similarity:.2f}" in mapped.describe()


def test_roi_overlap_warning_hand_cases():
    roi = np.zeros((20, 20), bool)
    roi[2:6, 2:6] = True
    mask = np.zeros((20, 20), bool)
    mask[12:18, 12:18] = True
    assert roi_overlap_warning(roi, box=(1, 1, 8, 8), baseline_mask=roi) is None
    assert "the box prompt or the baseline segmentation" in roi_overlap_warning(roi, (10, 10, 19, 19), mask)
    assert "overlap the baseline segmentation:" in roi_overlap_warning(roi, (0, 0, 19, 19), mask)
    assert "overlap the box prompt:" in roi_overlap_warning(roi, (6, 6, 19, 19), None)
    assert roi_overlap_warning(np.zeros((20, 20), bool), (0, 0, 5, 5), mask) is None  # empty ROI: another error


def _explain(path, out, *extra):
    return main(["explain", str(path), "--slice", "2", "--box", "8", "8", "56", "56", "--out", str(out),
                 *FAST, *extra])


def test_cli_warns_for_phantom_models_on_a_real_scan_and_records_it(volumes, tmp_path, capsys):
    assert _explain(volumes["scan"], tmp_path / "o", "--prompt", "liver") == 0
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert any("segmenter 'phantom' was trained on a synthetic abdominal phantom" in w for w in warnings)
    assert any("localizer 'default' was trained on a synthetic abdominal phantom" in w for w in warnings)
    records = json.loads((tmp_path / "o" / "metrics.json").read_text())
    for r in records:
        assert len([w for w in r["warnings"] if "synthetic abdominal phantom" in w]) == 2
        assert r["segmenter"] == "phantom" and r["prompt_class"] == "liver" and r["prompt_match"] == "exact"


def test_cli_is_quiet_on_the_phantom(volumes, tmp_path, capsys):
    assert _explain(volumes["phantom"], tmp_path / "o", "--prompt", "liver") == 0
    assert "warning:" not in capsys.readouterr().err
    assert all(r["warnings"] == [] for r in json.loads((tmp_path / "o" / "metrics.json").read_text()))


def test_cli_refuses_an_unknown_prompt_before_writing(volumes, tmp_path, capsys):
    out = tmp_path / "o"
    assert _explain(volumes["scan"], out, "--prompt", "lateral ventricle") == 2
    err = capsys.readouterr().err
    assert f"error: the localizer 'default' knows no class 'lateral ventricle'; its classes: {CLASSES}" in err
    assert "warning: the localizer 'default' was trained on a synthetic abdominal phantom" in err
    assert "--prompt-match similar" in err
    assert not out.exists() or not any(out.iterdir())


def test_cli_shows_a_similarity_match(volumes, tmp_path, capsys):
    """The tiny phantom CLIP maps "tumor" to liver (on the slice); the match and its similarity are shown."""
    assert _explain(volumes["scan"], tmp_path / "o", "--prompt", "tumor", "--prompt-match", "similar") == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "prompt 'tumor' resolved to" in ln)
    assert line.startswith("warning: ") and "text similarity" in line
    rec = json.loads((tmp_path / "o" / "metrics.json").read_text())[0]
    assert rec["prompt"] == "tumor" and rec["prompt_match"] == "similarity"
    assert isinstance(rec["prompt_similarity"], float) and rec["prompt_class"] in CLASSES
    assert f"'{rec['prompt_class']}' (similarity, text similarity {rec['prompt_similarity']:.2f})" in line


def test_cli_notes_a_synonym(volumes, tmp_path, capsys):
    assert _explain(volumes["phantom"], tmp_path / "o", "--prompt", "hepatic region") == 0
    assert "note: prompt 'hepatic region' resolved to the localizer class 'liver' (synonym)" in capsys.readouterr().err


def test_cli_warns_when_the_roi_misses_the_segmentation(volumes, tmp_path, capsys):
    """ROI from the labels of one organ, box far from it: warned before the explainers, and recorded."""
    labels = load_volume(volumes["labels"]).data[2]
    ys, xs = np.nonzero(labels == 1)
    far = (0, 0, 6, 6) if ys.min() > 10 and xs.min() > 10 else (58, 58, 63, 63)
    code = main(["explain", str(volumes["phantom"]), "--slice", "2", "--box", *map(str, far),
                 "--labels", str(volumes["labels"]), "--organ", "liver", "--roi", "labels",
                 "--out", str(tmp_path / "o"), *FAST])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning: slice 2: the ROI does not overlap the box prompt" in err
    assert err.index("the ROI does not overlap") < err.index("occlusion (traditional)")
    rec = json.loads((tmp_path / "o" / "metrics.json").read_text())[0]
    assert any("does not overlap the box prompt" in w for w in rec["warnings"])


def test_cli_roi_from_the_segmenter(volumes, tmp_path):
    assert _explain(volumes["scan"], tmp_path / "o", "--roi", "segmenter") == 0
    rec = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert {r["roi_source"] for r in rec if r["mode"] == "roi"} == {"segmenter"}
    roi = load_volume(tmp_path / "o" / "roi.nii.gz").data[2] > 0
    seg = load_volume(tmp_path / "o" / "segmentation.nii.gz").data[2] > 0
    assert roi.sum() > seg.sum() and (roi | seg).sum() == roi.sum()   # the mask, grown by 8 px


@pytest.mark.litemedsam
def test_models_command_lists_both_segmenters_with_training_data_and_licence(capsys):
    assert main(["models", "--json"]) == 0
    rows = {(r["kind"], r["spec"]): r for r in json.loads(capsys.readouterr().out)}
    real, phantom = rows[("segmenter", "default")], rows[("segmenter", "phantom")]
    assert "LiteMedSAM" in real["description"] and "research use" in real["licence"]
    assert "MedSAM" in real["trained_on"] and real["input_size"] == 256 and real["gflops"] > 50
    assert "synthetic abdominal phantom" in phantom["trained_on"] and phantom["gflops"] < 1
    loc = rows[("localizer", "default")]
    assert loc["classes"][1:] == CLASSES.split(", ") and "synthetic abdominal phantom" in loc["trained_on"]


def test_a_label_number_prompts_the_localizer_with_its_name(volumes, tmp_path):
    code = main(["explain", str(volumes["phantom"]), "--slice", "2", "--labels", str(volumes["labels"]),
                 "--organ", "1", "--out", str(tmp_path / "o"), *FAST])
    assert code == 0
    rec = json.loads((tmp_path / "o" / "metrics.json").read_text())[0]
    assert (rec["prompt"], rec["prompt_class"], rec["roi_source"]) == ("liver", "liver", "localizer")
