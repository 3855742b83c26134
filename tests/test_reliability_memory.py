"""Resident memory: a 512 x 512 x 400 volume, and long sessions in one process.

Each measurement runs ``benchmarks/bench_memory.py`` probes in fresh Python
processes (one torch thread), so the numbers are those of the job alone, and
reads ``VmRSS`` / ``VmHWM`` from ``/proc/self/status`` (peak reset through
``clear_refs`` at the start of a phase). ``ru_maxrss`` is not used for bounds:
on Linux a child starts with its parent's value, which under pytest is the
size of the test process itself.

Bounds (measured on the 2-core CI box, numbers in docs/reliability.md):

* 512 x 512 x 400 volume as int16 (200 MiB) and as float32 (400 MiB): the voxels stay
  in the file's type, and nibabel reads them into one array that the reorientation only
  views. RSS after ``load_volume`` and the peak while loading <= baseline + volume + 50 MiB
  (measured +210 / +410 MiB); peak while loading and explaining three slices (float32 only
  for the explained slice) <= baseline + volume + 200 MiB (measured +305-326 / +504-524 MiB).
  Before this, the int16 file cost a float32 copy (+410 MiB) and peaked at +810 MiB.
  Baseline: torch imported, default model loaded.
* 100 ROI-guided occlusions in a row, 30 ``explain_slice`` runs with curves:
  RSS after the last run at most 50 MiB above the RSS after run 10, and the
  rise of a least-squares line through runs 10..end at most 50 MiB. The RSS of
  these loops wanders in a band of about 30-40 MiB (allocator noise) with no
  trend: measured end - run 10 between -18 and +20 MiB (line: -2 to +1 MiB) for
  the occlusion loop, -3 to +11 MiB (line: -8 to +2 MiB) for the pipeline loop.
"""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_memory  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")

GROWTH_LIMIT_MB = 50.0


def _report(name: str, result: dict) -> None:
    shown = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in result.items() if k != "rss_mb"}
    print(f"\n{name}: {shown}")


def test_peak_measurement_sees_a_100_mib_allocation_and_resets():
    """The probes' own instruments: VmHWM rises with an allocation and clear_refs resets it."""
    bench_memory.reset_peak()
    base = bench_memory.peak_mb()
    # fresh anonymous pages, touched: resident whatever state the process's allocator is in
    # (after a whole test session, np.ones can be served from freed but still resident heap)
    block = mmap.mmap(-1, 100 * 1024 * 1024)
    np.frombuffer(block, np.uint8)[:] = 1
    assert bench_memory.peak_mb() - base > 90
    block.close()
    bench_memory.reset_peak()
    assert bench_memory.peak_mb() - bench_memory.rss_mb() < 5


@pytest.mark.slow
@pytest.mark.parametrize("dtype, volume_mb", [("int16", 200.0), ("float32", 400.0)])
def test_512x512x400_volume_is_held_once_in_its_own_type(tmp_path, dtype, volume_mb):
    r = bench_memory.measure_volume(str(tmp_path), dtype)
    _report(f"512x512x400 {dtype} volume", r)
    assert (r["data_dtype"], r["volume_mb"]) == (dtype, pytest.approx(volume_mb))
    assert [run["n_forward"] > 1 for run in r["runs"]] == [True, True, True]
    assert r["resident_volume_mb"] <= volume_mb + 50, "load_volume keeps more than one copy of the voxels"
    assert r["peak_load_mb"] - r["baseline_mb"] <= volume_mb + 50, "loading makes a second copy on the way"
    assert r["peak_over_baseline_mb"] <= volume_mb + 200, (
        f"peak {r['peak_over_baseline_mb']:.0f} MiB over baseline for a {volume_mb:.0f} MiB volume")


@pytest.mark.slow
def test_100_roi_occlusions_in_a_row_do_not_grow_memory():
    r = bench_memory.measure_loop(100)
    _report("100 ROI occlusions", r)
    assert len(r["rss_mb"]) == 100
    assert r["growth_mb"] <= GROWTH_LIMIT_MB, f"RSS grew {r['growth_mb']:.1f} MiB from run 10 to run 100"
    fitted = r["fitted_growth_mb"]
    assert fitted <= GROWTH_LIMIT_MB, f"RSS rose {fitted:+.1f} MiB along a least-squares line after run 10"


@pytest.mark.slow
def test_30_pipeline_runs_with_curves_do_not_grow_memory():
    r = bench_memory.measure_pipeline(30)
    _report("30 explain_slice runs with curves", r)
    assert len(r["rss_mb"]) == 30
    assert r["growth_mb"] <= GROWTH_LIMIT_MB, f"RSS grew {r['growth_mb']:.1f} MiB from run 10 to run 30"
    fitted = r["fitted_growth_mb"]
    assert fitted <= GROWTH_LIMIT_MB, f"RSS rose {fitted:+.1f} MiB along a least-squares line after run 10"
