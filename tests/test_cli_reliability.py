"""The command line's error contract beyond bad inputs: unwritable outputs, signals, argparse errors,
deprecation warnings and staging left by killed runs. One ``error:``/``warning:`` line each, no debris."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_xaiclip.cli import main
from napari_xaiclip.jobs import PARTIAL_PREFIX, remove_stale_staging

CASE = ["--slice", "1", "--box", "4", "4", "20", "20", "--roi", "none", "--mode", "traditional",
        "--model", "phantom", "--param", "occlusion.window=64", "--param", "occlusion.stride=64", "--no-curves"]


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    data = np.random.default_rng(0).normal(40, 20, (32, 32, 3)).astype(np.float32)  # file order: 3 axial slices
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
    return path


def _err(capsys):
    """The error lines (the phantom model's warning about real scans comes before them)."""
    return [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("warning:")]


def test_out_is_an_existing_file(ct, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    assert main(["explain", str(ct), *CASE, "--out", str(out)]) == 2
    err = _err(capsys)
    assert len(err) == 1 and err[0].startswith("error:") and "taken" in err[0], err
    assert out.read_text() == "not a folder"


def test_out_under_a_read_only_folder(ct, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["explain", str(ct), *CASE, "--out", str(locked / "out")]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "Permission denied" in err[0], err


def test_out_under_a_file(ct, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["explain", str(ct), *CASE, "--out", str(tmp_path / "file" / "out")]) == 2
    err = _err(capsys)
    assert len(err) == 1 and err[0].startswith("error:") and "file" in err[0], err


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--slice", "x"])
    assert exc.value.code == 2
    err = _err(capsys)
    assert len(err) == 1 and err[0].startswith("error: xaiclip explain:") and "--help" in err[0], err


def test_a_deprecated_parameter_name_is_one_warning_line(ct, tmp_path, capsys):
    args = [a.replace("occlusion.window", "occlusion.patch") for a in CASE]
    assert main(["explain", str(ct), *args, "--out", str(tmp_path / "out")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert "warning: occlusion.patch is deprecated; use occlusion.window" in warnings


def test_stale_staging_of_a_dead_run_is_removed_and_a_live_one_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{PARTIAL_PREFIX}{int(dead.stdout)}-abc"
    live = tmp_path / f"{PARTIAL_PREFIX}{os.getpid()}-def"
    legacy = tmp_path / f"{PARTIAL_PREFIX}q1w2e3"  # named before the pid was part of the name
    for d in (stale, live, legacy):
        (d / "x.png").parent.mkdir()
        (d / "x.png").write_bytes(b"partial")
    remove_stale_staging(tmp_path)
    assert not stale.exists() and not legacy.exists() and live.exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_terminated_run_leaves_no_staging_folder(ct, tmp_path, sig):
    out = tmp_path / "out"
    slow = [a for a in CASE if a != "--no-curves"]
    slow = [a.replace("occlusion.window=64", "occlusion.window=4").replace("occlusion.stride=64",
                                                                           "occlusion.stride=1") for a in slow]
    exe = Path(sys.executable).with_name("xaiclip")
    proc = subprocess.Popen([str(exe), "explain", str(ct), *slow, "--out", str(out)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(out.glob(f"{PARTIAL_PREFIX}*")):
        time.sleep(0.2)
    assert any(out.glob(f"{PARTIAL_PREFIX}*")), "the run never started staging"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"interrupted by {sig.name}" in err.strip().splitlines()[-1]
    assert not any(out.glob(f"{PARTIAL_PREFIX}*"))


@pytest.mark.parametrize("args, says", [
    (["--box", "-inf", "4", "20", "20"], "box must be 4 finite numbers"),
    (["--slices", "-1:2"], "0 <= a < b"),
], ids=["box-inf", "slices-1:2"])
def test_negative_values_are_values_not_options(ct, tmp_path, capsys, args, says):
    """argparse would read ``-inf`` or ``-1:2`` as an unknown option; they are values with their own error."""
    case = [a for a in CASE if a not in ("--slice", "1")] if args[0] == "--slices" else list(CASE)
    if args[0] == "--box":
        i = case.index("--box")
        del case[i:i + 5]
    out = tmp_path / "out"
    assert main(["explain", str(ct), *case, *args, "--out", str(out)]) == 2
    err = _err(capsys)
    assert len(err) == 1 and err[0].startswith("error:") and says in err[0].lower(), err
    assert not out.exists()


def test_a_box_far_over_the_edge_is_a_value_and_is_clipped(ct, tmp_path, capsys):
    """``--box -1e308 4 20 20`` parses (argparse took it for an option) and is clipped to the slice."""
    case = list(CASE)
    i = case.index("--box")
    case[i + 1] = "-1e308"
    assert main(["explain", str(ct), *case, "--out", str(tmp_path / "out")]) == 0
    assert not [line for line in _err(capsys) if line.startswith("error")]
    assert (tmp_path / "out" / "occlusion-traditional.nii.gz").is_file()


def test_a_busy_out_folder_is_refused_and_left_as_it_was(ct, tmp_path, capsys):
    from napari_xaiclip.jobs import claimed_output

    out = tmp_path / "out"
    with claimed_output(out):   # another run holds the folder
        assert main(["explain", str(ct), *CASE, "--out", str(out)]) == 2
        err = _err(capsys)
        assert len(err) == 1 and "another xaiclip run is writing into" in err[0], err
        assert [p.name for p in out.iterdir()] == [".xaiclip.lock"]
    assert out.is_dir() and not any(out.iterdir())   # the lock goes with the run that held it
    assert main(["explain", str(ct), *CASE, "--out", str(out)]) == 0   # free again


def test_a_late_error_leaves_no_empty_out_folder(ct, tmp_path, capsys, monkeypatch):
    import napari_xaiclip.jobs as jobs

    def fail(*args, **kwargs):
        raise ValueError("found late")

    monkeypatch.setattr(jobs, "_run", fail)
    out = tmp_path / "new" / "out"
    assert main(["explain", str(ct), *CASE, "--out", str(out)]) == 2
    assert _err(capsys) == ["error: found late"]
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert main(["explain", str(ct), *CASE, "--out", str(kept)]) == 2
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]   # a folder it did not create stays


def test_a_rerun_with_other_methods_replaces_the_results_as_a_set(ct, tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "out").mkdir()
    (out / "notes.txt").write_text("mine")
    two = [*CASE, "--method", "occlusion", "gradcam"]
    assert main(["explain", str(ct), *two, "--out", str(out)]) == 0
    assert (out / "gradcam-traditional.nii.gz").is_file() and (out / "gradcam-traditional.png").is_file()
    capsys.readouterr()
    assert main(["explain", str(ct), *CASE, "--method", "occlusion", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["metrics.csv", "metrics.json", "notes.txt", "occlusion-traditional.nii.gz",
                     "occlusion-traditional.png", "segmentation.nii.gz"], names
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert any("removed 2 file(s)" in n and "gradcam-traditional.nii.gz" in n for n in notes), notes
