"""The real models on a GPU: every explainer on CUDA, LiteMedSAM and MedSAM vit_b speed per mode.

Run on a machine with a CUDA GPU (it also runs on a CPU with ``--device cpu --quick``, to check the
code paths). Parts, in order, each skipped when the time budget would not cover it:

1. ``methods``: every registered explainer on the phantom model, CUDA vs CPU on the same slice,
   traditional and ROI-guided: the Spearman of the two maps and whether it ran at all.
2. ``syncs``: host-device synchronisations (``torch.cuda.set_sync_debug_mode``) during a LiteMedSAM
   occlusion run, against its number of batches: the engine must not sync per window.
3. ``litemedsam``: LiteMedSAM (256 px) in eager fp32, bf16 and auto (bf16 + torch.compile):
   ROI-guided occlusion of the liver (window 16, stride 8) and traditional occlusion (961 windows),
   seconds as medians of interleaved rounds, map agreement with eager fp32 (Spearman, top-20 % IoU).
4. ``captum``: the engine against Captum ``Occlusion`` (eager fp32, each at its best batch) and a pure
   batched forward, on LiteMedSAM, the same 961 windows, interleaved rounds.
5. ``medsam``: MedSAM's architecture (segment_anything vit_b, 1024 px, random weights: the real
   checkpoint cannot be downloaded here; the cost does not depend on the weights) loaded through
   ``medsam:vit_b:PATH``, traditional occlusion of 961 windows (window 64, stride 32 at 1024 px) per mode.

Every part writes its numbers to ``--json`` as soon as it ends, so a run cut short keeps them.
``--markdown FILE.json`` prints the docs table of a stored run.

Usage: python benchmarks/bench_gpu.py [--device cuda] [--budget 330] [--json gpu.json] [--quick]
       python benchmarks/bench_gpu.py --markdown gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import fmt_ratio, fmt_spread, interleave, ratio, summarise  # noqa: E402

ROUNDS = 5
LITE_BATCH = 32
MEDSAM_BATCH = 16
WINDOW, STRIDE = 16, 8          # at 256 px: 31 x 31 = 961 windows over the whole input
SEED = 900                      # held-out phantom seed, as in the other LiteMedSAM benchmarks
#: cheap parameters per method for the CUDA-vs-CPU check (phantom model)
CHECK_PARAMS = {"occlusion": {"window": 32, "stride": 16}, "adaptive-occlusion": {"window": 32, "stride": 16},
                "rise": {"n_samples": 200}, "lime": {"n_samples": 100}, "ig": {"n_steps": 8, "n_samples": 2},
                "gradcam": {}, "causal": {"window": 32, "n_samples": 10},
                "segx": {"base": "occlusion", "base_params": {"window": 32, "stride": 16}}}


class Run:
    """Collects results, writes them after every part, keeps to the time budget."""

    def __init__(self, args):
        self.args, self.t0, self.res = args, time.perf_counter(), {"parts": {}, "errors": {}}
        self.path = Path(args.json) if args.json else None
        self.lite = "phantom" if args.quick else "default"   # --quick: the code paths, not LiteMedSAM's cost
        self.window, self.stride = (64, 32) if args.quick else (WINDOW, STRIDE)

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.t0)

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {msg}", flush=True)

    def save(self) -> None:
        if self.path:
            self.path.write_text(json.dumps(self.res, indent=1, default=_plain) + "\n")

    def part(self, name: str, fn, needs: float) -> None:
        if self.args.only and name not in self.args.only:
            return
        if self.left() < needs:
            self.res["parts"][name] = {"skipped": f"{self.left():.0f} s left, needs about {needs:.0f} s"}
            self.log(f"{name}: skipped ({self.left():.0f} s left)")
            self.save()
            return
        t = time.perf_counter()
        self.log(f"{name}: start")
        try:
            self.res["parts"][name] = fn(self)
        except Exception:   # keep going: the other parts still say something
            self.res["errors"][name] = traceback.format_exc()
            self.log(f"{name}: FAILED\n{self.res['errors'][name]}")
        self.res.setdefault("part_seconds", {})[name] = round(time.perf_counter() - t, 1)
        self.log(f"{name}: done in {time.perf_counter() - t:.1f} s")
        self.save()


def _plain(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def environment(device) -> dict:
    import torch

    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "date": time.strftime("%Y-%m-%d")}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), cuda=torch.version.cuda,
                   sm=f"{p.major}.{p.minor}", tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return env


def liver_case(size: int = 256) -> dict:
    """The liver's largest slice of a held-out CT phantom, windowed as the tool does, and a liver ROI."""
    from scipy import ndimage as ndi

    from napari_xaiclip.phantom import make_phantom
    from napari_xaiclip.pipeline import box_from_mask
    from napari_xaiclip.preprocess import apply_preset

    vol, labels, _ = make_phantom(shape=(40, size, size), modality="ct", seed=SEED)
    z = int(np.argmax((labels == 1).sum((1, 2))))
    gt = labels[z] == 1
    return {"slice": z, "image": apply_preset(vol.data[z], "ct-abdomen"), "gt": gt,
            "roi": ndi.binary_dilation(gt, iterations=max(1, size // 64)),
            "box": [int(v) for v in box_from_mask(gt)]}


def agreement(ex, ref, within=None) -> dict:
    from napari_xaiclip.metrics import spearman, topk_iou

    return {"spearman": round(float(spearman(ex.heatmap, ref.heatmap, within)), 5),
            "top20_iou": round(float(topk_iou(ex.heatmap, ref.heatmap, 0.2, within)), 4),
            "max_abs_diff": float(np.abs(ex.heatmap - ref.heatmap).max())}


# ---------------------------------------------------------------------------------------------- parts

def part_methods(run: Run) -> dict:
    """Every method on the phantom model, on the GPU and on the CPU, traditional and ROI-guided."""
    from napari_xaiclip.explain import explain, method_names
    from napari_xaiclip.models import load_segmenter

    case = liver_case(256)
    segs = {d: load_segmenter("phantom", device=d, cache=False) for d in ("cpu", run.args.device)}
    rows = []
    for method in method_names():
        params = CHECK_PARAMS.get(method, {})
        for mode, roi in (("traditional", None), ("roi", case["roi"])):
            row = {"method": method, "mode": mode}
            try:
                out = {d: explain(method, s, case["image"], box=case["box"], roi=roi, seed=0, **params)
                       for d, s in segs.items()}
                ref, dev = out["cpu"], out[run.args.device]
                row.update(agreement(dev, ref, roi), forwards=dev.n_forward, cpu_s=round(ref.seconds, 2),
                           device_s=round(dev.seconds, 2), finite=bool(np.isfinite(dev.heatmap).all()))
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            run.log(f"methods {json.dumps(row)}")
            rows.append(row)
    return {"rows": rows}


def part_syncs(run: Run) -> dict:
    """Host-device synchronisations during one LiteMedSAM occlusion run, against its batches."""
    import torch

    from napari_xaiclip.explain import explain
    from napari_xaiclip.models import load_segmenter

    if run.args.device == "cpu":
        return {"skipped": "CPU run"}
    seg = load_segmenter(run.lite, device=run.args.device, cache=False)
    case = liver_case(256)
    explain("occlusion", seg, case["image"], box=case["box"], roi=case["roi"], window=WINDOW, stride=STRIDE,
            batch_size=LITE_BATCH)   # warm-up: lazy initialisations sync once
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            ex = explain("occlusion", seg, case["image"], box=case["box"], roi=case["roi"], window=WINDOW,
                         stride=STRIDE, batch_size=LITE_BATCH)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0][:120] for w in caught if "synchroniz" in str(w.message).lower()]
    batches = -(-max(0, ex.n_forward - 1) // LITE_BATCH)
    kinds: dict = {}
    for s in syncs:
        kinds[s] = kinds.get(s, 0) + 1
    return {"windows": ex.n_patch, "forwards": ex.n_forward, "batches": batches, "syncs": len(syncs),
            "sync_kinds": kinds}


def _modes(spec: str, device: str, batch: int, modes, log) -> dict:
    """{mode: (segmenter, report record)}, a fresh segmenter object per mode."""
    from napari_xaiclip.models import load_segmenter
    from napari_xaiclip.models.speed import apply_speed

    out = {}
    for mode in modes:
        seg = load_segmenter(spec, device=device, cache=False)
        seg.gflops  # noqa: B018  (counted once, before any mode and any clock)
        t0 = time.perf_counter()
        report = apply_speed(seg, mode, batch=batch)
        log(f"{spec} {mode}: chose {report.chosen} in {time.perf_counter() - t0:.1f} s; " + "; ".join(report.reasons))
        out[mode] = (seg, {**report.to_record(), "apply_s": round(time.perf_counter() - t0, 1)})
    return out


def _occlusion_modes(run: Run, segs: dict, case: dict, window: int, stride: int, batch: int, rounds: int,
                     roi=None, once=()) -> dict:
    """Occlusion per mode: interleaved timing rounds, agreement with eager, peak device memory.

    Modes in ``once`` are timed by their first call only (the slow reference, to save device time)."""
    import torch

    from napari_xaiclip.explain import explain

    device = torch.device(run.args.device)

    def side(seg):
        return lambda: explain("occlusion", seg, case["image"], box=case["box"], roi=roi, window=window,
                               stride=stride, batch_size=batch)

    first, peak = {}, {}
    for mode, (seg, _) in segs.items():   # first call apart: compile, autotune, allocator
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        first[mode] = side(seg)()
        first[mode].first_s = time.perf_counter() - t0
        if device.type == "cuda":
            peak[mode] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20)
        run.log(f"first call {mode}: {first[mode].first_s:.1f} s, {first[mode].n_forward} forwards")
    times = {m: [ex.first_s] for m, ex in first.items()}
    outputs, record = dict(first), None
    timed = {m: side(s) for m, (s, _) in segs.items() if m not in once}
    if rounds and timed:
        t = interleave(timed, rounds=rounds, progress=lambda msg: run.log(f"occlusion {msg}"))
        times.update(t.times)
        outputs.update({m: v[-1] for m, v in t.outputs.items()})
        record = t.to_json()
    ref = first.get("eager")
    rows = []
    for mode in segs:
        ex = outputs[mode]
        row = {"mode": mode, "chosen": segs[mode][1]["speed_chosen"], "windows": ex.n_patch,
               "forwards": ex.n_forward, "seconds": summarise(times[mode]),
               "first_call_s": round(first[mode].first_s, 2), "peak_mib": peak.get(mode),
               "rounds": len(times[mode]),
               "per_forward_ms": round(1000 * float(np.median(times[mode])) / ex.n_forward, 3)}
        if ref is not None:
            row.update(agreement(ex, ref, roi))
            if "eager" in times and len(times["eager"]) == len(times[mode]):
                row["speedup"] = ratio(times["eager"], times[mode])
            elif "eager" in times:   # eager timed once: ratio of its time to this mode's median, no spread
                r = float(np.median(times["eager"]) / np.median(times[mode]))
                row["speedup"] = {"ratio": r, "round_min": r, "round_max": r, "n": 1}
        rows.append(row)
        run.log(f"occlusion {json.dumps(row, default=_plain)}")
    return {"rows": rows, "rounds": record, "batch": batch, "window": window, "stride": stride}


