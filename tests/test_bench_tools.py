"""The benchmark instruments: interleaved timing (benchmarks/timing.py) and peak memory of a
spawned process (benchmarks/memtool.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import memtool  # noqa: E402
import timing  # noqa: E402

# --------------------------------------------------------------------------- timing


def test_every_round_runs_every_side_once_and_consecutive_orders_differ():
    sides = ["a", "b", "c", "d"]
    orders = timing.round_orders(sides, 8, seed=3)
    assert len(orders) == 8
    for order in orders:
        assert sorted(order) == sorted(sides)
    assert all(orders[i] != orders[i + 1] for i in range(len(orders) - 1))
    assert len({tuple(o) for o in orders}) > 1


def test_two_sides_alternate_which_runs_first():
    orders = timing.round_orders(["x", "y"], 6, seed=0)
    firsts = [o[0] for o in orders]
    assert set(firsts) == {"x", "y"}
    assert all(firsts[i] != firsts[i + 1] for i in range(5))


def test_round_orders_are_seeded():
    assert timing.round_orders("abc", 5, seed=7) == timing.round_orders("abc", 5, seed=7)
    assert any(timing.round_orders("abcde", 5, seed=s) != timing.round_orders("abcde", 5, seed=7) for s in range(3))


def test_interleave_calls_in_the_planned_order_and_times_each_call_with_the_clock():
    clock = timing.FakeClock()
    calls = []
    durations = {"a": iter([3.0, 1.0, 2.0, 5.0, 4.0]), "b": iter([1.0, 1.0, 1.0, 2.0, 1.0])}

    def side(name):
        def run():
            calls.append(name)
            clock.advance(next(durations[name]))
            return name.upper()
        return run

    t = timing.interleave({"a": side("a"), "b": side("b")}, rounds=5, seed=11, clock=clock)
    assert calls == [name for order in t.orders for name in order]
    assert t.times == {"a": [3.0, 1.0, 2.0, 5.0, 4.0], "b": [1.0, 1.0, 1.0, 2.0, 1.0]}
    assert t.outputs["a"] == ["A"] * 5
    assert t.summary("a") == {"median": 3.0, "min": 1.0, "max": 5.0, "n": 5}
    assert t.summary("b") == {"median": 1.0, "min": 1.0, "max": 2.0, "n": 5}
    r = t.ratio("a", "b")  # per round: 3, 1, 2, 2.5, 4
    assert r == {"ratio": 3.0, "round_min": 1.0, "round_max": 4.0, "n": 5}
    assert timing.fmt_spread(t.summary("a")) == "3 (1–5)"
    assert timing.fmt_ratio(r) == "3 (1–4)"


def test_interleave_refuses_fewer_than_five_rounds():
    with pytest.raises(ValueError, match="at least 5"):
        timing.interleave({"a": lambda: None}, rounds=3)


def test_ratio_needs_paired_rounds():
    with pytest.raises(ValueError, match="paired"):
        timing.ratio([1.0, 2.0], [1.0])


def test_warmup_calls_are_not_timed():
    clock = timing.FakeClock()
    n = {"calls": 0}

    def side():
        n["calls"] += 1
        clock.advance(10.0 if n["calls"] == 1 else 1.0)  # a slow first call

    t = timing.interleave({"s": side}, rounds=5, clock=clock, warmup=True)
    assert n["calls"] == 6
    assert t.times["s"] == [1.0] * 5


# --------------------------------------------------------------------------- memory


def test_spawned_child_reports_a_50_mib_array():
    t = memtool.self_test(50)
    assert t["error"] is None, t["error"]
    assert t["passed"], t
    assert t["measured_mib"] == pytest.approx(50, rel=0.10)


def test_spawned_child_measures_its_own_peak_not_the_parents():
    # the parent holds a large block; a forked child's ru_maxrss would start at that size
    import numpy as np

    block = np.ones(150 * memtool.MIB, np.uint8)
    r = memtool.measure_spawned(memtool.touch_array, 10, setup=memtool._import_numpy)
    assert r["pid"] != __import__("os").getpid()
    assert r["result"] == 10
    assert r["growth_mb"] == pytest.approx(10, abs=3)
    assert r["baseline_mb"] < 150  # a fresh interpreter, not a copy of this process
    del block


def test_a_failing_child_raises_with_its_traceback():
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        memtool.run_spawned(divmod, 1, 0)


# --------------------------------------------------------------------------- real-model targets


def _rise_row(forwards, iou, center=False):
    return {"organ": "liver", "mode": "traditional", "center": center, "stop_iou": 0.9, "forwards": forwards,
            "full_forwards": 2001, "top20_iou_vs_full": iou}


@pytest.mark.parametrize("rows, met", [
    ([_rise_row(667, 0.91)], "yes"),            # exactly 3x fewer at IoU >= 0.9
    ([_rise_row(668, 0.95)], "no"),             # not quite 3x fewer
    ([_rise_row(401, 0.89)], "no"),             # fewer, but the map is not close enough
    ([_rise_row(2001, 1.0), _rise_row(601, 0.9, center=True)], "yes"),
])
def test_the_rise_target_is_met_only_with_3x_fewer_passes_at_iou_0_9(rows, met):
    import bench_gpu

    lines = "\n".join(bench_gpu.targets({"rise": rows}, {"parts": {}})).splitlines()
    (row,) = [line for line in lines if line.startswith("| RISE stop")]
    assert row.rstrip(" |").endswith(met)


def test_cpu_estimates_use_the_fastest_mode_within_the_map_tolerance():
    import bench_gpu

    speed = {"forward": {"summary": {"eager": {"median": 4.0}, "bf16": {"median": 2.0}, "compile": {"median": 1.0}}},
             "occlusion": [{"mode": "eager"}, {"mode": "bf16", "spearman": 0.999, "top20_iou": 0.97},
                           {"mode": "compile", "spearman": 0.98, "top20_iou": 1.0}]}   # compile drifts
    lines = "\n".join(bench_gpu.targets(speed, {"parts": {}})).splitlines()
    roi = next(line for line in lines if "liver-sized ROI" in line)
    assert "about 294 s (bf16" in roi   # 2.0 s x 147 forwards; compile is faster but outside the tolerance
