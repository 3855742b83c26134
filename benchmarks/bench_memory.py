"""Resident memory of explanations: a 512 x 512 x 400 volume, and long sessions in one process.

Every probe runs in a fresh Python process started with multiprocessing's "spawn"
context (``memtool``), so its memory is its own; the default run prints a markdown table.

Probes
------
``volume``    a 400 x 512 x 512 float32 volume (400 MiB) written as an uncompressed
              .nii (and the same shape as int16, as CT usually is), read with
              ``io.load_volume``, then ROI-guided occlusion (patch 32,
              small ROI) with the phantom segmenter on an axial, a coronal and a
              sagittal slice. Reports the baseline RSS (torch imported, phantom model
              loaded) and the peak RSS while loading and explaining.
``loop``      100 ROI-guided occlusions (patch 32) in a row with the phantom segmenter
              on a 256 x 256 phantom slice; RSS after every explanation.
``pipeline``  30 ``pipeline.explain_slice`` runs (occlusion, ROI mode, deletion and
              insertion curves on) on the same slice; RSS after every run.

How memory is measured (Linux): ``VmRSS`` and the peak ``VmHWM`` from
``/proc/self/status``, the peak reset through ``/proc/self/clear_refs`` at the
start of a phase. ``ru_maxrss`` is reported too, but it is not used for bounds:
on Linux a child process starts with its parent's ``ru_maxrss``, so under a
large parent (pytest with torch loaded) it shows the parent's size.
``memtool.self_test`` checks the instrument (a spawned child touching a known array).

Usage::

    python benchmarks/bench_memory.py                 # every probe, markdown table on stdout
    python benchmarks/bench_memory.py --quick         # 20 + 10 iterations instead of 100 + 30
    python benchmarks/bench_memory.py --probe loop --json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MIB = 1024 * 1024
VOLUME_SHAPE = (400, 512, 512)  # (z, y, x) display order
VOLUME_BYTES = VOLUME_SHAPE[0] * VOLUME_SHAPE[1] * VOLUME_SHAPE[2] * 4
#: (axis, index, ROI (row0, row1, col0, col1) in slice pixels) explained on the big volume
VOLUME_SLICES = ((0, 200, (230, 270, 240, 290)), (1, 256, (180, 220, 240, 290)), (2, 256, (180, 220, 230, 270)))


# --------------------------------------------------------------------------- measuring

from memtool import peak_mb, reset_peak, rss_mb, run_spawned  # noqa: E402  (the shared instrument)


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setup_torch():
    import torch

    torch.set_num_threads(1)
    return torch


# --------------------------------------------------------------------------- probes (run in a child)


def make_volume(path: str, dtype: str = "float32") -> None:
    """Write the test volume as an uncompressed .nii (display (z, y, x) = file (k, j, i)).

    float32: noise around 40 HU (400 MiB on disk); int16: CT-like integers (200 MiB on disk).
    """
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    if dtype == "int16":
        data = rng.integers(-1024, 2000, VOLUME_SHAPE, dtype=np.int16)
    else:
        data = rng.standard_normal(VOLUME_SHAPE, dtype=np.float32)
        data *= 20
        data += 40
    # identity (RAS) affine: file axes (i, j, k) = (R, A, S); load_volume shows (S, P, L),
    # so the file array is the display array transposed (and flipped, which noise does not mind)
    img = nib.Nifti1Image(data.T, np.eye(4))
    img.set_data_dtype(data.dtype)
    nib.save(img, path)


def probe_volume(path: str) -> dict:
    import numpy as np

    torch = _setup_torch()
    from napari_xaiclip.explain import explain
    from napari_xaiclip.io import load_volume
    from napari_xaiclip.models import load_segmenter
    from napari_xaiclip.slicing import take_slice

    seg = load_segmenter("phantom")
    _ = seg.gflops  # the FLOP count is part of loading: every explanation reports it
    baseline = rss_mb()
    reset_peak()
    t0 = time.perf_counter()
    vol = load_volume(path)
    load_s = time.perf_counter() - t0
    after_load = rss_mb()
    peak_load = peak_mb()
    assert vol.data.shape == VOLUME_SHAPE, vol.data.shape
    runs = []
    for axis, index, (r0, r1, c0, c1) in VOLUME_SLICES:
        sl = take_slice(vol.data, axis, index)
        roi = np.zeros(sl.shape, bool)
        roi[r0:r1, c0:c1] = True
        t0 = time.perf_counter()
        ex = explain("occlusion", seg, sl, box=(c0 - 8, r0 - 8, c1 + 8, r1 + 8), roi=roi, window=32, seed=0)
        runs.append({"axis": axis, "index": index, "shape": list(sl.shape), "n_forward": ex.n_forward,
                     "seconds": round(time.perf_counter() - t0, 2)})
        assert np.isfinite(ex.heatmap).all()
    peak = peak_mb()
    volume_mb, data_dtype = vol.data.nbytes / MIB, str(vol.data.dtype)
    del vol, sl, ex
    return {
        "probe": "volume", "volume_shape": list(VOLUME_SHAPE), "volume_mb": volume_mb, "data_dtype": data_dtype,
        "float32_mb": VOLUME_BYTES / MIB,
        "baseline_mb": baseline, "after_load_mb": after_load, "peak_load_mb": peak_load, "peak_mb": peak,
        "peak_over_baseline_mb": peak - baseline, "resident_volume_mb": after_load - baseline,
        "load_seconds": round(load_s, 2), "runs": runs, "ru_maxrss_mb": maxrss_mb(),
        "torch_threads": torch.get_num_threads(),
    }


def rise_setup(input_size: int = 1024):
    """A cheap segmenter at ``input_size`` px and a 512 px image: RISE's memory is the explainer's, not
    the model's. Runs in the spawned child before its baseline is taken."""
    import numpy as np

    torch = _setup_torch()
    from napari_xaiclip.explain import explain  # noqa: F401  (imported before the baseline)
    from napari_xaiclip.models.generic import ModuleSegmenter

    net = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Conv2d(1, 1, 3, padding=1),
                              torch.nn.Upsample(scale_factor=8))
    seg = ModuleSegmenter(net, input_size=input_size, device="cpu")
    img = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    return {"seg": seg, "image": img}