def part_litemedsam(run: Run) -> dict:
    case = liver_case(256)
    modes = ("eager", "bf16", "auto") if run.args.device != "cpu" else ("eager", "bf16")
    segs = _modes(run.lite, run.args.device, LITE_BATCH, modes, run.log)
    out = {"reports": {m: r for m, (_, r) in segs.items()}, "model": run.lite}
    out["roi"] = _occlusion_modes(run, segs, case, run.window, run.stride, LITE_BATCH, ROUNDS, roi=case["roi"])
    run.res["parts"]["litemedsam"] = out
    run.save()
    if run.args.quick:
        return out
    out["traditional"] = _occlusion_modes(run, segs, case, run.window, run.stride, LITE_BATCH, ROUNDS)
    return out


def part_captum(run: Run) -> dict:
    """Engine vs Captum Occlusion vs a pure batched forward, LiteMedSAM eager fp32, same 961 windows."""
    import torch
    from captum.attr import Occlusion

    from napari_xaiclip.explain import explain
    from napari_xaiclip.explain.base import Context
    from napari_xaiclip.models import load_segmenter

    device = torch.device(run.args.device)
    seg = load_segmenter(run.lite, device=run.args.device, cache=False)
    case = liver_case(256)
    c = Context(seg, case["image"], box=case["box"])
    x = c.x
    sizes = (32, 64) if not run.args.quick else (8,)
    window, stride = run.window, run.stride

    def forward(inp):
        return c.target(torch.sigmoid(seg.logits(inp, c.prompt)))

    occ = Occlusion(forward)
    n = explain("occlusion", seg, case["image"], box=case["box"], window=window, stride=stride,
                batch_size=sizes[0]).n_forward   # also the warm-up

    def engine(bs):
        return lambda: explain("occlusion", seg, case["image"], box=case["box"], window=window, stride=stride,
                               batch_size=bs)

    def captum(bs):
        def call():
            with torch.inference_mode():
                a = occ.attribute(x[None], sliding_window_shapes=(x.shape[0], window, window),
                                  strides=(x.shape[0], stride, stride), baselines=0, perturbations_per_eval=bs)
            sync(device)
            return a
        return call

    def pure(bs):
        def call():
            with torch.inference_mode():
                for start in range(0, n, bs):
                    seg.logits(x[None].expand(min(bs, n - start), -1, -1, -1).contiguous(), c.prompt)
            sync(device)
        return call

    sides = {}
    for bs in sizes:
        sides.update({f"pure@{bs}": pure(bs), f"engine@{bs}": engine(bs), f"captum@{bs}": captum(bs)})
    t = interleave(sides, rounds=ROUNDS, progress=lambda m: run.log(f"captum {m}"))
    ex = t.outputs[f"engine@{sizes[0]}"][-1]
    attr = t.outputs[f"captum@{sizes[0]}"][-1]
    diff = float(np.abs(attr[0].sum(0).float().cpu().numpy() / x.shape[0] - ex.model_heatmap).max())
    best = {k: min(sizes, key=lambda b, k=k: np.median(t.times[f"{k}@{b}"])) for k in ("pure", "engine", "captum")}
    b = {k: f"{k}@{best[k]}" for k in best}
    return {"model": run.lite, "forwards": n, "sizes": sizes, "best": best, "max_abs_diff_vs_captum": diff,
            "summary": {k: summarise(v) for k, v in t.times.items()},
            "engine_vs_captum": ratio(t.times[b["captum"]], t.times[b["engine"]]),
            "engine_vs_pure": ratio(t.times[b["pure"]], t.times[b["engine"]]),
            "engine_vs_pure_same_batch": {bs: ratio(t.times[f"pure@{bs}"], t.times[f"engine@{bs}"]) for bs in sizes},
            "rounds": t.to_json()}


