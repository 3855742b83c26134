"""Cohort runs on Dask (``xaiclip batch``): one explanation job per manifest row.

The manifest is a CSV file with one row per case (columns in
:data:`MANIFEST_COLUMNS`; only ``volume`` is required). Every case runs as one
``dask.distributed`` task calling :func:`napari_xaiclip.jobs.run_case`, which
stages its files and renames them into ``OUT/cases/<case>/`` only when the job
succeeded. A finished case then writes ``done.json`` last, so:

- a rerun skips every case whose ``done.json`` exists (resumable);
- a task rerun after its worker died finds the marker if the first attempt got
  that far, and otherwise redoes the case from scratch (outputs are promoted
  once per successful attempt, each file by an atomic rename);
- a case that fails writes ``error.txt`` (the error and its traceback) and the
  others go on.

At the end ``OUT/summary.csv`` has one row per case x slice x method x mode
(failed cases one row with their error), ``OUT/aggregates.csv`` and
``OUT/report.md`` the mean and standard deviation per method and mode.

Errors in the manifest file itself (missing or empty file, no ``volume`` column,
unknown or repeated columns) raise :class:`ManifestError` before anything is
written. A row that does not parse (a value that is not among the allowed ones,
too many values, a repeated or unusable case id) fails alone as case
``line<N>``, its error naming the manifest line; problems with a case's data
(missing or corrupt files, an organ that is unknown or absent, a box outside the
slice, an empty ROI) fail only that case. The other rows run either way.

Example
-------
>>> from napari_xaiclip.batch import read_manifest   # doctest: +SKIP
>>> rows = read_manifest("cohort.csv")               # doctest: +SKIP
>>> summary = run_batch("cohort.csv", "out", workers=2)   # doctest: +SKIP
>>> summary["done"], summary["failed"]               # doctest: +SKIP
(12, 0)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

import numpy as np

from .io import atomic_write_text
from .jobs import CASE_FIELDS, Case, claimed_output, remove_stale_staging, run_case
from .manifest import MANIFEST_COLUMNS, BatchRow, ManifestError, read_manifest

__all__ = ["AGGREGATE_FIELDS", "MANIFEST_COLUMNS", "SUMMARY_FIELDS", "BatchRow", "ManifestError",
           "read_manifest", "run_batch", "run_case_task"]

SUMMARY_FIELDS = ["case", "status"] + CASE_FIELDS + ["error"]
#: Metrics averaged per method and mode in aggregates.csv and report.md.
AGGREGATE_FIELDS = ("rho", "seconds", "n_forward", "dice_vs_baseline", "dice_vs_gt")
DONE, ERROR = "done.json", "error.txt"
#: How long to wait for a ``--scheduler`` to answer.
SCHEDULER_TIMEOUT = "15s"


# --- one case (runs on a worker) -------------------------------------------
def _read_records(case_dir: Path) -> list[dict]:
    f = case_dir / "metrics.json"
    return _read_json(f, []) if f.is_file() else []


def _read_json(path: Path, default):
    """The file's JSON, or ``default`` with a warning naming the file when it is empty or damaged
    (a disk that filled up, a worker killed mid-write): one bad file must not stop the batch."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"warning: {path}: unreadable ({exc}); the case is run again", file=sys.stderr)
        return None if default is None else default


def _finished(case_dir: Path) -> dict | None:
    """The case's ``done.json`` when it is readable and its metrics are too, else None (run it again)."""
    marker = case_dir / DONE
    if not marker.is_file():
        return None
    info = _read_json(marker, None)
    metrics = case_dir / "metrics.json"
    if not isinstance(info, dict) or (metrics.is_file() and not _valid_records(_read_json(metrics, None),
                                                                               metrics)):
        marker.unlink(missing_ok=True)
        return None
    return info


#: Fields every stored record needs for the summary and the aggregates.
RECORD_KEYS = ("method", "mode")


def _valid_records(records, path: Path) -> bool:
    """Whether stored metrics are a list of records with :data:`RECORD_KEYS` (warns naming the file if not)."""
    if records is None:
        return False   # _read_json has warned
    bad = not isinstance(records, list) or not all(
        isinstance(r, dict) and all(k in r for k in RECORD_KEYS) for r in records)
    if bad:
        print(f"warning: {path}: records without {' or '.join(RECORD_KEYS)}; the case is run again",
              file=sys.stderr)
    return not bad


