"""Throughput of ``xaiclip batch``: cases per minute with 1 and 2 local Dask workers.

The same phantom cohort (occlusion, traditional and ROI-guided, ROI from the
labels, no deletion/insertion curves) runs on a local cluster of 1 worker (torch
using every core) and of 2 workers (cores // 2 torch threads each). Workers are
started and warmed up (imports, the phantom segmenter loaded) before the clock starts,
so the numbers are steady-state throughput; the start-up time is reported apart. Both
clusters stay up and their runs are interleaved (benchmarks/timing.py).

Run standalone (prints a markdown table)::

    .venv/bin/python benchmarks/bench_batch.py [--cases 6] [--shape 8 128 128] [--workers 1 2] [--rounds 5]

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

sys.path.insert(0, str(Path(__file__).resolve().parent))

PARAMS = "occlusion.window=64;occlusion.stride=32"


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


def start_cluster(workers: int, cores: int):
    """A local cluster of ``workers`` processes, warmed up (imports, the phantom segmenter loaded)."""
    import logging

    from distributed import Client, LocalCluster

    threads = max(1, cores // workers)
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    client.run(_warm_up, threads)
    return {"cluster": cluster, "client": client, "workers": workers, "threads": threads,
            "startup": time.perf_counter() - t0}


def batch_once(manifest: Path, out: Path, c: dict) -> int:
    """One timed batch run of the cohort on a started cluster, into a fresh folder; cases done."""
    from napari_xaiclip.batch import run_batch

    summary = run_batch(manifest, out, scheduler=c["cluster"].scheduler_address, torch_threads=c["threads"],
                        progress=False)
    if summary["failed"]:
        raise RuntimeError(f"benchmark cases failed: {summary['failures']}")
    return summary["done"]


def measure(manifest: Path, out: Path, workers=(1, 2), cores: int = 2, rounds: int = 5) -> list[dict]:
    """Start and warm one cluster per worker count, all alive at once, then time the batch runs
    interleaved (``rounds`` rounds, a random order per round): the clusters see the same machine state."""
    import logging

    from timing import interleave, ratio, summarise

    logging.getLogger("distributed").setLevel(logging.WARNING)  # one INFO line per client otherwise
    clusters = []
    try:
        for w in workers:
            clusters.append(start_cluster(w, cores))
        counter = iter(range(10**6))
        sides = {str(c["workers"]): (lambda c=c: batch_once(manifest, out / f"w{c['workers']}-{next(counter)}", c))
                 for c in clusters}
        t = interleave(sides, rounds, seed=0)
    finally:
        for c in clusters:
            c["client"].close()
            c["cluster"].close()
    base = str(workers[0])
    rows = []
    for c in clusters:
        key = str(c["workers"])
        s = summarise(t.times[key])
        done = t.outputs[key][-1]
        rows.append({"workers": c["workers"], "threads": c["threads"], "cases": done, "seconds": s,
                     "per_minute": 60.0 * done / s["median"], "speedup": ratio(t.times[base], t.times[key]),
                     "startup": c["startup"], "times": t.times[key]})
    return rows


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run(out_md_lines: list | None = None, n_cases: int = 6, shape=(8, 128, 128), workers=(1, 2),
        rounds: int = 5) -> list[str]:
    """Measure and return (and append to ``out_md_lines``) a markdown section with the table."""
    from timing import fmt_ratio, fmt_spread

    cores = _cores()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="xaiclip-bench-batch-"))
    try:
        manifest = make_cohort(work, n_cases, shape)
        rows = measure(manifest, work, tuple(workers), cores, rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        "## Batch throughput (`xaiclip batch`, local Dask cluster)", "",
        (f"{n_cases} phantom cases of {' x '.join(map(str, shape))} voxels; occlusion "
         f"({PARAMS.replace(';', ', ')}), traditional and ROI-guided, ROI from the labels, no deletion/insertion "
         f"curves; {cores} cores. One cluster per worker count, all started and warmed up before timing "
         f"(start-up shown apart) and alive together; the batch runs are interleaved, {rounds} rounds in a "
         "random order per round. Seconds: median (min–max) over the rounds; cases per minute at the median; "
         "speed-up: ratio of the medians with the min–max of the per-round ratios. "
         f"1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after the runs: "
         "other processes on the machine lower the speed-up."), "",
        "| workers | torch threads per worker | cases | seconds | cases per minute | speed-up | start-up (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['threads']} | {r['cases']} | {fmt_spread(r['seconds'])} | "
                     f"{r['per_minute']:.2f} | {fmt_ratio(r['speedup'])}x | {r['startup']:.1f} |")
    lines.append("")
    if out_md_lines is not None:
        out_md_lines.extend(lines)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--shape", type=int, nargs=3, default=(8, 128, 128))
    parser.add_argument("--workers", type=int, nargs="+", default=(1, 2))
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (>= 5)")
    args = parser.parse_args(argv)
    print("\n".join(run(n_cases=args.cases, shape=tuple(args.shape), workers=tuple(args.workers),
                        rounds=args.rounds)))
    return 0


if __name__ == "__main__":  # worker processes are spawned: keep the work under this guard
    sys.exit(main())