def rise_job(state: dict, n_samples: int, batch: int) -> dict:
    """RISE with ``n_samples`` masks, ``batch`` per forward (the measured job)."""
    from napari_xaiclip.explain import explain

    ex = explain("rise", state["seg"], state["image"], box=(100, 100, 400, 400), n_samples=n_samples, batch_size=batch)
    return {"n_forward": ex.n_forward, "input_size": ex.info.get("input_size", None)}


def _phantom_case():
    import numpy as np

    from napari_xaiclip.phantom import make_phantom
    from napari_xaiclip.pipeline import box_from_mask

    vol, labels, _ = make_phantom(shape=(8, 256, 256), modality="ct", seed=0)
    z = int(np.argmax((labels == 3).sum((1, 2))))  # the spleen: a small ROI
    roi = labels[z] == 3
    return np.ascontiguousarray(vol.data[z]), roi, box_from_mask(roi, 4)


def _series_stats(rss: list[float], start: int) -> dict:
    """Growth from run ``start`` (1-based) to the end, raw and along a least-squares line (robust to noise)."""
    import numpy as np

    tail = np.asarray(rss[start - 1:], float)
    slope = float(np.polyfit(np.arange(tail.size), tail, 1)[0]) if tail.size > 1 else 0.0
    return {"rss_mb": [round(v, 2) for v in rss], "start_index": start, "rss_start_mb": rss[start - 1],
            "fitted_growth_mb": slope * (tail.size - 1),
            "rss_end_mb": rss[-1], "growth_mb": rss[-1] - rss[start - 1], "max_mb": max(rss[start - 1:]),
            "growth_max_mb": max(rss[start - 1:]) - rss[start - 1], "first_mb": rss[0]}


