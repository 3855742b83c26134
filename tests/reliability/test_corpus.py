"""Every case of the red-team corpus through ``xaiclip`` (``cli.main`` in this process): exit status 2,
one ``error:`` line naming the problem, no traceback, nothing written; a batch's bad row fails alone.
Then the inputs next to those refusals that must be accepted."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import traceback
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from corpus import (COMMANDS, CORPUS, SEVERITIES, BoxNet, batch, batch_row, ct_array, explain, labels_argv,
                    model_argv, save_nifti, tiny_sam_checkpoint, torchscript, two_member_gzip, write_manifest)
from napari_xaiclip.cli import main
from privileges import unprivileged

HEATMAP = "occlusion-traditional.nii.gz"


def run(argv, capsys):
    """(exit status, stdout, stderr) of ``xaiclip ARGV``; an exception escaping ``main`` is shown as
    Python would show it (a traceback, exit status 1). Dask's log lines are part of stderr: the worker
    processes of ``xaiclip batch`` print them on the user's terminal."""
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    handler.setLevel(logging.ERROR)  # what the batch's own cluster lets through (silence_logs=ERROR)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    logging.getLogger("distributed").addHandler(handler)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    except Exception:  # noqa: BLE001 - reported by the assertions, with the traceback
        traceback.print_exc()
        code = 1
    finally:
        logging.getLogger("distributed").removeHandler(handler)
    captured = capsys.readouterr()
    return code, captured.out, captured.err + logs.getvalue()


