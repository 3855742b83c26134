"""Throughput of ``xaiclip batch``: cases per minute with 1 and 2 local Dask workers.

The same phantom cohort (occlusion, traditional and ROI-guided, ROI from the
labels, no deletion/insertion curves) runs on a local cluster of 1 worker (torch
using every core) and of 2 workers (cores // 2 torch threads each). Workers are
started and warmed up (imports, the phantom segmenter loaded) before the clock starts,
so the numbers are steady-state throughput; the start-up time is reported apart.

Run standalone (prints a markdown table)::

    .venv/bin/python benchmarks/bench_batch.py [--cases 6] [--shape 8 128 128] [--workers 1 2] [--repeat 2]

or from another script: ``lines = []; run(lines)`` appends the section's markdown lines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

PARAMS = "occlusion.patch=64;occlusion.stride=32"


def make_cohort(folder: Path, n_cases: int, shape) -> Path:
    """Phantom volumes and labels with seeds 0..n-1 and their manifest."""
    from napari_xaiclip.io import save_volume
    from napari_xaiclip.phantom import make_phantom

    rows = ["case,volume,labels,organ,roi,methods,modes,model,seed,params,curves"]
    for seed in range(n_cases):
        vol, labels, _ = make_phantom(shape=tuple(shape), seed=seed)
        save_volume(folder / f"ct{seed}.nii.gz", vol.data, like=vol)
        save_volume(folder / f"labels{seed}.nii.gz", labels, like=vol)
        rows.append(f"case{seed},ct{seed}.nii.gz,labels{seed}.nii.gz,liver,labels,occlusion,both,phantom,{seed},{PARAMS},no")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def _warm_up(threads: int) -> int:
    """Runs on each worker: import the engine and load the phantom segmenter (the cohort's model)."""
    import torch

    import napari_xaiclip.batch  # noqa: F401
    from napari_xaiclip.models import load_segmenter

    torch.set_num_threads(threads)
    load_segmenter("phantom")
    return os.getpid()


def measure(manifest: Path, out: Path, workers: int, cores: int, repeat: int = 2) -> dict:
    """Start and warm a local cluster, then time ``repeat`` batch runs on it (each into a fresh folder); keep the
    fastest, the one least disturbed by other processes."""
    import logging

    from distributed import Client, LocalCluster

    from napari_xaiclip.batch import run_batch

    threads = max(1, cores // workers)
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    try:
        client.run(_warm_up, threads)
        startup = time.perf_counter() - t0
        seconds = float("inf")
        for i in range(max(1, repeat)):
            t1 = time.perf_counter()
            summary = run_batch(manifest, out / f"run{i}", scheduler=cluster.scheduler_address,
                                torch_threads=threads, progress=False)
            seconds = min(seconds, time.perf_counter() - t1)
            if summary["failed"]:
                raise RuntimeError(f"benchmark cases failed: {summary['failures']}")
    finally:
        client.close()
        cluster.close()
    return {"workers": workers, "threads": threads, "cases": summary["done"], "seconds": seconds,
            "per_minute": 60.0 * summary["done"] / seconds, "startup": startup}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run(out_md_lines: list | None = None, n_cases: int = 6, shape=(8, 128, 128), workers=(1, 2),
        repeat: int = 2) -> list[str]:
    """Measure and return (and append to ``out_md_lines``) a markdown section with the table."""
    cores = _cores()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="xaiclip-bench-batch-"))
    try:
        manifest = make_cohort(work, n_cases, shape)
        rows = [measure(manifest, work / f"out-{w}", w, cores, repeat) for w in workers]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]["per_minute"]
    lines = [
        "## Batch throughput (`xaiclip batch`, local Dask cluster)", "",
        (f"{n_cases} phantom cases of {' x '.join(map(str, shape))} voxels; occlusion "
         f"({PARAMS.replace(';', ', ')}), traditional and ROI-guided, ROI from the labels, no deletion/insertion "
         f"curves; {cores} cores. Workers are started and warmed up before timing (start-up shown apart); "
         f"seconds: the fastest of {repeat} runs. "
         f"1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after the runs: "
         "other processes on the machine lower the speed-up."), "",
        "| workers | torch threads per worker | cases | seconds | cases per minute | speed-up | start-up (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['threads']} | {r['cases']} | {r['seconds']:.1f} | "
                     f"{r['per_minute']:.2f} | {r['per_minute'] / base:.2f}x | {r['startup']:.1f} |")
    lines.append("")
    if out_md_lines is not None:
        out_md_lines.extend(lines)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--shape", type=int, nargs=3, default=(8, 128, 128))
    parser.add_argument("--workers", type=int, nargs="+", default=(1, 2))
    parser.add_argument("--repeat", type=int, default=2, help="batch runs per cluster; the fastest counts")
    args = parser.parse_args(argv)
    print("\n".join(run(n_cases=args.cases, shape=tuple(args.shape), workers=tuple(args.workers),
                        repeat=args.repeat)))
    return 0


if __name__ == "__main__":  # worker processes are spawned: keep the work under this guard
    sys.exit(main())