def probe_loop(n: int = 100) -> dict:
    import gc

    _setup_torch()
    from napari_xaiclip.explain import explain
    from napari_xaiclip.models import load_segmenter

    seg = load_segmenter("phantom")
    image, roi, box = _phantom_case()
    baseline = rss_mb()
    rss, t0 = [], time.perf_counter()
    for i in range(n):
        ex = explain("occlusion", seg, image, box=box, roi=roi, window=32, seed=i)
        rss.append(rss_mb())
    seconds = time.perf_counter() - t0
    gc.collect()
    return {"probe": "loop", "iterations": n, "n_forward_each": ex.n_forward, "seconds": round(seconds, 1),
            "baseline_mb": baseline, "after_gc_mb": rss_mb(), **_series_stats(rss, min(10, max(1, n // 2)))}


def probe_pipeline(n: int = 30) -> dict:
    import gc

    _setup_torch()
    from napari_xaiclip.models import load_segmenter
    from napari_xaiclip.pipeline import explain_slice

    seg = load_segmenter("phantom")
    image, roi, box = _phantom_case()
    baseline = rss_mb()
    rss, t0 = [], time.perf_counter()
    for i in range(n):
        results = explain_slice(seg, image, box, ["occlusion"], ("roi",), roi=roi, gt=roi, seed=i,
                                params={"occlusion": {"window": 32}}, curves=True, curve_steps=10)
        assert results[0].record["deletion_auc"] is not None
        rss.append(rss_mb())
    seconds = time.perf_counter() - t0
    gc.collect()
    return {"probe": "pipeline", "iterations": n, "seconds": round(seconds, 1), "baseline_mb": baseline,
            "after_gc_mb": rss_mb(), **_series_stats(rss, min(10, max(1, n // 2)))}


# --------------------------------------------------------------------------- running probes (parent)


def run_child(*args: str, timeout: float = 900) -> dict:
    """Run this script with ``args`` (the command line's probes) in a spawned interpreter; its JSON."""
    return run_spawned(main_json, list(args), timeout=timeout)


def main_json(argv: list[str]) -> dict:
    """What ``main(argv + ["--json"])`` prints, returned (runs in the spawned child)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main([*argv, "--json"])
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def measure_volume(workdir: str | None = None, dtype: str = "float32") -> dict:
    """Write the test volume in one child, measure in another, delete the file."""
    folder = Path(tempfile.mkdtemp(prefix="xaiclip-bench-memory-", dir=workdir))
    try:
        path = folder / "volume_512x512x400.nii"
        t0 = time.perf_counter()
        run_spawned(make_volume, str(path), dtype, timeout=900)
        write_s = time.perf_counter() - t0
        out = run_spawned(probe_volume, str(path), timeout=900)
        out["file_mb"] = path.stat().st_size / MIB
        out["file_dtype"] = dtype
        out["write_seconds"] = round(write_s, 1)
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measure_loop(n: int = 100) -> dict:
    return run_spawned(probe_loop, n, timeout=1800)


def measure_pipeline(n: int = 30) -> dict:
    return run_spawned(probe_pipeline, n, timeout=1800)


def markdown(results: dict) -> str:
    rows = []
    for v in (results.get("volume"), results.get("volume_int16")):
        if not v:
            continue
        rows += [
            (f"512 x 512 x 400 volume, {v['file_dtype']} .nii ({v['file_mb']:.0f} MiB file)",
             f"volume size in memory ({v.get('data_dtype', 'float32')})", f"{v['volume_mb']:.0f} MiB"),
            ("", "baseline RSS (torch + phantom model)", f"{v['baseline_mb']:.0f} MiB"),
            ("", "RSS after load_volume, over baseline", f"{v['resident_volume_mb']:.0f} MiB"),
            ("", "peak RSS while loading, over baseline", f"{v['peak_load_mb'] - v['baseline_mb']:.0f} MiB"),
            ("", "peak RSS loading + 3 explanations, over baseline",
             f"{v['peak_over_baseline_mb']:.0f} MiB ({v['peak_over_baseline_mb'] / v['volume_mb']:.2f} x volume)"),
            ("", "load_volume time", f"{v['load_seconds']:.1f} s"),
        ]
        for r in v["runs"]:
            rows.append(("", f"occlusion ROI, axis {r['axis']} slice {r['index']} {tuple(r['shape'])}",
                         f"{r['n_forward']} forwards, {r['seconds']:.1f} s"))
    for key, title in (("loop", "ROI occlusions in a row (patch 32, 256 px)"),
                       ("pipeline", "pipeline.explain_slice with curves in a row")):
        r = results.get(key)
        if r:
            rows += [
                (f"{r['iterations']} {title}", "RSS after run 1 / baseline",
                 f"{r['first_mb']:.0f} / {r['baseline_mb']:.0f} MiB"),
                ("", f"RSS growth, run {r['start_index']} to run {r['iterations']}", f"{r['growth_mb']:+.1f} MiB"),
                ("", f"largest RSS after run {r['start_index']}, over run {r['start_index']}",
                 f"{r['growth_max_mb']:+.1f} MiB"),
                ("", f"least-squares line through runs {r['start_index']}..{r['iterations']}, rise",
                 f"{r['fitted_growth_mb']:+.1f} MiB"),
                ("", "time", f"{r['seconds']:.0f} s"),
            ]
    lines = ["| case | measure | value |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", choices=("volume", "loop", "pipeline"), help="run one probe in this process")
    parser.add_argument("--make-volume", metavar="PATH", help="write the 512 x 512 x 400 test volume")
    parser.add_argument("--volume", metavar="PATH", help="volume file for --probe volume")
    parser.add_argument("--dtype", default="float32", choices=("float32", "int16"), help="for --make-volume")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="20 + 10 iterations instead of 100 + 30")
    parser.add_argument("--json", action="store_true", help="print JSON (one line) instead of a table")
    parser.add_argument("--workdir", help="folder for the temporary volume (default: the system temp folder)")
    args = parser.parse_args(argv)
    if args.make_volume:
        make_volume(args.make_volume, args.dtype)
        print(json.dumps({"written": args.make_volume}))
        return 0
    if args.probe:
        if args.probe == "volume":
            out = probe_volume(args.volume)
        elif args.probe == "loop":
            out = probe_loop(args.iterations or 100)
        else:
            out = probe_pipeline(args.iterations or 30)
        print(json.dumps(out))
        return 0
    n_loop, n_pipe = (20, 10) if args.quick else (100, 30)
    results = {"volume": measure_volume(args.workdir), "volume_int16": measure_volume(args.workdir, "int16"),
               "loop": measure_loop(n_loop), "pipeline": measure_pipeline(n_pipe)}
    print(json.dumps(results) if args.json else markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
