"""Label tables, ``--organ`` names and label volumes (``napari_xaiclip.labels``), and the CLI flags
``--label-names`` / ``--labels-threshold`` end to end."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_xaiclip.cli import main
from napari_xaiclip.labels import FLARE22_NAMES, label_table, labels_from_volume, organ_value, read_label_names
from napari_xaiclip.phantom import ORGAN_NAMES, make_phantom


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


# --- FLARE22 names --------------------------------------------------------------------------
def test_flare22_table_and_phantom_agree():
    assert list(FLARE22_NAMES) == list(range(1, 14))
    assert FLARE22_NAMES[6] == "inferior vena cava" and FLARE22_NAMES[13] == "left kidney"
    assert ORGAN_NAMES == {k: FLARE22_NAMES[k] for k in (1, 2, 3, 4, 5, 11, 13)}


def test_jobs_keeps_organ_value():
    from napari_xaiclip.jobs import organ_value as from_jobs

    assert from_jobs is organ_value


# --- read_label_names -----------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "1,tumour\n2,cyst\n",
    "value,name\n1,tumour\n2,cyst\n",
    "# my labels\nname;value\ntumour;1\ncyst;2\n",     # header names the columns, any order
    "\ufeffnumber,name,colour\n1,tumour,red\n\n2,cyst,blue\n",  # BOM, extra column, blank line
    "1\ttumour\n2\tcyst\n",
])
def test_csv_tables(tmp_path, text):
    assert read_label_names(_write(tmp_path, "t.csv", text)) == {1: "tumour", 2: "cyst"}


def test_colour_tables(tmp_path):
    slicer = "# Color table file\n0 Background 0 0 0 0\n1 tumour 255 0 0 255\n2 left_kidney 0 255 0 255\n"
    assert read_label_names(_write(tmp_path, "s.ctbl", slicer)) == {0: "Background", 1: "tumour", 2: "left_kidney"}
    itk = ('# ITK-SNAP Label Description File\n'
           '    0     0    0    0        0  0  0    "Clear Label"\n'
           '    1   255    0    0        1  1  1    "Liver, whole"\n')
    assert read_label_names(_write(tmp_path, "l.txt", itk)) == {0: "Clear Label", 1: "Liver, whole"}


@pytest.mark.parametrize("obj", [
    {"1": "tumour", "2": "cyst"},
    [{"value": 1, "name": "tumour"}, {"value": 2, "name": "cyst"}],
    {"labels": {"background": 0, "tumour": 1, "cyst": 2}},  # nnU-Net v2 dataset.json
])
def test_json_tables(tmp_path, obj):
    names = read_label_names(_write(tmp_path, "t.json", json.dumps(obj)))
    assert {k: v for k, v in names.items() if k} == {1: "tumour", 2: "cyst"}


@pytest.mark.parametrize("name, text, message", [
    ("bad.csv", "1,liver\ntwo,spleen\n", "bad.csv line 2: label number 'two'"),
    ("neg.csv", "1,liver\n-3,spleen\n", "line 2: label number '-3' is not a whole number"),
    ("empty_name.csv", "1,liver\n3,\n", "line 2: label 3 has no name"),
    ("one_col.csv", "1,liver\n3\n", "line 2: '3' is not 'NUMBER,NAME'"),
    ("dup.csv", "1,liver\n1,spleen\n", "line 2: label 1 is already named 'liver' (line 1)"),
    ("dupname.csv", "1,kidney_left\n2,Left Kidney\n", "line 2: name 'Left Kidney' is already used by label 1"),
    ("blank.csv", "# nothing\n\n", "no labels found"),
    ("bad.json", '{"1": "liver",}', "bad.json: not valid JSON"),
    ("list.json", '[{"value": 1}]', "list.json: JSON entry 0"),
    ("key.json", '{"one": "liver"}', "key.json entry 'one': label number 'one'"),
    ("scalar.json", "3", "JSON must be an object"),
])
def test_bad_tables_name_the_file_and_line(tmp_path, name, text, message):
    with pytest.raises(ValueError) as exc:
        read_label_names(_write(tmp_path, name, text))
    assert message in str(exc.value) and name in str(exc.value), str(exc.value)


def test_missing_and_binary_tables(tmp_path):
    with pytest.raises(ValueError, match="no such label table file"):
        read_label_names(tmp_path / "nope.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        read_label_names(tmp_path / "bin.csv")


def test_label_table_adds_to_and_overrides_flare22(tmp_path):
    names = label_table(_write(tmp_path, "t.csv", "1,tumour\n20,cyst\n"))
    assert names[1] == "tumour" and names[20] == "cyst" and names[3] == "spleen"
    assert organ_value("tumour", names) == 1 and organ_value("cyst", names) == 20
    with pytest.raises(ValueError, match="unknown organ 'liver'"):
        organ_value("liver", names)  # 1 was renamed
    # a user's name equal to a FLARE22 name on another number wins
    assert organ_value("liver", label_table(_write(tmp_path, "u.csv", "14,liver\n"))) == 14


# --- organ_value ----------------------------------------------------------------------------
@pytest.mark.parametrize("organ, value", [
    ("liver", 1), ("Liver", 1), (" SPLEEN ", 3), ("right_kidney", 2), ("left-kidney", 13), ("kidney_left", 13),
    ("Kidney R", 2), ("IVC", 6), ("inferior_vena_cava", 6), ("vena cava", 6), ("gall bladder", 9),
    ("Gallbladder", 9), ("oesophagus", 10), ("esophagus", 10), ("adrenal_gland_left", 8), ("right adrenal", 7),
    ("duodenum", 12), ("5", 5), (" 11 ", 11), ("42", 42), (7, 7),
])
def test_organ_names_synonyms_and_numbers(organ, value):
    assert organ_value(organ, FLARE22_NAMES) == value


@pytest.mark.parametrize("organ", ["0", 0, "background"])
def test_background_is_refused(organ):
    with pytest.raises(ValueError, match="background"):
        organ_value(organ, {**FLARE22_NAMES, 0: "background"})


def test_negative_number_refused():
    with pytest.raises(ValueError, match="label numbers are 1 or more"):
        organ_value("-4", FLARE22_NAMES)


def test_unknown_name_lists_the_known_names():
    with pytest.raises(ValueError) as exc:
        organ_value("livr", FLARE22_NAMES)
    msg = str(exc.value)
    assert msg.startswith("unknown organ 'livr' (did you mean 'liver'?)")
    assert all(f"{k} {v}" in msg for k, v in FLARE22_NAMES.items()) and "or a label number" in msg


# --- labels_from_volume ---------------------------------------------------------------------
def test_probability_map_is_refused_with_the_threshold_hint():
    prob = np.array([[0.0, 0.2], [0.7, 1.0]], np.float32)
    with pytest.raises(ValueError) as exc:
        labels_from_volume(prob, source="prob.nii.gz")
    msg = str(exc.value)
    assert msg.startswith("prob.nii.gz:") and "probability map" in msg and "--labels-threshold T (e.g. 0.5)" in msg


def test_threshold_makes_binary_labels():
    prob = np.array([[0.0, 0.2], [0.5, 0.9]], np.float32)
    out = labels_from_volume(prob, threshold=0.5)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[0, 0], [1, 1]])
    np.testing.assert_array_equal(labels_from_volume(prob, threshold=0.1), [[0, 1], [1, 1]])


def test_integer_valued_float_volume_is_accepted():
    data = np.array([0.0, 1.0, 13.0, 2.0000002, 4.9999995], np.float32)  # NIfTI scaling leaves tiny errors
    out = labels_from_volume(data)
    assert out.dtype == np.int32 and out.tolist() == [0, 1, 13, 2, 5]
    assert labels_from_volume(np.array([0, 3], np.uint8)).tolist() == [0, 3]
    assert labels_from_volume(np.array([0.0, 1.0], np.float32)).tolist() == [0, 1]  # a binary mask as floats


def test_other_non_integer_volumes_are_refused():
    with pytest.raises(ValueError, match=r"non-integer values \(-3 to 7.5\)"):
        labels_from_volume(np.array([-3.0, 7.5]), source="x.nii")
    with pytest.raises(ValueError, match="NaN"):
        labels_from_volume(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="finite number"):
        labels_from_volume(np.array([1.0]), threshold=float("nan"))


# --- CLI end to end -------------------------------------------------------------------------
SHAPE = (4, 48, 48)
FAST = ["--model", "phantom", "--localizer", "phantom", "--param", "occlusion.window=48",
        "--param", "occlusion.stride=48", "--no-curves"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Phantom CT, its labels renumbered (liver -> 21), and the liver's probability map, as NIfTI."""
    folder = tmp_path_factory.mktemp("labels")
    vol, labels, _ = make_phantom(shape=SHAPE, seed=3)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    renumbered = np.where(labels == 1, 21, labels).astype(np.int16)
    prob = np.clip((labels == 1) * 0.8 + 0.1, 0, 1).astype(np.float32)
    paths = {}
    for name, data in (("ct", vol.data.astype(np.float32)), ("labels", renumbered), ("prob", prob)):
        paths[name] = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), paths[name])
    paths["names"] = _write(folder, "names.csv", "value,name\n21,whole liver\n")
    return paths


