"""Execution modes (``napari_xaiclip.models.speed``) on LiteMedSAM, and RISE's convergence stop.

1. Seconds per forward at batch 8 for eager / bf16 / compile on LiteMedSAM (spec ``default``), the
   modes side by side in interleaved rounds (benchmarks/timing.py), each mode on its own segmenter
   object; compile's first call (the compile) and each mode's first batch-8 call are reported apart.
2. Map agreement with eager of ROI-guided occlusion (window 16, stride 8, a square ROI of about 30
   windows around the organ) run in each mode: Spearman and top-20 % IoU inside the ROI.
3. RISE with ``stop_iou`` (0.8, 0.9, 0.95) against N = 2000 masks on the phantom model, traditional
   and ROI-guided: passes used and the top-20 % IoU of the stopped map against the N = 2000 map
   (and, outside ``--quick``, the IoU of two N = 2000 runs with different seeds: the noise floor
   any stop is held to).

Usage: python benchmarks/bench_speed.py [--quick] [--modes eager bf16 compile] [--rounds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import fmt_ratio, fmt_spread, interleave, ratio, summarise  # noqa: E402

from napari_xaiclip.reports import markdown_table  # noqa: E402

MODES = ("eager", "bf16", "compile")
ROUNDS = 5
BATCH = 8
WINDOW, STRIDE = 16, 8
ROI_SIDE = 32              # px at the 256 px input: 5-6 window starts per axis, about 30 windows
RISE_N, CHECK_EVERY = 2000, 200
THRESHOLDS = (0.7, 0.8, 0.9)   # stop_iou values compared
SEED = 900                 # held-out phantom seed, as in the other LiteMedSAM benchmarks
ORGANS = {1: "liver", 3: "spleen", 2: "right kidney"}


def phantom_cases(n: int) -> list[dict]:
    """The largest slice of each organ in a (40, 256, 256) CT phantom, windowed as the tool does."""
    from napari_xaiclip.phantom import make_phantom
    from napari_xaiclip.pipeline import box_from_mask
    from napari_xaiclip.preprocess import apply_preset

    vol, labels, _ = make_phantom(shape=(40, 256, 256), modality="ct", seed=SEED)
    out = []
    for value, name in list(ORGANS.items())[:n]:
        z = int(np.argmax((labels == value).sum((1, 2))))
        gt = labels[z] == value
        out.append({"organ": name, "slice": z, "image": apply_preset(vol.data[z], "ct-abdomen"), "gt": gt,
                    "box": [int(v) for v in box_from_mask(gt)]})
    return out


def square_roi(gt: np.ndarray, side: int) -> np.ndarray:
    """A side x side square at the mask's centroid, aligned to the stride so the window count is fixed."""
    ys, xs = np.nonzero(gt)
    h, w = gt.shape
    y0 = int(np.clip(round(ys.mean() - side / 2) // STRIDE * STRIDE, 0, h - side))
    x0 = int(np.clip(round(xs.mean() - side / 2) // STRIDE * STRIDE, 0, w - side))
    roi = np.zeros(gt.shape, bool)
    roi[y0:y0 + side, x0:x0 + side] = True
    return roi


def load_modes(modes, log) -> dict:
    """{mode: (segmenter, SpeedReport)}, one LiteMedSAM object per mode."""
    from napari_xaiclip.models import load_segmenter
    from napari_xaiclip.models.speed import apply_speed

    out = {}
    for mode in modes:
        seg = load_segmenter("default", device="cpu", cache=False)
        seg.gflops  # noqa: B018  (counted once, eagerly, before any mode)
        t0 = time.perf_counter()
        report = apply_speed(seg, mode, batch=BATCH)   # compile for the batch every part below uses
        log(f"{mode}: chose {report.chosen} in {time.perf_counter() - t0:.1f} s; " + "; ".join(report.reasons))
        out[mode] = (seg, report)
    return out


def forward_timing(segs: dict, case: dict, rounds: int, batch: int, log) -> dict:
    """Seconds per image of a batch-``batch`` forward, modes interleaved; first calls apart."""
    import torch

    seg0 = next(iter(segs.values()))[0]
    x, geometry = seg0.preprocess(case["image"])
    gen = torch.Generator().manual_seed(0)
    keep = (torch.rand(batch, 1, x.shape[1], x.shape[2], generator=gen) > 0.1).float()
    images = x[None] * keep   # a batch of perturbed copies, as the explainers send
    prompt = seg0.encode_prompt(box=case["box"], geometry=geometry)

    def side(seg):
        def call():
            with torch.inference_mode():
                return seg.logits(images, prompt)
        return call

    first = {}
    for mode, (seg, _) in segs.items():   # untimed by the rounds: a recompile for batch 8 would show here
        t0 = time.perf_counter()
        side(seg)()
        first[mode] = time.perf_counter() - t0
        log(f"first batch-{batch} call, {mode}: {first[mode]:.1f} s")
    t = interleave({mode: side(seg) for mode, (seg, _) in segs.items()}, rounds=rounds,
                   progress=lambda m: log(f"forward timing {m}"))
    per_image = {mode: [s / batch for s in v] for mode, v in t.times.items()}
    out = {"batch": batch, "rounds": rounds, "orders": t.orders, "first_call_s": first,
           "per_image_s": per_image, "summary": {m: summarise(v) for m, v in per_image.items()}}
    if "eager" in per_image:
        out["speedup"] = {m: ratio(per_image["eager"], v) for m, v in per_image.items() if m != "eager"}
    return out


def occlusion_agreement(segs: dict, case: dict, roi_side: int, log) -> list[dict]:
    """ROI-guided occlusion in each mode; Spearman and top-20 % IoU against eager inside the ROI."""
    from napari_xaiclip.explain import explain
    from napari_xaiclip.metrics import spearman, topk_iou

    roi = square_roi(case["gt"], roi_side)
    runs = {}
    for mode, (seg, _) in segs.items():
        ex = explain("occlusion", seg, case["image"], box=case["box"], roi=roi, window=WINDOW, stride=STRIDE,
                     batch_size=BATCH, seed=0)
        runs[mode] = ex
        log(f"occlusion {mode}: {ex.n_patch} windows, {ex.n_forward} forwards, {ex.seconds:.1f} s")
    ref = runs.get("eager")
    rows = []
    for mode, ex in runs.items():
        row = {"mode": mode, "windows": ex.n_patch, "forwards": ex.n_forward, "seconds": ex.seconds}
        if ref is not None:
            row["spearman"] = spearman(ex.heatmap, ref.heatmap, roi)
            row["top20_iou"] = topk_iou(ex.heatmap, ref.heatmap, 0.2, roi)
            row["max_abs_diff"] = float(np.abs(ex.heatmap - ref.heatmap).max())
        rows.append(row)
    return rows


def _stop_point(history: list, threshold: float) -> int | None:
    """Masks at which the split-half rule stops for ``threshold`` (None: it runs to the end)."""
    for done, iou in history:
        if iou >= threshold:
            return done
    return None


def _rise_with_snapshots(seg, case, roi, seed: int, n: int, center: bool = False):
    """RISE with N masks and the stop armed at IoU 1 (so it records every checkpoint and, in practice,
    runs to the end), with the running map at every batch: the map a run stopped at n masks returns is
    the map after n masks (masks come in the same order; tests/test_rise_convergence.py checks it)."""
    from napari_xaiclip.explain import iter_explain

    gen = iter_explain("rise", seg, case["image"], box=case["box"], roi=roi, n_samples=n, seed=seed,
                       stop_iou=1.0, check_every=CHECK_EVERY, center=center)
    maps = {}
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value, maps
        maps[p.done] = p.slice_heatmap()


def rise_stop(cases: list[dict], noise_floor: bool, log, n: int = RISE_N) -> list[dict]:
    """RISE stopped at each threshold vs N = ``n`` masks, phantom model, traditional and ROI-guided.

    One run per case and mode gives every threshold's stop (see :func:`_rise_with_snapshots`); the
    lowest threshold that stops early is then rerun for real, to check its passes and its map.
    """
    from scipy import ndimage as ndi

    from napari_xaiclip.explain import explain
    from napari_xaiclip.metrics import topk_iou
    from napari_xaiclip.models import load_segmenter

    seg = load_segmenter("phantom", device="cpu")
    rows = []
    for case in cases:
        for mode, center in (("traditional", False), ("roi", False), ("traditional", True), ("roi", True)):
            roi = ndi.binary_dilation(case["gt"], iterations=8) if mode == "roi" else None
            t0 = time.perf_counter()
            full, maps = _rise_with_snapshots(seg, case, roi, seed=0, n=n, center=center)
            full_s = time.perf_counter() - t0
            history = full.info["checkpoints"]
            floor = None
            if noise_floor:
                other = explain("rise", seg, case["image"], box=case["box"], roi=roi, n_samples=n, seed=1,
                                center=center)
                floor = topk_iou(other.heatmap, full.heatmap, 0.2, roi)
            verified = False
            for t in THRESHOLDS:
                at = _stop_point(history, t)
                row = {"organ": case["organ"], "mode": mode, "center": center, "stop_iou": t, "masks_used": at or n,
                       "forwards": (at or n) + 1, "full_forwards": full.n_forward, "full_s": full_s,
                       "top20_iou_vs_full": topk_iou(maps[at], full.heatmap, 0.2, roi) if at else 1.0,
                       "full_vs_seed1_iou": floor, "checkpoint_iou": [h[1] for h in history]}
                if at and not verified:   # one real stopped run: same passes, same map
                    real = explain("rise", seg, case["image"], box=case["box"], roi=roi, n_samples=n, seed=0,
                                   stop_iou=t, check_every=CHECK_EVERY, center=center)
                    row["verified"] = bool(real.n_forward == at + 1 and topk_iou(real.heatmap, maps[at], 0.2, roi) == 1)
                    row["stop_s"] = real.seconds
                    verified = True
                rows.append(row)
                log(f"rise {json.dumps({k: v for k, v in row.items() if k != 'checkpoint_iou'})}")
    return rows


def run(ctx) -> list[str]:
    """Measure, store raw numbers in ctx["results"]["speed"], return markdown lines.

    ctx: ``quick`` (one RISE case, no noise floor), optional ``speed_modes``, ``rounds``, ``roi_side``,
    ``rise_n``, ``rise_cases``, ``skip`` (a set of "forward", "occlusion", "rise").
    """
    import torch

    def log(msg):
        print(f"  speed: {msg}", flush=True)

    quick, skip = ctx.get("quick", False), set(ctx.get("skip", ()))
    modes = tuple(ctx.get("speed_modes", MODES))
    rounds = int(ctx.get("rounds", ROUNDS))
    t0 = time.time()
    res = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "modes": modes}
    cases = phantom_cases(int(ctx.get("rise_cases") or 1))   # the liver; --rise-cases 3 adds spleen and kidney
    if {"forward", "occlusion"} - skip:
        from napari_xaiclip.models.speed import bf16_support

        res["bf16_support"] = bf16_support(torch.device("cpu"))[1]
        segs = load_modes(modes, log)
        res["reports"] = {m: r.to_record() for m, (_, r) in segs.items()}
        if "forward" not in skip:
            res["forward"] = forward_timing(segs, cases[0], rounds, BATCH, log)
        if "occlusion" not in skip:
            res["occlusion"] = occlusion_agreement(segs, cases[0], int(ctx.get("roi_side", ROI_SIDE)), log)
    if "rise" not in skip:
        res["rise_n"] = int(ctx.get("rise_n", RISE_N))
        res["rise"] = rise_stop(cases, noise_floor=not quick, log=log, n=res["rise_n"])
    res["seconds"] = time.time() - t0
    ctx.setdefault("results", {})["speed"] = res
    return markdown(res)


def markdown(res: dict) -> list[str]:
    lines = ["## Execution modes and RISE's convergence stop", "",
             f"Measured on {res['date']} with `benchmarks/bench_speed.py`, torch {res['torch']} "
             f"({res['threads']} threads) on a CPU shared with other jobs; bf16: {res.get('bf16_support', '–')}.", ""]
    if "reports" in res:
        rows = [{"mode": m, **r} for m, r in res["reports"].items()]
        lines += ["What `apply_speed` chose (probe: a synthetic slice and an occluded copy, box prompt, vs fp32 "
                  "eager):", "",
                  markdown_table(rows, ["mode", "speed_chosen", "speed_compile_batch", "speed_compile_s",
                                        "speed_cosine", "speed_dice", "speed_max_abs_diff"],
                                 ["asked", "chosen", "compiled batch", "first compiled call (s)", "logits cosine",
                                  "mask Dice", "max abs diff"]), ""]
    fw = res.get("forward")
    if fw:
        rows = [{"mode": m, "per_image": fmt_spread(fw["summary"][m]),
                 "speedup": fmt_ratio(fw["speedup"][m]) if m in fw.get("speedup", {}) else "1",
                 "first": f"{fw['first_call_s'][m]:.1f}"} for m in fw["summary"]]
        lines += [f"### LiteMedSAM forward, batch {fw['batch']}", "",
                  f"Seconds per image, median (min–max) over {fw['rounds']} interleaved rounds (each round runs "
                  "every mode once, in a random order); speedup = eager / mode, ratio of medians (per-round "
                  "min–max). The first batch call of each mode is not in the rounds.", "",
                  markdown_table(rows, ["mode", "per_image", "speedup", "first"],
                                 ["mode", "s / image", "speedup vs eager", "first batch call (s)"]), ""]
    occ = res.get("occlusion")
    if occ:
        lines += [f"### ROI-guided occlusion with LiteMedSAM in each mode (window {WINDOW}, stride {STRIDE})", "",
                  "Agreement with the eager map inside the ROI; one run per mode (seconds are single runs).", "",
                  markdown_table(occ, ["mode", "windows", "forwards", "seconds", "spearman", "top20_iou",
                                       "max_abs_diff"],
                                 ["mode", "windows", "forwards", "seconds", "Spearman vs eager",
                                  "top-20 % IoU vs eager", "max abs diff"]), ""]
    rise = res.get("rise")
    if rise:
        n = res.get("rise_n", RISE_N)
        cols = ["organ", "mode", "center", "stop_iou", "forwards", "top20_iou_vs_full", "full_vs_seed1_iou",
                "verified"]
        heads = ["organ", "mode", "centred", "stop_iou", "forwards with the stop", f"top-20 % IoU vs N={n}",
                 f"IoU of two N={n} runs (seeds 0, 1)", "rerun with the stop: same passes and map"]
        lines += [f"### RISE: convergence stop (check every {CHECK_EVERY} masks) vs N = {n}", "",
                  "Phantom tiny SAM, phantom CT seed 900, each organ's largest slice; ROI-guided mode with the "
                  f"organ mask dilated 8 px as the ROI (IoU inside it). One N = {n} run per row group records "
                  "every checkpoint's split-half IoU (the even- against the odd-index masks) and the running map, "
                  "so each threshold's stop and map are read off it "
                  "(a stopped run returns exactly the map after the masks it used); the lowest threshold that "
                  "stops early is rerun for real as a check. Without a stop the run makes "
                  f"{n + 1} forwards. Checkpoint IoUs per group: "
                  + "; ".join(f"{r['organ']} {r['mode']}{' centred' if r.get('center') else ''}: "
                              + ", ".join("–" if v is None else f"{v:.2f}" for v in r["checkpoint_iou"])
                              for r in rise if r["stop_iou"] == THRESHOLDS[0]) + ".", "",
                  markdown_table(rise, cols, heads), ""]
    lines += [f"Section wall time {res['seconds']:.0f} s.", ""]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one RISE case, no RISE noise floor")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--roi-side", type=int, default=ROI_SIDE, help="ROI side in px at 256 px (occlusion part)")
    p.add_argument("--rise-n", type=int, default=RISE_N, help="RISE masks without a stop (smoke runs: fewer)")
    p.add_argument("--rise-cases", type=int, choices=(1, 2, 3),
                   help="organs for the RISE part (default 1, the liver: four N = 2000 groups take ~25 min)")
    p.add_argument("--skip", nargs="*", default=[], choices=("forward", "occlusion", "rise"))
    p.add_argument("--json", help="write the raw numbers here")
    args = p.parse_args(argv)
    ctx = {"quick": args.quick, "results": {}, "speed_modes": args.modes, "rounds": args.rounds,
           "roi_side": args.roi_side, "skip": args.skip, "rise_n": args.rise_n,
           "rise_cases": args.rise_cases}
    lines = run(ctx)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(ctx["results"]["speed"], indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