def snapshot(folder: Path) -> dict:
    """Every path under ``folder``: kind, permission bits, and contents (files) or target (links)."""
    seen = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(folder))
        if stat.S_ISLNK(st.st_mode):
            seen[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            seen[rel] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            seen[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return seen


def out_of(argv) -> Path | None:
    return Path(argv[argv.index("--out") + 1]) if "--out" in argv else None


@contextlib.contextmanager
def case_folder(entry, tmp_path):
    """``tmp_path``, or for a case run as another user a folder that user can enter (pytest's is 0700)."""
    if not entry.unprivileged:
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="xaiclip-corpus-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in [folder, *folder.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(folder)


def _writable(folder: Path) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            return True
    except OSError:
        return False


PARAMS = [pytest.param(e, id=e.id, marks=[pytest.mark.xfail(strict=True, reason=e.xfail)] if e.xfail else [])
          for e in CORPUS]


@pytest.mark.parametrize("entry", PARAMS)
def test_corpus(entry, request, tmp_path, inputs, capsys):
    if entry.command == "batch":
        inputs = replace(inputs, scheduler=request.getfixturevalue("dask_scheduler"))
    with case_folder(entry, tmp_path) as folder:
        argv = entry.build(folder, inputs)
        out = out_of(argv)
        existed = out is not None and os.path.lexists(out)
        before = snapshot(folder)
        with unprivileged() if entry.unprivileged else contextlib.nullcontext():
            if entry.unprivileged and _writable(out):
                pytest.skip("cannot run as a user without write permission here")
            code, stdout, stderr = run(argv, capsys)
        report = f"exit status {code}\n--- stdout\n{stdout}--- stderr\n{stderr}"
        assert "Traceback" not in stdout + stderr, report
        assert code == entry.status, report
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        if entry.status == 2:
            assert len(errors) == 1 and entry.fragment in errors[0], report
            assert snapshot(folder) == before  # no output, no debris; inputs and an existing --out untouched
            if out is not None and not existed:
                assert not os.path.lexists(out)
        else:
            assert not errors, report
            _check_batch(entry, out, stderr, report)
        if entry.silent:
            assert not list(folder.rglob("metrics.json")), "a refused input must leave no result"


def _check_batch(entry, out: Path, stderr: str, report: str) -> None:
    """The good rows finished with their results, the bad row is reported failed, naming the problem."""
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    status = {r["case"]: r["status"] for r in rows}
    for case_id in entry.done:
        assert status.get(case_id) == "done", (status, report)
        assert (out / "cases" / case_id / "done.json").is_file()
        assert (out / "cases" / case_id / HEATMAP).is_file()
    (bad,) = [r for r in rows if r["case"] == entry.failed]
    assert bad["status"] == "failed" and entry.fragment in bad["error"], (bad, report)
    assert any(line.startswith(f"failed: {entry.failed}: ") and entry.fragment in line
               for line in stderr.splitlines()), report
    assert entry.fragment in (out / "cases" / entry.failed / "error.txt").read_text()
    assert f"`{entry.failed}`" in (out / "report.md").read_text()


def test_the_table_is_well_formed():
    ids = [e.id for e in CORPUS]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    for e in CORPUS:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", e.id), e.id
        assert e.severity in SEVERITIES, e
        assert e.command in COMMANDS, e
        assert e.fragment, e
        assert e.status in (1, 2), e
        assert (e.status == 1) == bool(e.failed) and (e.status == 1 or not e.done), e
        assert e.status == 2 or e.command == "batch", e
    assert {e.severity for e in CORPUS} == set(SEVERITIES)


# --- next to the refusals: what must be accepted ---------------------------------------------------
def _heatmap(out: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(out / HEATMAP)).dataobj)


def test_a_two_member_gzip_loads_like_the_one_member_file(inputs, tmp_path, capsys):
    """``cat a.gz b.gz`` is a valid gzip file: it is explained, with the same result as the original."""
    two = two_member_gzip(tmp_path)
    code, _, err = run(explain(two, tmp_path / "two"), capsys)
    assert code == 0, err
    code, _, err = run(explain(inputs.ct, tmp_path / "one"), capsys)
    assert code == 0, err
    np.testing.assert_array_equal(_heatmap(tmp_path / "two"), _heatmap(tmp_path / "one"))


def test_a_box_far_over_the_edge_is_a_value_and_is_clipped(inputs, tmp_path, capsys):
    argv = explain(inputs.ct, tmp_path / "out")
    argv[argv.index("--box") + 1] = "-1e308"
    code, _, err = run(argv, capsys)
    assert code == 0 and "Traceback" not in err, err
    assert (tmp_path / "out" / HEATMAP).is_file()


def test_microscopic_voxels_are_a_valid_geometry(tmp_path, capsys):
    """1e-5 mm voxels give a tiny but invertible affine: not refused as "not invertible"."""
    ct = save_nifti(tmp_path / "micro.nii.gz", ct_array(), np.diag([1e-5, 1e-5, 1e-5, 1.0]))
    code, _, err = run(explain(ct, tmp_path / "out"), capsys)
    assert code == 0 and "not invertible" not in err, err
    assert (tmp_path / "out" / HEATMAP).is_file()


def test_a_rerun_runs_finished_cases_again_when_their_records_are_damaged(inputs, dask_scheduler, tmp_path,
                                                                          capsys):
    """An empty done.json or a corrupt metrics.json (a full disk, a killed worker) is a case to redo."""
    ins = replace(inputs, scheduler=dask_scheduler)
    argv = batch(write_manifest(tmp_path, batch_row("a", ins.ct), batch_row("b", ins.ct)), tmp_path / "out", ins)
    code, _, err = run(argv, capsys)
    assert code == 0, err
    cases = tmp_path / "out" / "cases"
    (cases / "a" / "done.json").write_text("")
    (cases / "b" / "metrics.json").write_text("{not json")
    code, _, err = run(argv, capsys)
    assert code == 0 and "Traceback" not in err, err
    assert "a/done.json: unreadable" in err and "b/metrics.json: unreadable" in err, err
    with open(tmp_path / "out" / "summary.csv", newline="") as fh:
        assert {r["case"]: r["status"] for r in csv.DictReader(fh)} == {"a": "done", "b": "done"}
    for case_id in ("a", "b"):
        assert json.loads((cases / case_id / "done.json").read_text())["case"] == case_id
        assert json.loads((cases / case_id / "metrics.json").read_text())[0]["method"] == "occlusion"


CONTROLS = {
    "labels": lambda folder, ins: labels_argv(folder, ins, ins.labels),
    "torchscript": lambda folder, ins: model_argv(folder, ins, "torchscript:" + str(
        torchscript(folder, BoxNet(), {"input_size": 32, "box": "channel"}))),
    "sam-checkpoint": lambda folder, ins: model_argv(folder, ins, str(tiny_sam_checkpoint(folder))),
}


@pytest.mark.parametrize("name", list(CONTROLS))
def test_the_corpus_inputs_work_before_they_are_broken(name, inputs, tmp_path, capsys):
    """The labels and model files the corpus breaks are explained when intact, so each refusal is the
    breakage's."""
    code, _, err = run(CONTROLS[name](tmp_path, inputs), capsys)
    assert code == 0, err
    assert (tmp_path / "out" / HEATMAP).is_file() and (tmp_path / "out" / "metrics.json").is_file()