def part_medsam(run: Run) -> dict:
    """MedSAM vit_b (random weights, real loader), 961 windows at 1024 px, per mode."""
    import torch

    from napari_xaiclip.models.sam import build_sam

    tmp = Path(tempfile.mkdtemp())
    path = tmp / "medsam_vit_b_random.pth"
    torch.manual_seed(0)
    torch.save(build_sam("vit_b").state_dict(), path)
    spec = f"medsam:vit_b:{path}"
    modes = ("eager", "bf16", "auto") if run.args.device != "cpu" else ("eager",)
    batch = MEDSAM_BATCH if not run.args.quick else 2
    segs = _modes(spec, run.args.device, batch, modes, run.log)
    case = liver_case(256)
    window, stride = (64, 32) if not run.args.quick else (1024, 1024)
    rounds = 0 if run.args.quick else ROUNDS
    out = {"reports": {m: r for m, (_, r) in segs.items()}, "weights": "random (segment_anything vit_b)",
           "gflops_per_forward": round(float(next(iter(segs.values()))[0].gflops), 1)}
    out["traditional"] = _occlusion_modes(run, segs, case, window, stride, batch, rounds, once=("eager",))
    return out


#: (name, function, seconds it needs on an H200, roughly), in order of importance
PARTS = (("methods", part_methods, 20), ("litemedsam", part_litemedsam, 90), ("medsam", part_medsam, 150),
         ("syncs", part_syncs, 10), ("captum", part_captum, 60))


