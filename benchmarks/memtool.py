"""Peak memory of a job in a fresh process, and a self-test of the instrument.

Every measurement runs in a process started with multiprocessing's "spawn" context: a new
interpreter, not a fork of the benchmark process (which holds ~1.4 GB of models and data;
``ru_maxrss`` of a forked child starts at the parent's peak). The child runs ``setup`` (imports,
model loading), takes its resident size as the baseline, resets its peak (``VmHWM``, through
``/proc/self/clear_refs``), runs the job and reports ``VmHWM`` minus the baseline.

:func:`self_test` checks the instrument end to end: a spawned child that allocates and touches a
known array must report its size (within 10 %). Memory tables are only printed when it passes.

Linux only (``/proc/self/status``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable

MIB = 1024 * 1024
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

__all__ = ["MIB", "measure_spawned", "peak_mb", "reset_peak", "rss_mb", "run_spawned", "self_test"]


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def rss_mb() -> float:
    """Resident set size now (VmRSS), MiB."""
    return _status_mb("VmRSS")


def peak_mb() -> float:
    """Peak resident set size (VmHWM) since the process started or the last :func:`reset_peak`, MiB."""
    return _status_mb("VmHWM")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _child(conn, fn, args, kwargs, setup) -> None:
    try:
        state = setup() if setup is not None else None
        baseline = rss_mb()
        reset = reset_peak()
        # without a reset the peak may be the import's, not the job's: say so rather than guess
        start_peak = peak_mb()
        t0 = time.perf_counter()
        result = fn(state, *args, **kwargs) if state is not None else fn(*args, **kwargs)
        seconds = time.perf_counter() - t0
        peak = peak_mb()
        conn.send({"ok": True, "result": result, "baseline_mb": baseline, "peak_mb": peak,
                   "growth_mb": peak - baseline, "peak_reset": reset, "peak_before_job_mb": start_peak,
                   "seconds": seconds, "pid": os.getpid()})
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        conn.send({"ok": False, "error": traceback.format_exc()})
    finally:
        conn.close()


def _spawn(fn, args, kwargs, setup, timeout, env) -> dict:
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args, kwargs, setup), daemon=True)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the child's environment is the parent's at start
    try:
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    send.close()
    try:
        if not recv.poll(timeout):
            proc.kill()
            raise TimeoutError(f"spawned {getattr(fn, '__name__', fn)} gave no result in {timeout} s")
        out = recv.recv()
    except EOFError:
        proc.join(5)
        raise RuntimeError(f"spawned {getattr(fn, '__name__', fn)} died (exit code {proc.exitcode})") from None
    finally:
        proc.join(30)
        recv.close()
    if not out["ok"]:
        raise RuntimeError(f"spawned {getattr(fn, '__name__', fn)} failed:\n{out['error']}")
    return out


def measure_spawned(fn: Callable, *args, setup: Callable | None = None, timeout: float | None = 1800,
                    env: dict | None = None, **kwargs) -> dict:
    """Run ``fn(*args)`` in a spawned child after ``setup()``; the job's peak over the baseline.

    When ``setup`` returns something other than None (a loaded model), ``fn`` gets it first:
    ``fn(setup(), *args)``.

    ``fn`` and ``setup`` must be importable module-level functions. Returns ``baseline_mb``
    (RSS after setup), ``peak_mb`` (VmHWM after the job), ``growth_mb`` (the difference),
    ``peak_reset`` (whether VmHWM could be reset after setup), ``seconds`` (the job's) and
    ``result`` (what ``fn`` returned). Torch/BLAS get one thread unless ``env`` says otherwise.
    """
    return _spawn(fn, args, kwargs, setup, timeout, {**THREAD_ENV, **(env or {})})


def run_spawned(fn: Callable, *args, timeout: float | None = 1800, env: dict | None = None, **kwargs):
    """``fn(*args)`` in a spawned child (its own memory measurements inside); its return value."""
    return measure_spawned(fn, *args, timeout=timeout, env=env, **kwargs)["result"]


def touch_array(mib: int) -> int:
    """Allocate a ``mib`` MiB numpy array and write every byte of it (resident, not just reserved)."""
    import numpy as np

    a = np.empty(mib * MIB, np.uint8)
    a.fill(1)
    return int(a.sum(dtype=np.int64) // MIB)


def _import_numpy() -> None:
    import numpy  # noqa: F401


def self_test(mib: int = 200, tolerance: float = 0.10, timeout: float = 120) -> dict:
    """A spawned child touches a ``mib`` MiB array; the instrument must report ``mib`` +- ``tolerance``."""
    try:
        r = measure_spawned(touch_array, mib, setup=_import_numpy, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - a failed instrument is a result, reported as such
        return {"expected_mib": mib, "measured_mib": None, "passed": False, "error": str(exc)[-500:]}
    measured = r["growth_mb"]
    ok = r["result"] == mib and abs(measured - mib) <= tolerance * mib
    return {"expected_mib": mib, "measured_mib": measured, "baseline_mb": r["baseline_mb"],
            "peak_reset": r["peak_reset"], "tolerance": tolerance, "passed": bool(ok), "error": None}


def self_test_line(t: dict) -> str:
    """One sentence for the docs, next to a memory table."""
    if t["measured_mib"] is None:
        return f"Instrument self-test FAILED: the spawned {t['expected_mib']} MiB child gave no result ({t['error']})."
    verdict = "passed" if t["passed"] else "FAILED"
    return (f"Instrument self-test ({verdict}): a spawned child that allocates and touches a "
            f"{t['expected_mib']} MiB numpy array reported +{t['measured_mib']:.1f} MiB over its baseline "
            f"(tolerance {t['tolerance']:.0%}).")