def _record_failure(case_dir: Path, message: str, details: str = "") -> None:
    case_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(case_dir / ERROR, message + "\n" + (f"\n{details}" if details else ""))


def _torch_threads(requested: int | None) -> int:
    import torch

    n = requested
    if n is None:  # an existing cluster: share this machine's cores between the worker's task threads
        try:
            from distributed import get_worker

            n = max(1, (os.cpu_count() or 1) // max(1, get_worker().state.nthreads))
        except ValueError:  # not on a worker
            n = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


def run_case_task(case: Case, case_dir: str, run_id: str, torch_threads: int | None = None) -> dict:
    """Run one case into ``case_dir`` unless its ``done.json`` exists; never raises for a bad case.

    Returns ``{"case", "status" ("done" | "skipped" | "failed"), "records", "error", "seconds"}``.
    """
    d = Path(case_dir)
    info = _finished(d)
    if info is not None:  # finished before: in an earlier run, or by an attempt whose worker then died
        status = "done" if info.get("run_id") == run_id else "skipped"
        return {"case": case.name, "status": status, "records": _read_records(d), "error": None,
                "seconds": info.get("seconds")}
    threads = _torch_threads(torch_threads)
    t0 = time.perf_counter()
    try:
        records = run_case(case, d)
    except Exception as exc:  # noqa: BLE001 - recorded in error.txt and summary.csv, reported by run_batch
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _record_failure(d, message, traceback.format_exc())
        return {"case": case.name, "status": "failed", "records": [], "error": message,
                "seconds": time.perf_counter() - t0}
    seconds = time.perf_counter() - t0
    (d / ERROR).unlink(missing_ok=True)
    info = {"case": case.name, "run_id": run_id, "seconds": round(seconds, 3), "records": len(records),
            "host": socket.gethostname(), "pid": os.getpid(), "torch_threads": threads,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "job": case.to_dict()}
    atomic_write_text(d / DONE, json.dumps(info, indent=2, default=str) + "\n")
    return {"case": case.name, "status": "done", "records": records, "error": None, "seconds": seconds}


# --- the batch -------------------------------------------------------------
class _ProgressLine:
    """A text progress bar on a terminal, one line per finished case otherwise."""

    def __init__(self, total: int, enabled: bool, stream=None):
        self.total, self.enabled, self.stream = total, enabled, stream or sys.stderr
        self.done = self.failed = 0
        self.t0 = time.perf_counter()

    def start(self, n_workers: int) -> None:
        if self.enabled:
            end = "" if self.stream.isatty() else "\n"
            note = "" if n_workers else " (none yet: waiting for workers to join the scheduler)"
            print(f"[{'':<24}] 0/{self.total} cases on {n_workers} workers{note}", end=end, file=self.stream,
                  flush=True)

    def update(self, result: dict) -> None:
        self.done += 1
        self.failed += result["status"] == "failed"
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        left = elapsed / self.done * (self.total - self.done)
        bar = "#" * round(24 * self.done / max(1, self.total))
        text = (f"[{bar:<24}] {self.done}/{self.total} cases, {self.failed} failed, "
                f"{elapsed:.0f} s elapsed, ~{left:.0f} s left")
        if self.stream.isatty():
            print(f"\r{text:<79}", end="" if self.done < self.total else "\n", file=self.stream, flush=True)
        else:
            note = f": {result['error']}" if result["error"] else ""
            print(f"{text} ({result['case']} {result['status']}{note})", file=self.stream, flush=True)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _connect(workers, scheduler, retries: int, torch_threads: int | None):
    """(client, cluster or None, torch threads per task or None)."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout=SCHEDULER_TIMEOUT), None, torch_threads
        except (OSError, TimeoutError) as exc:
            raise ValueError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
    n = max(1, int(workers or min(2, _cores())))
    with dask.config.set({"distributed.scheduler.allowed-failures": max(0, int(retries))}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
    try:
        return Client(cluster), cluster, torch_threads or max(1, _cores() // n)
    except BaseException:
        cluster.close()
        raise


def run_batch(manifest, out, workers: int | None = None, scheduler: str | None = None, retries: int = 2,
              progress: bool = True, torch_threads: int | None = None) -> dict:
    """Run every case of ``manifest`` on Dask, writing into ``out``; returns a summary.

    Parameters
    ----------
    manifest : CSV file, see :func:`read_manifest`.
    out : output folder; cases go to ``out/cases/<case>/``.
    workers : worker processes of the local cluster (one task thread each, torch
        threads = cores // workers). Default: min(2, cores).
    scheduler : address of a running ``dask scheduler`` (e.g. ``tcp://host:8786``)
        to use instead of a local cluster; torch threads per task = the worker
        machine's cores // the worker's threads.
    retries : times a case is retried when its task errors outside the job or
        (local cluster) its worker dies. Default: 2.
    progress : print a progress line on stderr. Default: True.
    torch_threads : torch threads per task, overriding the defaults above.

    Returns
    -------
    dict with ``cases``, ``done``, ``skipped``, ``failed`` (counts), ``failures``
    (case -> error), ``records`` (summary rows), ``seconds``, ``cases_per_minute``
    (cases run in this call), ``workers`` and ``out``.

    Raises
    ------
    ManifestError, ValueError
        A bad manifest, an output path that is a file, an unreachable scheduler.
    """
    t0 = time.perf_counter()
    if workers is not None and scheduler is not None:
        raise ValueError("give --workers or --scheduler, not both")
    if workers is not None and int(workers) < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if torch_threads is not None and int(torch_threads) < 1:
        raise ValueError(f"--torch-threads must be at least 1, got {torch_threads}")
    rows = read_manifest(manifest)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    with claimed_output(out):   # a second batch into the same folder is refused, not mixed in
        _check_writable(out)
        return _run_rows(rows, manifest, out, workers, scheduler, retries, progress, torch_threads, t0)


def _check_writable(folder: Path) -> None:
    """Write (and remove) a probe file in ``folder`` before any case starts; OSError -> ValueError."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(f"--out: cannot write into {folder} ({exc.strerror or type(exc).__name__})") from None


def _run_rows(rows, manifest, out: Path, workers, scheduler, retries, progress, torch_threads, t0) -> dict:
    run_id = uuid.uuid4().hex[:12]
    cases_dir = out / "cases"
    results: dict[str, dict] = {}
    to_run = []
    for row in rows:
        d = cases_dir / row.case_id
        if _finished(d) is not None:
            results[row.case_id] = run_case_task(row.case, str(d), run_id)
        elif row.error:  # error.txt written after the run, so a batch that cannot start writes nothing
            results[row.case_id] = {"case": row.case_id, "status": "failed", "records": [], "error": row.error,
                                    "seconds": 0.0}
        else:
            to_run.append(row)
    bar = _ProgressLine(len(to_run), progress)
    if progress:
        print(f"{len(rows)} cases: {len(to_run)} to run, {sum(r['status'] == 'skipped' for r in results.values())} "
              f"already done, {sum(r['status'] == 'failed' for r in results.values())} invalid", file=sys.stderr)
    n_workers = 0
    if to_run:
        client = cluster = None
        try:
            client, cluster, threads = _connect(workers, scheduler, retries, torch_threads)
            n_workers = len(client.scheduler_info().get("workers", {}))
            bar.start(n_workers)
            results.update(_submit_all(client, to_run, cases_dir, run_id, threads, retries, bar))
        finally:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
    for row in rows:
        if row.error and results[row.case_id]["status"] == "failed":
            _record_failure(cases_dir / row.case_id, row.error)
        if (cases_dir / row.case_id).is_dir():  # staging left by killed workers
            remove_stale_staging(cases_dir / row.case_id)
    seconds = time.perf_counter() - t0
    summary = _write_outputs(out, manifest, rows, results, seconds, n_workers, len(to_run))
    if progress:
        print(f"{summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed "
              f"in {seconds:.1f} s; wrote {out / 'summary.csv'} and {out / 'report.md'}", file=sys.stderr)
        for case_id, err in summary["failures"].items():
            print(f"failed: {case_id}: {err}", file=sys.stderr)
    return summary


def _submit_all(client, rows, cases_dir: Path, run_id: str, threads, retries: int, bar) -> dict:
    from distributed import as_completed

    futures = {}
    for row in rows:
        fut = client.submit(run_case_task, row.case, str(cases_dir / row.case_id), run_id, threads,
                            key=f"xaiclip-case-{row.case_id}-{run_id}", pure=False, retries=retries)
        futures[fut] = row
    results = {}
    for fut in as_completed(list(futures)):
        row = futures[fut]
        try:
            result = fut.result()
        except Exception as exc:  # noqa: BLE001 - KilledWorker (worker deaths) or a task that could not run
            message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            _record_failure(cases_dir / row.case_id, message, "".join(traceback.format_exception(exc)))
            result = {"case": row.case_id, "status": "failed", "records": [], "error": message, "seconds": None}
        results[row.case_id] = result
        bar.update(result)
    return results


# --- summary and report ----------------------------------------------------
def _aggregate(records: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["mode"]), []).append(r)
    out = []
    for (method, mode), rs in groups.items():
        row = {"method": method, "mode": mode, "n": len(rs), "cases": len({r["case"] for r in rs})}
        for f in AGGREGATE_FIELDS:
            v = np.array([r[f] for r in rs if isinstance(r.get(f), (int, float))], float)
            row[f"{f}_mean"] = round(float(v.mean()), 6) if v.size else None
            row[f"{f}_sd"] = round(float(v.std(ddof=1)), 6) if v.size > 1 else None
        out.append(row)
    return out


def _write_outputs(out: Path, manifest, rows, results, seconds, n_workers, n_run) -> dict:
    from .reports import markdown_table, write_metrics

    summary_rows, failures = [], {}
    for row in rows:
        res = results[row.case_id]
        if res["status"] == "failed":
            failures[row.case_id] = res["error"]
            summary_rows.append({"case": row.case_id, "status": "failed", "error": res["error"]})
        for rec in res["records"]:
            summary_rows.append({**rec, "case": row.case_id, "status": res["status"], "error": None})
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(out, summary_rows, SUMMARY_FIELDS, stem="summary")
    aggregates = _aggregate([r for r in summary_rows if r["status"] != "failed"])
    agg_fields = ["method", "mode", "n", "cases"] + [f"{f}_{s}" for f in AGGREGATE_FIELDS for s in ("mean", "sd")]
    write_metrics(out, aggregates, agg_fields, stem="aggregates")
    counts = {s: sum(results[r.case_id]["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    ran = counts["done"] + sum(results[r.case_id]["status"] == "failed" and r.error is None for r in rows)
    per_min = round(60.0 * ran / seconds, 3) if n_run and seconds > 0 else None
    table = [{"method": a["method"], "mode": a["mode"], "n": a["n"],
              **{f: _mean_sd(a[f"{f}_mean"], a[f"{f}_sd"]) for f in AGGREGATE_FIELDS}} for a in aggregates]
    lines = [
        "# xaiclip batch report", "",
        (f"Manifest: `{manifest}`; {len(rows)} cases: {counts['done']} run now, {counts['skipped']} done "
         f"in an earlier run (skipped), {counts['failed']} failed."),
        f"Run time {seconds:.1f} s on {n_workers or 'no'} Dask workers"
        + (f" ({per_min} cases per minute)." if per_min else "."), "",
        "Per method and mode over every slice of every finished case (mean ± standard deviation):", "",
        markdown_table(table, ["method", "mode", "n", *AGGREGATE_FIELDS]) if table else "(no finished case)", "",
        "Per-case outputs are in `cases/<case>/`; every row is in `summary.csv`.",
    ]
    if failures:
        lines += ["", "## Failed cases", "",
                  *(f"- `{c}`: {e} (see `cases/{c}/error.txt`)" for c, e in failures.items())]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return {"cases": len(rows), **counts, "failures": failures, "records": summary_rows, "aggregates": aggregates,
            "seconds": seconds, "cases_per_minute": per_min, "workers": n_workers, "out": str(out)}


def _mean_sd(mean, sd) -> str:
    if mean is None:
        return "–"
    return f"{mean:.4g}" + (f" ± {sd:.2g}" if sd is not None else "")
