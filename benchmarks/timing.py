"""Interleaved timing of compared implementations, for every timing comparison in the benchmarks.

On a shared machine the speed drifts while a benchmark runs (other jobs start and stop), so
timing side A for a minute and then side B for a minute mostly measures the drift. Here every
round runs each side once, in a seeded random order that differs from the previous round's;
a side's figure is the median of its rounds with the min-max beside it, and a ratio is the
ratio of medians with the spread of the per-round ratios (A and B of the same round saw the
same machine state).

>>> clock = FakeClock()
>>> t = interleave({"a": lambda: clock.advance(2.0), "b": lambda: clock.advance(1.0)}, rounds=5, clock=clock)
>>> summarise(t.times["a"])["median"], ratio(t.times["a"], t.times["b"])["ratio"]
(2.0, 2.0)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FakeClock", "Timings", "fmt_ratio", "fmt_spread", "interleave", "ratio", "round_orders", "summarise"]

MIN_ROUNDS = 5


class FakeClock:
    """A clock that moves only when told to (tests, doctests)."""

    def __init__(self, start: float = 0.0):
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += float(seconds)


@dataclass
class Timings:
    """Seconds per side, one entry per round (index = round), the order each round ran in, and each
    side's return values (the last round's is usually enough: e.g. an Explanation's n_forward)."""

    times: dict[str, list[float]]
    orders: list[list[str]]
    outputs: dict[str, list] = field(default_factory=dict)

    def summary(self, side: str) -> dict:
        return summarise(self.times[side])

    def ratio(self, a: str, b: str) -> dict:
        return ratio(self.times[a], self.times[b])

    def to_json(self) -> dict:
        return {"times": self.times, "orders": self.orders,
                "summary": {k: self.summary(k) for k in self.times}}


def round_orders(sides: Sequence[str], rounds: int, seed: int = 0) -> list[list[str]]:
    """A random order of ``sides`` per round; consecutive rounds never repeat an order (when there
    are two or more sides), so no side always runs first or right after a given other side."""
    rng = np.random.default_rng(seed)
    sides = list(sides)
    orders: list[list[str]] = []
    for _ in range(rounds):
        order = [sides[i] for i in rng.permutation(len(sides))]
        while len(sides) > 1 and orders and order == orders[-1]:
            order = [sides[i] for i in rng.permutation(len(sides))]
        orders.append(order)
    return orders


def interleave(sides: dict[str, Callable[[], object]], rounds: int = MIN_ROUNDS, seed: int = 0,
               clock: Callable[[], float] = time.perf_counter, warmup: bool = False,
               progress: Callable[[str], None] | None = None) -> Timings:
    """Run every side once per round, in a seeded random order per round, and time each call.

    ``warmup`` calls every side once, untimed, first (lazy imports, allocator, caches).
    """
    if rounds < MIN_ROUNDS:
        raise ValueError(f"at least {MIN_ROUNDS} rounds, got {rounds}")
    if warmup:
        for fn in sides.values():
            fn()
    orders = round_orders(list(sides), rounds, seed)
    times: dict[str, list[float]] = {k: [] for k in sides}
    outputs: dict[str, list] = {k: [] for k in sides}
    for i, order in enumerate(orders):
        for name in order:
            t0 = clock()
            out = sides[name]()
            times[name].append(clock() - t0)
            outputs[name].append(out)
        if progress is not None:
            progress(f"round {i + 1}/{rounds}")
    return Timings(times, orders, outputs)


def summarise(values: Sequence[float]) -> dict:
    """Median and min-max of a side's seconds (over rounds, or over cases x rounds)."""
    v = np.asarray(list(values), float)
    if v.size == 0:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def ratio(a: Sequence[float], b: Sequence[float]) -> dict:
    """median(a) / median(b), and the min-max of a[i] / b[i] over paired rounds."""
    a, b = np.asarray(list(a), float), np.asarray(list(b), float)
    if a.size != b.size:
        raise ValueError(f"paired rounds needed: {a.size} vs {b.size} values")
    per = a / b
    return {"ratio": float(np.median(a) / np.median(b)), "round_min": float(per.min()),
            "round_max": float(per.max()), "n": int(per.size)}


def _g(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def fmt_spread(s: dict, digits: int = 3) -> str:
    """"median (min–max)" of :func:`summarise`'s output."""
    if s.get("median") is None:
        return "–"
    return f"{_g(s['median'], digits)} ({_g(s['min'], digits)}–{_g(s['max'], digits)})"


def fmt_ratio(r: dict, digits: int = 3) -> str:
    """"ratio (per-round min–max)" of :func:`ratio`'s output."""
    return f"{_g(r['ratio'], digits)} ({_g(r['round_min'], digits)}–{_g(r['round_max'], digits)})"