def _explain(paths, out, *extra):
    return main(["explain", str(paths["ct"]), "--labels", *extra, "--roi", "labels", "--mode", "both",
                 "--method", "occlusion", "--out", str(out), *FAST])


def test_cli_label_names_maps_a_custom_name(case, tmp_path, capsys):
    out = tmp_path / "named"
    code = _explain(case, out, str(case["labels"]), "--label-names", str(case["names"]), "--organ", "Whole_Liver")
    assert code == 0, capsys.readouterr().err
    records = json.loads((out / "metrics.json").read_text())
    assert [r["mode"] for r in records] == ["traditional", "roi"]
    assert records[0]["dice_vs_gt"] is not None
    assert (out / "roi.nii.gz").is_file()


def test_cli_absent_organ_lists_the_values_present(case, tmp_path, capsys):
    out = tmp_path / "absent"
    code = _explain(case, out, str(case["labels"]), "--organ", "liver")  # liver is 21 in this file
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "organ 'liver' (label 1) is not in" in err[0]
    assert "2 right kidney, 3 spleen" in err[0] and "21" in err[0]
    assert not out.exists() or not any(out.rglob("*"))


def test_cli_probability_map_needs_a_threshold(case, tmp_path, capsys):
    out = tmp_path / "prob"
    code = _explain(case, out, str(case["prob"]), "--organ", "liver")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:")
    assert "prob.nii.gz" in err[0] and "--labels-threshold" in err[0]
    assert not out.exists() or not any(out.rglob("*"))

    code = _explain(case, out, str(case["prob"]), "--labels-threshold", "0.5", "--organ", "liver")
    assert code == 0, capsys.readouterr().err
    records = json.loads((out / "metrics.json").read_text())
    assert len(records) == 2 and records[0]["dice_vs_gt"] is not None