# ---------------------------------------------------------------------------------------------- markdown

def markdown(res: dict) -> list[str]:
    from napari_xaiclip.reports import markdown_table

    env = res.get("env", {})
    p = res.get("parts", {})
    lines = ["## Real models on a GPU", "",
             f"Measured on {env.get('date', '?')} on one {env.get('gpu', env.get('device'))} "
             f"({env.get('gpu_memory_gib', '?')} GiB, CUDA {env.get('cuda', '?')}), torch {env.get('torch')}, "
             f"Python {env.get('python')}, with `benchmarks/bench_gpu.py` (one run, budget "
             f"{res.get('budget', '?')} s). TF32 for matmul: {env.get('tf32_matmul')} (PyTorch's default). "
             "Seconds are medians (min–max) of interleaved rounds; each round runs every mode once in a random "
             "order. The first call of each mode (compile, autotuning) is outside the rounds and shown apart."
             + (f" Note: {res['medsam_rerun']}." if res.get("medsam_rerun") else ""), ""]
    m = p.get("methods", {}).get("rows")
    if m:
        lines += ["### Every explainer on CUDA against the CPU", "",
                  "Phantom model, phantom liver slice, cheap parameters (`CHECK_PARAMS` in the script); "
                  "Spearman and top-20 % IoU of the CUDA map against the CPU map (inside the ROI in ROI mode). "
                  "Deterministic methods agree to float precision. RISE draws its masks, and IG's NoiseTunnel "
                  "its noise, from a generator on the device, so the CPU and CUDA runs of one seed use different "
                  "random draws and agree only as two seeds do; LIME's traditional map has many superpixels "
                  "with weights near zero, whose order float differences change (its top 20 % still agree). "
                  "Causal finds no block to test in this ROI and gives a zero map on both.", "",
                  markdown_table(m, ["method", "mode", "forwards", "spearman", "top20_iou", "max_abs_diff",
                                     "cpu_s", "device_s", "error"],
                                 ["method", "mode", "forwards", "Spearman vs CPU", "top-20 % IoU vs CPU",
                                  "max abs diff", "CPU s", "CUDA s", "error"]), ""]
    s = p.get("syncs")
    if s and "syncs" in s:
        real = sum(v for k, v in s["sync_kinds"].items() if "called a synchronizing" in k)
        lines += [f"Host-device synchronisations reported by `torch.cuda.set_sync_debug_mode` during ROI-guided "
                  f"LiteMedSAM occlusion ({s['windows']} windows, {s['forwards']} forwards in "
                  f"{s['batches']} batches of {LITE_BATCH}): **{real}**, about "
                  f"{real / max(1, s['batches'] + 1):.1f} per batch and never one per window (PyTorch calls the "
                  "debug mode a prototype that may miss some).", ""]
    for key, title in (("litemedsam", "LiteMedSAM (256 px)"), ("medsam", "MedSAM vit_b architecture (1024 px, "
                                                                           "random weights)")):
        part = p.get(key, {})
        for sub, what in (("roi", "ROI-guided occlusion of the liver"), ("traditional", "traditional occlusion")):
            block = part.get(sub)
            if not block:
                continue
            rows = [{**r, "seconds": fmt_spread(r["seconds"]),
                     "speedup": fmt_ratio(r["speedup"]) if r.get("speedup") else "1"} for r in block["rows"]]
            lines += [f"### {title}: {what}, window {block['window']}, stride {block['stride']}, batch "
                      f"{block['batch']}", "",
                      markdown_table(rows, ["mode", "chosen", "windows", "forwards", "seconds", "speedup",
                                            "per_forward_ms", "first_call_s", "peak_mib", "spearman", "top20_iou"],
                                     ["asked", "ran", "windows", "forwards", "seconds", "speed-up vs eager",
                                      "ms per forward", "first call (s)", "peak CUDA MiB", "Spearman vs eager",
                                      "top-20 % IoU vs eager"]), ""]
        if part.get("reports"):
            lines += ["What each mode chose: " + "; ".join(f"{m}: {r['speed_chosen']} ({r['speed_reasons']})"
                                                           for m, r in part["reports"].items()), ""]
    c = p.get("captum")
    if c and "summary" in c:
        rows = [{"side": k, "seconds": fmt_spread(v)} for k, v in c["summary"].items()]
        lines += [f"### Engine vs Captum `Occlusion`, LiteMedSAM eager fp32, {c['forwards'] - 1} windows", "",
                  f"Engine throughput / Captum's, each at its best batch ({c['best']['engine']} vs "
                  f"{c['best']['captum']}): **{fmt_ratio(c['engine_vs_captum'])}**; pure forward / engine at "
                  f"their best batches: {fmt_ratio(c['engine_vs_pure'])}; max abs difference of the maps "
                  f"{c['max_abs_diff_vs_captum']:.2g}.", "",
                  markdown_table(rows, ["side", "seconds"], ["implementation@batch", "seconds"]), ""]
    for name, err in res.get("errors", {}).items():
        lines += [f"Part `{name}` failed: `{err.strip().splitlines()[-1]}`", ""]
    for name, v in p.items():
        if isinstance(v, dict) and "skipped" in v:
            lines += [f"Part `{name}` skipped: {v['skipped']}.", ""]
    return lines


