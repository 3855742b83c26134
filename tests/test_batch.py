"""``xaiclip batch`` on Dask: same numbers as a serial run, resumable, failures isolated, worker deaths
survived with every case done exactly once; manifest errors refused before anything is written."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_xaiclip import batch as batch_mod
from napari_xaiclip.batch import ManifestError, read_manifest, run_batch
from napari_xaiclip.cli import main
from napari_xaiclip.io import load_volume, save_volume
from napari_xaiclip.jobs import Case, run_case
from napari_xaiclip.phantom import make_phantom

SHAPE = (6, 64, 64)
PARAMS = {"occlusion": {"window": 128, "stride": 64}}
CASES = [("p0", 0, "liver"), ("p1", 1, "liver"), ("p2", 2, "spleen"), ("p3", 3, "liver")]
HEADER = "case,volume,labels,organ,roi,methods,modes,seed,params,curves,model"


def _row(case_id, seed, organ):
    return (f"{case_id},vol{seed}.nii.gz,lab{seed}.nii.gz,{organ},labels,occlusion,both,{seed},"
            "occlusion.window=128;occlusion.stride=64,no,phantom")


def _case(folder: Path, case_id, seed, organ) -> Case:
    return Case(volume=str(folder / f"vol{seed}.nii.gz"), labels=str(folder / f"lab{seed}.nii.gz"), organ=organ,
                roi="labels", methods=["occlusion"], modes=("traditional", "roi"), seed=seed,
                params=PARAMS, curves=False, name=case_id, model="phantom")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four phantom cases and a manifest with a fifth, bad row (an organ that does not exist)."""
    folder = tmp_path_factory.mktemp("cohort")
    for _, seed, _ in CASES:
        vol, labels, _ = make_phantom(shape=SHAPE, seed=seed)
        save_volume(folder / f"vol{seed}.nii.gz", vol.data, like=vol)
        save_volume(folder / f"lab{seed}.nii.gz", labels, like=vol)
    rows = [_row(*c) for c in CASES] + [_row("bad", 0, "unicorn")]
    (folder / "manifest.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    (folder / "four.csv").write_text("\n".join([HEADER, *rows[:4]]) + "\n")
    return folder


@pytest.fixture(scope="module")
def serial(cohort, tmp_path_factory):
    """Reference: run_case on each case in this process, one torch thread like a batch worker."""
    out = tmp_path_factory.mktemp("serial")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {cid: (run_case(_case(cohort, cid, seed, organ), out / cid), out / cid) for cid, seed, organ in CASES}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch")
    t0 = time.perf_counter()
    summary = run_batch(cohort / "manifest.csv", out, workers=2, progress=False)
    return summary, out, time.perf_counter() - t0


def _strip(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "roi_seconds", "total_seconds", "status", "error")} for r in records]


def _same_records(got, want):
    assert len(got) == len(want)
    for g, w in zip(_strip(got), _strip(want)):
        assert set(g) == set(w)
        for k in w:
            if isinstance(w[k], float):
                assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), k
            else:
                assert g[k] == w[k], k


@pytest.mark.slow
def test_batch_on_two_workers_matches_serial_run(batch, serial):
    summary, out, _ = batch
    assert summary["workers"] == 2
    assert (summary["cases"], summary["done"], summary["skipped"], summary["failed"]) == (5, 4, 0, 1)
    for cid, (records, serial_dir) in serial.items():
        got = [r for r in summary["records"] if r["case"] == cid]
        assert [r["status"] for r in got] == ["done", "done"]
        _same_records(got, records)
        _same_records(json.loads((out / "cases" / cid / "metrics.json").read_text()), records)
        for mode in ("traditional", "roi"):
            a = load_volume(out / "cases" / cid / f"occlusion-{mode}.nii.gz").data
            b = load_volume(serial_dir / f"occlusion-{mode}.nii.gz").data
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        done = json.loads((out / "cases" / cid / "done.json").read_text())
        assert done["torch_threads"] == 1 and done["pid"] != os.getpid()


@pytest.mark.slow
def test_failed_case_is_recorded_and_others_finish(batch):
    summary, out, _ = batch
    assert list(summary["failures"]) == ["bad"]
    assert "unknown organ 'unicorn'" in summary["failures"]["bad"]
    assert "unknown organ 'unicorn'" in (out / "cases" / "bad" / "error.txt").read_text()
    assert not (out / "cases" / "bad" / "done.json").exists()
    for cid, _, _ in CASES:
        assert (out / "cases" / cid / "done.json").is_file()
        assert not (out / "cases" / cid / "error.txt").exists()
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["case"], r["mode"]) for r in rows if r["status"] != "failed"] == [
        (cid, m) for cid, _, _ in CASES for m in ("traditional", "roi")]
    bad = [r for r in rows if r["case"] == "bad"]
    assert len(bad) == 1 and bad[0]["status"] == "failed" and "unicorn" in bad[0]["error"]
    report = (out / "report.md").read_text()
    assert "| occlusion | roi | 4 |" in report and "`bad`" in report
    assert {(a["method"], a["mode"], a["n"]) for a in summary["aggregates"]} == {
        ("occlusion", "traditional", 4), ("occlusion", "roi", 4)}
    assert not list(out.glob("cases/*/.xaiclip-partial-*"))