def test_cli_label_flags_need_labels(case, tmp_path, capsys):
    code = main(["explain", str(case["ct"]), "--slice", "1", "--box", "1", "1", "20", "20",
                 "--label-names", str(case["names"]), "--roi", "none", "--mode", "traditional",
                 "--out", str(tmp_path / "o"), *FAST])
    assert code == 2 and "--label-names needs --labels" in capsys.readouterr().err


def test_manifest_columns(case, tmp_path):
    from napari_xaiclip.manifest import read_manifest

    manifest = _write(tmp_path, "m.csv",
                      "case,volume,labels,organ,label_names,labels_threshold\n"
                      f"a,{case['ct']},{case['labels']},whole liver,{case['names']},\n"
                      f"b,{case['ct']},{case['prob']},liver,,0.5\n"
                      f"c,{case['ct']},{case['labels']},tumour,{case['names']},\n")
    a, b, c = read_manifest(manifest)
    assert a.error is None and a.case.label_names == str(case["names"]) and a.case.labels_threshold is None
    assert b.error is None and b.case.labels_threshold == 0.5
    assert c.error.startswith("unknown organ 'tumour'") and "21 whole liver" in c.error
    bad = _write(tmp_path, "bad.csv", f"volume,labels,organ,labels_threshold\n{case['ct']},{case['prob']},liver,half\n")
    (row,) = read_manifest(bad)   # the row fails alone, naming its line
    assert row.case_id == "line2" and row.error == "bad.csv line 2: labels_threshold must be a number, got 'half'"