def _row(part: dict, sub: str, mode: str) -> dict | None:
    for r in (part or {}).get(sub, {}).get("rows", []):
        if r["mode"] == mode:
            return r
    return None


def _cpu_passing_modes(speed: dict) -> list[str]:
    """CPU modes whose occlusion map stayed within Spearman 0.99 and top-20 % IoU 0.95 of eager."""
    return [r["mode"] for r in speed.get("occlusion", [])
            if r["mode"] == "eager" or (r.get("spearman", 0) >= 0.99 and r.get("top20_iou", 0) >= 0.95)]


def targets(speed: dict | None, gpu: dict) -> list[str]:
    """The real-model speed targets with what was measured against each (met or not)."""
    rows = []
    speed = speed or {}
    fw = speed.get("forward", {}).get("summary", {})
    ok = [m for m in _cpu_passing_modes(speed) if m in fw]
    best = min(ok, key=lambda m: fw[m]["median"]) if ok else None
    lite, medsam = gpu.get("parts", {}).get("litemedsam"), gpu.get("parts", {}).get("medsam")
    roi_fw = (_row(lite, "roi", "eager") or {}).get("forwards", 147)
    if best:
        per = fw[best]["median"]
        rows.append({"target": "LiteMedSAM ROI-guided occlusion of a liver-sized ROI, <= 60 s on this CPU",
                     "measured": f"about {per * roi_fw:.0f} s ({best}, the fastest mode within tolerance: "
                                 f"{per:.2f} s per image x {roi_fw} forwards; an estimate from the forward timing)",
                     "met": "no"})
        rows.append({"target": "LiteMedSAM traditional occlusion (961 windows), <= 8 min on this CPU",
                     "measured": f"about {per * 962 / 60:.0f} min ({best}; estimate, {per:.2f} s x 962 forwards)",
                     "met": "no"})
    for sub, what in (("roi", f"ROI-guided, {roi_fw - 1} windows"), ("traditional", "traditional, 961 windows")):
        e, a = _row(lite, sub, "eager"), _row(lite, sub, "auto")
        if e and a:
            rows.append({"target": f"LiteMedSAM occlusion on the GPU ({what})",
                         "measured": f"eager fp32 {e['seconds']['median']:.2f} s; bf16+compile "
                                     f"{a['seconds']['median']:.2f} s (Spearman {a['spearman']:.3f}, top-20 % IoU "
                                     f"{a['top20_iou']:.3f} vs eager)", "met": "(no target)"})
    cap = gpu.get("parts", {}).get("captum", {})
    if cap.get("engine_vs_captum"):
        fast = _row(lite, "traditional", "auto")
        captum_best = cap["summary"][f"captum@{cap['best']['captum']}"]["median"]
        extra = (f"; with bf16+compile the engine takes {fast['seconds']['median']:.2f} s against Captum's "
                 f"{captum_best:.2f} s ({captum_best / fast['seconds']['median']:.2f}x), but those maps drift "
                 "from fp32") if fast else ""
        rows.append({"target": "engine throughput >= 2x Captum Occlusion (LiteMedSAM, same windows, eager fp32)",
                     "measured": f"{cap['engine_vs_captum']['ratio']:.3f}x on the H200 (both at the batched-"
                                 f"forward floor){extra}", "met": "no"})
        r = cap["engine_vs_pure"]
        rows.append({"target": "engine never slower than the pure eager batched forward",
                     "measured": f"pure / engine {r['ratio']:.3f} ({r['round_min']:.3f}-{r['round_max']:.3f}) on "
                                 "the H200: the engine adds about 1 % (scoring, map updates)",
                     "met": "no (by about 1 %)" if r["round_max"] < 1 else "yes"})
    rise = speed.get("rise", [])
    if rise:
        def fits(r):
            return r["forwards"] * 3 <= r["full_forwards"] and r["top20_iou_vs_full"] >= 0.9

        parts = []
        for key in dict.fromkeys((r["mode"], bool(r.get("center"))) for r in rise):
            group = [r for r in rise if (r["mode"], bool(r.get("center"))) == key]
            early = [r for r in group if r["forwards"] < r["full_forwards"]]
            pick = min([r for r in group if fits(r)] or early or group, key=lambda r: r["forwards"])
            parts.append(f"{key[0]}{' centred' if key[1] else ''}: "
                         + (f"stop_iou {pick['stop_iou']:g} stops at {pick['forwards']} forwards "
                            f"({pick['full_forwards'] / pick['forwards']:.1f}x fewer), IoU "
                            f"{pick['top20_iou_vs_full']:.2f}" if early else
                            f"never stops before N (stop_iou >= {min(r['stop_iou'] for r in group):g})"))
        rows.append({"target": "RISE stop: >= 3x fewer passes than N = 2000 at top-20 % IoU >= 0.9 against "
                               "N = 2000", "measured": "; ".join(parts),
                     "met": "yes" if any(fits(r) for r in rise) else "no"})
    for mode, label in (("auto", "bf16+compile"), ("bf16", "bf16"), ("eager", "eager fp32")):
        r = _row(medsam, "traditional", mode)
        if r and mode == "auto":
            e = _row(medsam, "traditional", "eager")
            rows.append({"target": "GPU: MedSAM vit_b, 961 windows at 1024 px, < 10 s on an H100/H200",
                         "measured": f"{r['seconds']['median']:.2f} s with {label} (eager fp32 "
                                     f"{e['seconds']['median']:.1f} s); random weights, same architecture",
                         "met": "yes (bf16+compile only)"})
    peaks = [f"{name} {mode} {r['peak_mib']} MiB" for name, part in (("LiteMedSAM", lite), ("vit_b", medsam))
             for mode in ("eager", "auto") if (r := _row(part, "traditional", mode)) and r.get("peak_mib")]
    if peaks:
        rows.append({"target": "memory stays bounded (peak CUDA memory, fresh model per mode)",
                     "measured": "; ".join(peaks), "met": "yes"})
    if not rows:
        return []
    from napari_xaiclip.reports import markdown_table

    return ["### Real-model speed: the targets and what was measured", "",
            "CPU rows use the forward timing of the section \"Execution modes and RISE's convergence stop\" "
            "(this 2-core CPU); GPU rows this section's H200 run. `auto` ran bf16+compile on the GPU at the "
            "time of that run; since bf16 moved the maps beyond the tolerance there, `auto` now compiles in "
            "fp32 on CUDA, which the H200 run did not time.", "",
            markdown_table(rows, ["target", "measured", "met"], ["target", "measured", "met"]), ""]


def measure(args) -> dict:
    """Run every part (see the module docstring) and return the results."""
    import torch

    run = Run(args)
    run.res.update(env=environment(torch.device(args.device)), budget=args.budget)
    run.log(json.dumps(run.res["env"]))
    run.save()
    for name, fn, needs in PARTS:
        run.part(name, fn, needs)
    run.log("all parts done")
    return run.res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=330.0, help="seconds; parts that would not fit are skipped")
    ap.add_argument("--json", help="write the numbers here after every part")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a code-path check on a CPU")
    ap.add_argument("--only", nargs="*", choices=[n for n, _, _ in PARTS])
    ap.add_argument("--markdown", help="print the docs section of a stored run and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        print("\n".join(markdown(json.loads(Path(args.markdown).read_text()))))
        return 0
    print("\n".join(markdown(measure(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