@pytest.mark.slow
def test_rerun_skips_finished_cases(batch, cohort, monkeypatch):
    summary, out, _ = batch
    files = sorted(p for p in (out / "cases").rglob("*") if p.is_file() and "bad" not in p.parts)
    stamps = {p: p.stat().st_mtime_ns for p in files}

    def no_cluster(*args, **kwargs):
        raise AssertionError("a rerun with every valid case done must not start any task")

    monkeypatch.setattr(batch_mod, "_connect", no_cluster)
    again = run_batch(cohort / "manifest.csv", out, workers=2, progress=False)
    assert (again["done"], again["skipped"], again["failed"]) == (0, 4, 1)
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    assert _strip([r for r in again["records"] if r["status"] == "skipped"]) == _strip(
        [r for r in summary["records"] if r["status"] == "done"])


@pytest.mark.slow
def test_killed_worker_still_yields_every_case_exactly_once(cohort, serial, tmp_path):
    from distributed import Client, LocalCluster

    out = tmp_path / "out"
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    try:
        pids = client.run(os.getpid)
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(run_batch(
            cohort / "four.csv", out, scheduler=cluster.scheduler_address, progress=False, torch_threads=1)))
        runner.start()
        killed = None
        deadline = time.monotonic() + 180
        while killed is None and time.monotonic() < deadline and runner.is_alive():
            if list(out.glob("cases/*/done.json")):
                for addr, keys in client.processing().items():
                    running = [k for k in keys if not (out / "cases" / _case_of(k) / "done.json").exists()]
                    if running and addr in pids:
                        killed = (addr, pids[addr], _case_of(running[0]))
                        os.kill(pids[addr], signal.SIGKILL)  # the worker process dies mid-case
                        break
            time.sleep(0.05)
        runner.join(timeout=300)
        assert not runner.is_alive()
        assert killed is not None, "no worker was busy after the first case finished"
        assert killed[0] not in client.scheduler_info()["workers"]
    finally:
        client.close()
        cluster.close()
    assert (result["done"], result["failed"]) == (4, 0)
    for cid, _, _ in CASES:
        assert len(list((out / "cases" / cid).glob("done.json"))) == 1
        _same_records(json.loads((out / "cases" / cid / "metrics.json").read_text()), serial[cid][0])
    # the case that was running when its worker died was finished by another process
    assert json.loads((out / "cases" / killed[2] / "done.json").read_text())["pid"] != killed[1]
    with open(out / "summary.csv", newline="") as fh:
        keys = [(r["case"], r["method"], r["mode"]) for r in csv.DictReader(fh)]
    assert sorted(keys) == sorted((cid, "occlusion", m) for cid, _, _ in CASES for m in ("traditional", "roi"))
    assert not list(out.glob("cases/*/.xaiclip-partial-*"))


def _case_of(key) -> str:
    """Case id from a task key ``xaiclip-case-<case>-<run id>``."""
    return str(key)[len("xaiclip-case-"):].rsplit("-", 1)[0]


# --- manifest errors: exit 2, one error line, nothing written ------------------
BAD_MANIFESTS = {
    "missing": None,
    "empty": "",
    "header only": HEADER + "\n",
    "no volume column": "case,labels\na,lab0.nii.gz\n",
    "not a CSV": b"\x1f\x8b\x08\x00\xff\xfe\x00binary",
    "unknown column": "case,volume,organn\na,vol0.nii.gz,liver\n",
}
MESSAGES = {"missing": "no such manifest", "empty": "empty manifest", "header only": "no cases",
            "no volume column": "no 'volume' column", "not a CSV": "not a CSV", "unknown column": "organn"}


@pytest.mark.parametrize("name", list(BAD_MANIFESTS))
def test_bad_manifest_is_an_input_error(name, cohort, tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    content = BAD_MANIFESTS[name]
    if isinstance(content, bytes):
        manifest.write_bytes(content)
    elif content is not None:
        manifest.write_text(content.replace("vol0", str(cohort / "vol0")).replace("vol1", str(cohort / "vol1")))
    out = tmp_path / "out"
    assert main(["batch", str(manifest), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and MESSAGES[name] in err[0], err
    assert not out.exists()


# --- a bad row fails alone, with its line number; the good rows run -----------
BAD_ROWS = {
    "unknown roi": ("roi", "brain", "roi 'brain'"),
    "unknown mode": ("modes", "sideways", "unknown mode 'sideways'"),
    "unknown method": ("methods", "occlusion;magic", "unknown method 'magic'"),
    "bad box": ("box", "1 2 3", "box must be four numbers"),
    "bad slices": ("slices", "9:3", "slices must be"),
    "bad seed": ("seed", "zero", "seed must be an integer"),
    "unknown param": ("params", "occlusion.size=3", "unknown parameter 'size' for occlusion"),
    "bad case id": ("case", "../x", "names a folder"),
    "too many values": (None, None, "values for"),
    "duplicate case": ("case", "p0", "already used on line 2"),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_a_bad_row_fails_alone_with_its_line_and_the_batch_goes_on(name, cohort, tmp_path, capsys):
    column, value, message = BAD_ROWS[name]
    header = HEADER.split(",")
    extra = [column] if column and column not in header else []
    good = _row("p0", 0, "liver") + "," * len(extra)
    cells = dict(zip(header + extra, _row("p1", 1, "liver").split(",") + [""] * len(extra)))
    if column:
        cells[column] = value
    bad = ",".join(cells.values()) + (",extra" if name == "too many values" else "")
    manifest = cohort / f"bad-{name.replace(' ', '-')}.csv"
    manifest.write_text(f"{','.join(header + extra)}\n{good}\n{bad}\n")
    out = tmp_path / "out"
    assert main(["batch", str(manifest), "--out", str(out), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert f"line3: {manifest.name} line 3: " in err and message in err, err
    summary = {r["case"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert summary["line3"]["status"] == "failed" and message in summary["line3"]["error"]
    assert summary["p0"]["status"] == "done"
    assert message in (out / "cases" / "line3" / "error.txt").read_text()


def test_manifest_parsing(cohort, tmp_path):
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "sub" / "m.csv"
    manifest.write_text(
        "# a comment line\n"
        "Volume, box ,slices,methods,modes,params,curves,axis\n"
        "../scan one.nii.gz,1 2 30 40,3:5,occlusion rise,traditional,rise.n_samples=50;occlusion.window=32,no,1\n"
        "\n"
        f"{cohort / 'vol1.nii.gz'},,,,,,,\n")
    first, second = read_manifest(manifest)
    assert first.line == 3 and first.case_id == "scan_one"
    assert first.case.volume == str(tmp_path / "scan one.nii.gz")
    assert first.case.box == (1.0, 2.0, 30.0, 40.0) and first.case.slices == [3, 4] and first.case.axis == 1
    assert first.case.methods == ["occlusion", "rise"] and first.case.modes == ("traditional",)
    assert first.case.params == {"rise": {"n_samples": 50}, "occlusion": {"window": 32}}
    assert first.case.curves is False and "no such file" in first.error
    assert second.line == 5 and second.case_id == "vol1" and second.case.name == "vol1"
    assert second.error == "give a box or labels with an organ"
    assert second.case.modes == ("traditional", "roi") and second.case.methods == ["occlusion"]


def test_scheduler_unreachable_is_an_input_error(cohort, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(batch_mod, "SCHEDULER_TIMEOUT", "1s")
    out = tmp_path / "out"
    code = main(["batch", str(cohort / "four.csv"), "--out", str(out), "--scheduler", "tcp://127.0.0.1:9",
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: cannot reach the Dask scheduler"), err
    assert not out.exists()


def test_manifest_error_type():
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest("/nonexistent/manifest.csv")


def test_a_damaged_done_marker_reruns_that_case_and_no_other(batch, cohort, tmp_path, capsys):
    """An empty done.json (a disk that filled up) or a corrupt metrics.json must not abort the rerun."""
    import shutil

    _, out, _ = batch
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    first, second, third = (cid for cid, _, _ in CASES[:3])
    (copy / "cases" / first / "done.json").write_text("")
    (copy / "cases" / second / "metrics.json").write_text("{not json")
    rows = json.loads((copy / "cases" / third / "metrics.json").read_text())
    (copy / "cases" / third / "metrics.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "mode"}
                                                                     for r in rows]))
    again = run_batch(cohort / "four.csv", copy, workers=1, progress=False)
    assert (again["done"], again["skipped"], again["failed"]) == (3, 1, 0)
    err = capsys.readouterr().err
    assert f"{first}/done.json: unreadable" in err and f"{second}/metrics.json: unreadable" in err
    assert f"{third}/metrics.json: records without method or mode" in err
    assert json.loads((copy / "cases" / first / "done.json").read_text())["case"] == first


@pytest.mark.parametrize("text,message", [
    ("0:1000000000000", "more than 65536 slices"),
    ("-1:2", "0 <= A < B"),
    ("5:5", "0 <= A < B"),
])
def test_slice_ranges_are_checked_before_anything_is_allocated(text, message):
    from napari_xaiclip.jobs import parse_slices

    with pytest.raises(ValueError, match=message):
        parse_slices(text)


def test_a_case_id_too_long_for_a_folder_name_is_refused(cohort, tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"case,volume\n{'a' * 300},{cohort / 'vol0.nii.gz'}\n")
    assert main(["batch", str(manifest), "--out", str(tmp_path / "out")]) == 1   # the row fails, nothing crashes
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("failed: line2: m.csv line 2: case id of 300 characters") and "at most 100" in err[-1]
    assert (tmp_path / "out" / "cases" / "line2" / "error.txt").is_file()
