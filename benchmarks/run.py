"""`make bench`: measure explainers on phantom CT slices with the phantom-trained models, and the default
segmenter LiteMedSAM in its own section, and write docs/benchmarks.md (tables) plus benchmarks/results.json
(raw numbers).

Sections: models; Table III analog (traditional vs ROI-guided occlusion, LIME, RISE);
engine vs a one-patch-per-forward loop vs Captum's Occlusion vs the pure batched forward;
adaptive vs dense ROI-guided occlusion; RISE memory at a 1024 px input; model- and data-randomisation
checks; ExplainSeg variants; causal vs SegX vs occlusion; batch throughput; memory;
LiteMedSAM (Dice on the phantom and a real CT slice, traditional vs ROI-guided occlusion).

Every timing comparison runs its sides interleaved, >= 5 rounds in a seeded random order per round
(benchmarks/timing.py); every memory figure comes from a spawned process, checked by a self-test
(benchmarks/memtool.py).

With ``--only``, the sections run replace theirs in the existing document and results; the others are
kept, and the header says which run each section comes from.

Usage: python benchmarks/run.py [--out docs/benchmarks.md] [--quick] [--only SECTION ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from napari_xaiclip.io import atomic_write_text  # noqa: E402
from napari_xaiclip.reports import markdown_table  # noqa: E402

import timing  # noqa: E402
from timing import fmt_ratio, fmt_spread, interleave, summarise  # noqa: E402

ORGANS = {1: "liver", 3: "spleen", 2: "right kidney"}
SEEDS = (900, 901)
ROUNDS = 5
#: the engine's automatic batch size at the 256 px input on a CPU (1 M pixels per batch); every
#: comparison runs both sides at this size, and a sweep on one case gives each side's best
BATCH = 16
SWEEP = (8, 16, 32)
TABLE3_METHODS = ("occlusion", "lime", "rise")
MODES = ("traditional", "roi")


def load_cases(quick: bool):
    """(seed, organ name, slice, labels slice, image slice) where each organ is largest, on held-out seeds."""
    from napari_xaiclip.phantom import make_phantom

    cases = []
    for seed in SEEDS[:1] if quick else SEEDS:
        vol, labels, _ = make_phantom(shape=(40, 256, 256), modality="ct", seed=seed)
        for value, name in ORGANS.items():
            z = int(np.argmax((labels == value).sum((1, 2))))
            cases.append({"seed": seed, "organ": name, "slice": z, "image": vol.data[z],
                          "gt": labels[z] == value, "volume": vol.data, "labels": labels})
    return cases


def _timed_cases(ctx):
    """Cases timed in interleaved rounds: one per organ on the first seed (quality uses every case)."""
    return ctx["cases"][:1] if ctx["quick"] else [c for c in ctx["cases"] if c["seed"] == SEEDS[0]]


def _progress(label):
    return lambda msg: print(f"  {label}: {msg}", flush=True)


def _mm(values, digits: int = 3) -> str:
    """"mean (min–max)" over cases."""
    v = [x for x in values if x is not None]
    if not v:
        return "–"
    g = timing._g
    return f"{g(float(np.mean(v)), digits)} ({g(min(v), digits)}–{g(max(v), digits)})"


def _mean(values, digits: int = 3) -> str:
    v = [x for x in values if x is not None]
    return timing._g(float(np.mean(v)), digits) if v else "–"


def section_models(ctx):
    from napari_xaiclip.models import list_models

    rows = [r for r in list_models() if "gflops" in r]
    ctx["results"]["models"] = rows
    md = ["## Models", "",
          markdown_table(rows, ["kind", "spec", "description", "input_size", "parameters", "gflops"],
                         ["kind", "spec", "model", "input px", "parameters", "GFLOPs / forward"]), ""]
    return md


def _localize(loc, case):
    """The localizer's (ROI, score map) for the case's organ, computed once per case."""
    if "localized" not in case:
        from napari_xaiclip.pipeline import localize

        case["localized"] = localize(loc, case["image"], case["organ"])
    return case["localized"]


def _loc_gflops(ctx) -> float:
    if "loc_gflops" not in ctx:
        from napari_xaiclip.models import localizer_gflops

        ctx["loc_gflops"] = float(localizer_gflops(ctx["loc"]))
    return ctx["loc_gflops"]


# --------------------------------------------------------------------------- Table III analog


def _table3_params(ctx) -> dict:
    # RISE at the --quick N: N = 2000 would make the interleaved rounds of both modes take ~20 min
    return {"rise": {"n_samples": 500}}


def _table3_sides(ctx, case, batches):
    """Timed sides for one case: every method x mode x batch size. ROI-guided sides compute their ROI
    (the localizer's forward, smoothing, threshold, cleaning) inside the timed call and return its
    seconds, so total = explanation + ROI extraction, round by round."""
    from napari_xaiclip.explain import explain
    from napari_xaiclip.pipeline import box_from_mask, localize

    seg, loc, params = ctx["seg"], ctx["loc"], _table3_params(ctx)
    box = box_from_mask(case["gt"])
    sides = {}
    for method in TABLE3_METHODS:
        kw = params.get(method, {})
        for bs in batches:
            def trad(m=method, b=bs, k=kw):
                ex = explain(m, seg, case["image"], box=box, seed=0, batch_size=b, **k)
                return {"roi_s": 0.0, "n_forward": ex.n_forward, "gflops": ex.gflops}

            def roi_guided(m=method, b=bs, k=kw):
                t0 = time.perf_counter()
                roi, _ = localize(loc, case["image"], case["organ"])
                roi_s = time.perf_counter() - t0
                ex = explain(m, seg, case["image"], box=box, roi=roi, seed=0, batch_size=b, **k)
                return {"roi_s": roi_s, "n_forward": ex.n_forward, "gflops": ex.gflops}

            sides[f"{method}/traditional@{bs}"] = trad
            sides[f"{method}/roi@{bs}"] = roi_guided
    return sides


def section_table3(ctx):
    """Traditional vs ROI-guided occlusion, LIME and RISE with the localizer's ROI (Table III analog)."""
    from napari_xaiclip.metrics import dice
    from napari_xaiclip.pipeline import box_from_mask, explain_slice

    seg, loc = ctx["seg"], ctx["loc"]
    params = _table3_params(ctx)
    loc_gflops = _loc_gflops(ctx)
    per_case = []
    # quality: one explain_slice per case (deterministic given the seed), the library's own records
    for case in ctx["cases"]:
        t0 = time.perf_counter()
        roi, score = _localize(loc, case)
        roi_s = time.perf_counter() - t0
        results = explain_slice(seg, case["image"], box_from_mask(case["gt"]), list(TABLE3_METHODS), MODES,
                                roi=roi, gt=case["gt"], score_map=score, seed=0, params=params, batch_size=BATCH,
                                roi_cost=(roi_s, loc_gflops))
        for r in results:
            per_case.append(dict(r.record, organ=case["organ"], seed=case["seed"], slice=case["slice"],
                                 roi_dice_vs_gt=dice(roi, case["gt"])))
        print(f"  table III quality: {case['organ']} seed {case['seed']} done", flush=True)
    # time: interleaved rounds per timed case; the first also sweeps the batch size
    timed = _timed_cases(ctx)
    sweep = (BATCH,) if ctx["quick"] else SWEEP
    rounds = {}
    for i, case in enumerate(timed):
        sides = _table3_sides(ctx, case, sweep if i == 0 else (BATCH,))
        rounds[f"{case['organ']}/{case['seed']}"] = interleave(
            sides, ROUNDS, seed=i, progress=_progress(f"table III timing {case['organ']} seed {case['seed']}"))
    cost_rows, ratio_rows, sweep_rows = _table3_cost(rounds, per_case, loc_gflops)
    qual_rows = _table3_quality(per_case)
    ctx["results"]["table3"] = per_case
    ctx["results"]["table3_cost"] = cost_rows
    ctx["results"]["table3_ratios"] = ratio_rows
    ctx["results"]["table3_sweep"] = sweep_rows
    ctx["results"]["table3_quality"] = qual_rows
    ctx["results"]["table3_rounds"] = {k: {"times": t.times, "orders": t.orders,
                                           "roi_seconds": {s: [o["roi_s"] for o in v] for s, v in t.outputs.items()}}
                                       for k, t in rounds.items()}
    roi_quality = {o: float(np.mean([r["roi_dice_vs_gt"] for r in per_case if r["organ"] == o and
                                     r["method"] == "occlusion" and r["mode"] == "roi"]))
                   for o in dict.fromkeys(c["organ"] for c in ctx["cases"])}
    seeds = sorted({c["seed"] for c in ctx["cases"]})
    timed_names = ", ".join(f"{c['organ']} seed {c['seed']}" for c in timed)
    return [
        "## Table III analog: traditional vs ROI-guided", "",
        f"{len(ctx['cases'])} held-out phantom CT slices (seeds {', '.join(map(str, seeds))}; the slice where each "
        f"of {', '.join(ORGANS.values())} is largest). Box prompt: the organ's bounding box; ROI: the default "
        "localizer's map for the organ's name (sigma 2, threshold 0.5, largest component, holes filled). "
        f"RISE N = {params['rise']['n_samples']} (the `--quick` N; the default 2000 would make the timing rounds "
        "four times longer), LIME n_samples auto (8 per superpixel, 200-500), occlusion patch 16 / stride 8 at "
        f"the 256 px input; batch {BATCH} (the engine's automatic size) on both sides.", "",
        "### Cost", "",
        f"Seconds: {ROUNDS} interleaved rounds on each of {len(timed)} slices ({timed_names}), every method and "
        "mode once per round in a random order; median (min–max) over slices x rounds. ROI-guided rows are end "
        "to end: `total` = explanation + ROI extraction (the localizer's forward and post-processing, also shown "
        "alone), timed in the same call. GFLOPs: `n_forward` x GFLOPs per forward, the localizer's forward "
        "added to `total` in ROI-guided rows.", "",
        markdown_table(cost_rows, ["method", "mode", "n_forward", "gflops", "roi_gflops", "total_gflops",
                                   "seconds", "roi_seconds", "total_seconds"],
                       ["method", "mode", "forwards", "GFLOPs explanation", "GFLOPs ROI extraction",
                        "GFLOPs total", "s explanation", "s ROI extraction", "s total"]), "",
        "Traditional / ROI-guided, end to end (ROI extraction included): forwards and GFLOPs are exact counts; "
        "seconds: ratio of the medians at the same batch size, with the min–max of the per-round ratios "
        "(traditional and ROI-guided of the same slice and round).", "",
        markdown_table(ratio_rows, ["method", "forward_ratio", "gflops_ratio", "time_ratio"],
                       ["method", "forward ratio", "GFLOPs ratio", f"seconds ratio, batch {BATCH}"]), "",
        f"Batch-size sweep ({', '.join(map(str, sweep))}) on {timed_names.split(',')[0]}, in the same "
        "interleaved rounds: each side's median seconds (end to end) per batch size and its best.", "",
        markdown_table(sweep_rows, ["method", "mode", *[f"bs{b}" for b in sweep], "best"],
                       ["method", "mode", *[f"batch {b}" for b in sweep], "best batch"]), "",
        "### Quality", "",
        "Mean (min–max) over the slices for the deletion/insertion AUC (Dice against the baseline mask, 50 "
        "steps), means for the rest; `trivial` is the same figure for the trivial map; `beats trivial` counts "
        "the slices where the map beats it (lower deletion, higher insertion, Dice and pointing).", "",
        markdown_table(qual_rows, ["method", "mode", "deletion_auc", "trivial_deletion_auc", "insertion_auc",
                                   "trivial_insertion_auc", "dice_in_roi", "trivial_dice_in_roi",
                                   "pointing_in_roi", "trivial_pointing_in_roi", "dice_vs_gt", "trivial_dice_vs_gt",
                                   "pointing_game", "trivial_pointing_game", "beats"],
                       ["method", "mode", "deletion AUC", "trivial", "insertion AUC", "trivial", "Dice in ROI",
                        "trivial", "pointing in ROI", "trivial", "Dice vs GT (slice)", "trivial",
                        "pointing game (slice)", "trivial", "beats trivial: del / ins / Dice in ROI / pointing in ROI"]),
        "",
        "The trivial map is a constant inside the localizer's ROI (zero outside): it knows where the ROI is and "
        "nothing else, so a figure tells something about the explanation only where it beats its trivial value; "
        "deletion/insertion AUC and the in-ROI Dice and pointing are not circular, while the whole-slice Dice vs "
        "GT and pointing game of ROI-guided maps largely measure the ROI (which the trivial map matches as well).",
        "",
        "Localizer ROI Dice against the organ label on these slices: "
        + ", ".join(f"{k} {v:.3f}" for k, v in roi_quality.items()), ""]


def _table3_cost(rounds, per_case, loc_gflops):
    cost_rows, ratio_rows, sweep_rows = [], [], []
    tot = {}  # (method, mode) -> pooled per-round totals, paired across modes by (case, round)
    parts = {}
    for method in TABLE3_METHODS:
        for mode in MODES:
            side = f"{method}/{mode}@{BATCH}"
            total, roi_s = [], []
            for t in rounds.values():
                total += t.times[side]
                roi_s += [o["roi_s"] for o in t.outputs[side]]
            tot[(method, mode)] = total
            parts[(method, mode)] = ([a - b for a, b in zip(total, roi_s)], roi_s)
    for method in TABLE3_METHODS:
        for mode in MODES:
            recs = [r for r in per_case if r["method"] == method and r["mode"] == mode]
            expl_s, roi_s = parts[(method, mode)]
            nf = [r["n_forward"] for r in recs]
            gfl = float(np.mean([r["gflops"] for r in recs]))
            roi_g = loc_gflops if mode == "roi" else 0.0
            cost_rows.append({
                "method": method, "mode": mode,
                "n_forward": f"{np.mean(nf):.0f}" + ("" if min(nf) == max(nf) else f" ({min(nf)}–{max(nf)})"),
                "gflops": f"{gfl:.1f}", "roi_gflops": f"{roi_g:.2f}" if mode == "roi" else "–",
                "total_gflops": f"{gfl + roi_g:.1f}",
                "seconds": fmt_spread(summarise(expl_s)),
                "roi_seconds": fmt_spread(summarise(roi_s)) if mode == "roi" else "–",
                "total_seconds": fmt_spread(summarise(tot[(method, mode)])),
                "n_forward_mean": float(np.mean(nf)), "gflops_mean": gfl, "total_gflops_mean": gfl + roi_g,
                "total_seconds_summary": summarise(tot[(method, mode)]),
            })
        t, r = (next(c for c in cost_rows if c["method"] == method and c["mode"] == m)
                for m in ("traditional", "roi"))
        rr = timing.ratio(tot[(method, "traditional")], tot[(method, "roi")])
        ratio_rows.append({"method": method, "forward_ratio": f"{t['n_forward_mean'] / r['n_forward_mean']:.2f}",
                           "gflops_ratio": f"{t['total_gflops_mean'] / r['total_gflops_mean']:.2f}",
                           "time_ratio": fmt_ratio(rr), "time_ratio_raw": rr})
    first = next(iter(rounds.values()))
    batches = sorted({int(k.split("@")[1]) for k in first.times})
    for method in TABLE3_METHODS:
        for mode in MODES:
            med = {b: summarise(first.times[f"{method}/{mode}@{b}"]) for b in batches}
            best = min(batches, key=lambda b: med[b]["median"])
            sweep_rows.append({"method": method, "mode": mode, "best": best,
                               **{f"bs{b}": fmt_spread(med[b]) for b in batches}})
    return cost_rows, ratio_rows, sweep_rows


def _table3_quality(per_case):
    rows = []
    pairs = (("deletion_auc", -1), ("insertion_auc", 1), ("dice_in_roi", 1), ("pointing_in_roi", 1))
    for method in TABLE3_METHODS:
        for mode in MODES:
            sel = [r for r in per_case if r["method"] == method and r["mode"] == mode]
            row = {"method": method, "mode": mode}
            for f in ("deletion_auc", "insertion_auc"):  # 4 digits: ROI-guided curves sit close to the trivial's
                row[f] = _mm([r[f] for r in sel], 4)
                row["trivial_" + f] = _mm([r["trivial_" + f] for r in sel], 4)
            for f in ("dice_in_roi", "pointing_in_roi", "dice_vs_gt", "pointing_game"):
                row[f] = _mean([r[f] for r in sel])
                row["trivial_" + f] = _mean([r["trivial_" + f] for r in sel])
            beats = []
            for f, sign in pairs:
                ok = [r for r in sel if r[f] is not None and r["trivial_" + f] is not None]
                beats.append(f"{sum(sign * (r[f] - r['trivial_' + f]) > 0 for r in ok)}/{len(ok)}")
            row["beats"] = " / ".join(beats)
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- engine overhead


def section_engine(ctx):
    """Engine vs pure batched forward, vs one patch per forward, vs Captum Occlusion, same model and windows."""
    import torch
    from captum.attr import Occlusion

    from napari_xaiclip.explain import explain
    from napari_xaiclip.explain.base import Context
    from napari_xaiclip.explain.engine import window_boxes
    from napari_xaiclip.pipeline import box_from_mask

    seg = ctx["seg"]
    case = ctx["cases"][0]
    box = box_from_mask(case["gt"])
    patch, stride = 16, 8
    sizes = (BATCH,) if ctx["quick"] else SWEEP
    c = Context(seg, case["image"], box=box)
    x = c.x
    boxes = window_boxes(c.size, patch, stride)

    def forward(inp):
        return c.target(torch.sigmoid(seg.logits(inp, c.prompt)))

    occ = Occlusion(forward)
    ex = explain("occlusion", seg, case["image"], box=box, window=patch, stride=stride, batch_size=BATCH)  # warm-up
    n = ex.n_forward
    with torch.inference_mode():
        attr = occ.attribute(x[None], sliding_window_shapes=(x.shape[0], patch, patch),
                             strides=(x.shape[0], stride, stride), baselines=0, perturbations_per_eval=BATCH)
    diff = float(np.abs(attr[0].sum(0).numpy() / x.shape[0] - ex.model_heatmap).max())

    def engine(bs):
        return explain("occlusion", seg, case["image"], box=box, window=patch, stride=stride, batch_size=bs).n_forward

    def pure(bs):  # the same number of forwards, unperturbed, unscored
        with torch.inference_mode():
            for start in range(0, n, bs):
                seg.logits(x[None].expand(min(bs, n - start), -1, -1, -1).contiguous(), c.prompt)

    def captum(bs):
        with torch.inference_mode():
            occ.attribute(x[None], sliding_window_shapes=(x.shape[0], patch, patch),
                          strides=(x.shape[0], stride, stride), baselines=0, perturbations_per_eval=bs)

    def loop():  # the paper's traditional implementation: one occluded image per forward, every window
        with torch.inference_mode():
            c.target(torch.sigmoid(seg.logits(x[None], c.prompt)))
            for y0, y1, x0, x1 in boxes:
                img = x.clone()
                img[:, y0:y1, x0:x1] = 0
                c.target(torch.sigmoid(seg.logits(img[None], c.prompt)))

    sides = {}
    for bs in sizes:
        sides[f"pure@{bs}"] = lambda b=bs: pure(b)
        sides[f"engine@{bs}"] = lambda b=bs: engine(b)
        sides[f"captum@{bs}"] = lambda b=bs: captum(b)
    sides["loop@1"] = loop
    t = interleave(sides, ROUNDS, seed=1, progress=_progress("engine"))
    names = {"pure": "pure batched forward (no perturbation, no scoring)", "engine": "xaiclip engine",
             "captum": "Captum Occlusion (perturbations_per_eval = batch)",
             "loop": f"one patch per forward (the paper's loop), all {len(boxes)} windows"}
    base = f"pure@{BATCH}"
    same = []
    for key in ("pure", "engine", "captum", "loop"):
        side = "loop@1" if key == "loop" else f"{key}@{BATCH}"
        same.append({"implementation": names[key], "batch": side.split("@")[1], "seconds": fmt_spread(t.summary(side)),
                     "ratio": fmt_ratio(t.ratio(side, base))})
    best = {}
    for key in ("pure", "engine", "captum"):
        best[key] = min(sizes, key=lambda b, k=key: t.summary(f"{k}@{b}")["median"])
    best_base = f"pure@{best['pure']}"
    best_rows = []
    for key in ("pure", "engine", "captum", "loop"):
        side = "loop@1" if key == "loop" else f"{key}@{best[key]}"
        best_rows.append({"implementation": names[key], "batch": side.split("@")[1],
                          "seconds": fmt_spread(t.summary(side)), "ratio": fmt_ratio(t.ratio(side, best_base))})
    sweep_rows = [{"batch": bs, **{k: fmt_spread(t.summary(f"{k}@{bs}")) for k in ("pure", "engine", "captum")}}
                  for bs in sizes]
    ctx["results"]["engine"] = {"same_batch": same, "best_batch": best_rows, "sweep": sweep_rows,
                                "rounds": t.to_json(), "n_forward": n, "windows": len(boxes),
                                "max_abs_diff_vs_captum": diff, "best": best}
    return ["## Engine overhead", "",
            f"Full-image occlusion of one slice ({case['organ']}, seed {case['seed']}): {len(boxes)} windows of "
            f"{patch} px, stride {stride}, {n} forward passes (the baseline's included) of the phantom segmenter, "
            f"same windows everywhere. Maps agree with Captum to {diff:.1e}. Every implementation and batch size "
            f"ran once per round, {ROUNDS} rounds in a random order per round; seconds: median (min–max) over the "
            "rounds; ratio: ratio of the medians to the pure forward's, with the min–max of the per-round ratios. "
            "The one-patch loop ran on every window in every round (no extrapolation); it has batch 1 by "
            "definition.", "",
            f"Same batch size ({BATCH}, the engine's automatic size) for every batched implementation:", "",
            markdown_table(same, ["implementation", "batch", "seconds", "ratio"],
                           ["implementation", "batch", "seconds", f"time / pure forward at batch {BATCH}"]), "",
            "Each implementation at its own best batch size (lowest median in the sweep below):", "",
            markdown_table(best_rows, ["implementation", "batch", "seconds", "ratio"],
                           ["implementation", "batch", "seconds",
                            f"time / pure forward at its best batch ({best['pure']})"]), "",
            markdown_table(sweep_rows, ["batch", "pure", "engine", "captum"],
                           ["batch", "pure forward s", "engine s", "Captum s"]), ""]


# --------------------------------------------------------------------------- adaptive vs dense


def section_adaptive(ctx):
    """Adaptive vs dense occlusion, inside the localizer's ROI and over the whole image."""
    from napari_xaiclip.explain import explain
    from napari_xaiclip.metrics import spearman, topk_iou
    from napari_xaiclip.pipeline import box_from_mask

    seg, loc = ctx["seg"], ctx["loc"]
    timed = [id(c) for c in _timed_cases(ctx)]
    sweep = (BATCH,) if ctx["quick"] else SWEEP
    rows, pooled, round_data = [], {}, {}
    first_timed = None
    for i, case in enumerate(ctx["cases"]):
        roi, _ = _localize(loc, case)
        box = box_from_mask(case["gt"])
        is_timed = id(case) in timed
        batches = sweep if is_timed and first_timed is None else (BATCH,)
        sides = {}
        for scope in ("roi", "image"):
            within = roi if scope == "roi" else None
            for kind, method in (("dense", "occlusion"), ("adaptive", "adaptive-occlusion")):
                for bs in batches:
                    sides[f"{scope}/{kind}@{bs}"] = (lambda m=method, w=within, b=bs:
                                                     explain(m, seg, case["image"], box=box, roi=w, batch_size=b))
        if is_timed:
            t = interleave(sides, ROUNDS, seed=10 + i, progress=_progress(f"adaptive {case['organ']} {case['seed']}"))
            maps = {k: v[-1] for k, v in t.outputs.items()}
            round_data[f"{case['organ']}/{case['seed']}"] = t.to_json()
            if first_timed is None and len(batches) > 1:
                first_timed = (case, t, batches)
        else:
            t, maps = None, {k: fn() for k, fn in sides.items()}
        for scope in ("roi", "image"):
            within = roi if scope == "roi" else None
            dense, adaptive = maps[f"{scope}/dense@{BATCH}"], maps[f"{scope}/adaptive@{BATCH}"]
            row = {"scope": scope, "organ": case["organ"], "seed": case["seed"],
                   "dense_forward": dense.n_forward, "adaptive_forward": adaptive.n_forward,
                   "saving": dense.n_forward / adaptive.n_forward,
                   "spearman": spearman(dense.heatmap, adaptive.heatmap, within=within),
                   "top20_iou": topk_iou(dense.heatmap, adaptive.heatmap, 0.2, within=within),
                   "top5_iou": topk_iou(dense.heatmap, adaptive.heatmap, 0.05, within=within),
                   "dense_s": "not timed", "adaptive_s": "not timed", "time_ratio": "not timed"}
            if t is not None:
                d, a = t.times[f"{scope}/dense@{BATCH}"], t.times[f"{scope}/adaptive@{BATCH}"]
                pooled.setdefault(scope, ([], []))
                pooled[scope][0].extend(d)
                pooled[scope][1].extend(a)
                row.update(dense_s=fmt_spread(summarise(d)), adaptive_s=fmt_spread(summarise(a)),
                           time_ratio=fmt_ratio(timing.ratio(d, a)))
            rows.append(row)
    out = []
    for scope in ("roi", "image"):
        sel = [r for r in rows if r["scope"] == scope]
        mean = {k: float(np.mean([r[k] for r in sel])) for k in ("dense_forward", "adaptive_forward", "saving",
                                                                 "spearman", "top20_iou", "top5_iou")}
        d, a = pooled[scope]
        out += sel + [{"scope": scope, "organ": "all", "seed": "", **mean, "dense_s": fmt_spread(summarise(d)),
                       "adaptive_s": fmt_spread(summarise(a)), "time_ratio": fmt_ratio(timing.ratio(d, a))}]
    sweep_rows = []
    if first_timed is not None:
        case, t, batches = first_timed
        for scope in ("roi", "image"):
            for kind in ("dense", "adaptive"):
                med = {b: t.summary(f"{scope}/{kind}@{b}") for b in batches}
                sweep_rows.append({"scope": scope, "method": kind, "best": min(batches, key=lambda b: med[b]["median"]),
                                   **{f"bs{b}": fmt_spread(med[b]) for b in batches}})
    ctx["results"]["adaptive"] = {"rows": out, "sweep": sweep_rows, "rounds": round_data}
    n_timed = len(timed)
    md = ["## Adaptive vs dense occlusion", "",
          "Adaptive: windows 4x, 2x, 1x the dense patch (16 px), each level's map divided by the window's area "
          "in patches, subdividing where it reaches 0.25 x the level's maximum. Scope `roi`: both inside the "
          "localizer's ROI (dense = ROI-guided occlusion; the ROI's cost is the same for both and left out); "
          "scope `image`: both over the whole image. Rank correlation and top-k IoU inside the scope. "
          f"Seconds at batch {BATCH} on both sides: median (min–max) of {ROUNDS} interleaved rounds (all four "
          f"runs of a slice once per round, random order) on {n_timed} slices (seed {SEEDS[0]}); `dense / "
          "adaptive`: ratio of the medians with the per-round min–max. Rows `all`: means of the counts and "
          "agreement over every slice, seconds pooled over the timed slices x rounds.", "",
          markdown_table(out, ["scope", "organ", "seed", "dense_forward", "adaptive_forward", "saving", "spearman",
                               "top20_iou", "top5_iou", "dense_s", "adaptive_s", "time_ratio"],
                         ["scope", "organ", "seed", "dense passes", "adaptive passes", "saving x", "Spearman",
                          "top-20 % IoU", "top-5 % IoU", "dense s", "adaptive s", "dense / adaptive s"]), ""]
    if sweep_rows:
        md += [f"Batch-size sweep on {first_timed[0]['organ']} seed {first_timed[0]['seed']} (same rounds): median "
               "(min–max) seconds per batch size, and each side's best.", "",
               markdown_table(sweep_rows, ["scope", "method", *[f"bs{b}" for b in first_timed[2]], "best"],
                              ["scope", "method", *[f"batch {b}" for b in first_timed[2]], "best batch"]), ""]
    return md


# --------------------------------------------------------------------------- memory


def _self_test(ctx) -> dict:
    """The memory instrument's self-test, once per run (printed beside every memory table)."""
    if "memory_self_test" not in ctx:
        import memtool

        ctx["memory_self_test"] = memtool.self_test(200)
        ctx["results"]["memory_self_test"] = ctx["memory_self_test"]
        print(f"  memory self-test: {ctx['memory_self_test']}", flush=True)
    return ctx["memory_self_test"]


def section_rise_memory(ctx):
    import bench_memory
    import memtool

    test = _self_test(ctx)
    rows = []
    for n in (200, 2000):
        r = memtool.measure_spawned(bench_memory.rise_job, n, 8, setup=bench_memory.rise_setup, timeout=1800)
        rows.append({"n_samples": n, "batch": 8, "baseline_mb": r["baseline_mb"], "peak_mb": r["peak_mb"],
                     "growth_mb": r["growth_mb"], "n_forward": r["result"]["n_forward"], "seconds": r["seconds"],
                     "all_masks_at_once_mb": n * 1024 * 1024 * 4 / 2**20, "peak_reset": r["peak_reset"]})
        print(f"  rise memory N={n}: {rows[-1]}", flush=True)
    ctx["results"]["rise_memory"] = rows
    md = ["## RISE memory at a 1024 px model input", "",
          "Peak resident memory of RISE (masks made per batch of 8) with a cheap 1024 px segmenter, so the numbers "
          "are about the explainer, not the model. Each N runs in its own process started with multiprocessing's "
          "`spawn` context; the baseline is its RSS after importing torch and building the model, the peak its "
          "VmHWM (reset after the baseline) during RISE. Keeping all N float32 masks would need the last "
          "column.", "", memtool.self_test_line(test), ""]
    if not test["passed"]:
        return md + ["instrument failed: no numbers (see the self-test above).", ""]
    return md + [markdown_table(rows, ["n_samples", "batch", "baseline_mb", "peak_mb", "growth_mb", "n_forward",
                                       "seconds", "all_masks_at_once_mb"],
                                ["N", "batch", "baseline RSS (MiB)", "peak RSS (MiB)", "peak - baseline (MiB)",
                                 "forwards", "seconds", "all N masks (MiB)"]), ""]


# --------------------------------------------------------------------------- randomisation


RANDOMISATION_METHODS = (
    ("occlusion", "occlusion", {}), ("adaptive-occlusion", "adaptive-occlusion", {}),
    ("rise (the paper's sum)", "rise", {"n_samples": 500}), ("rise, center=True", "rise", {"n_samples": 500, "center": True}),
    ("lime", "lime", {}), ("ig", "ig", {}), ("gradcam", "gradcam", {}), ("causal", "causal", {"bank": True}),
    ("segx", "segx", {}),
)


def section_randomisation(ctx):
    from napari_xaiclip.explain import explain
    from napari_xaiclip.metrics import dice, randomization_check, spearman
    from napari_xaiclip.pipeline import box_from_mask

    case = ctx["cases"][0]
    box = box_from_mask(case["gt"])
    roi, _ = _localize(ctx["loc"], case)
    bank = [case["volume"][z] for z in np.linspace(0, len(case["volume"]) - 1, 9).round().astype(int)
            if z != case["slice"]][:8]
    shuffled = case["image"].copy()
    shuffled[roi] = np.random.default_rng(0).permutation(shuffled[roi])
    rows = []

    def flat(h, within):
        return bool(np.ptp(h[within] if within is not None else h) == 0)

    def flags(a, b, within):  # a constant map has Spearman 0 by definition: the check says nothing then
        fa, fb = flat(a, within), flat(b, within)
        return "both" if fa and fb else "trained" if fa else "random" if fb else "–"

    for label, method, kw in RANDOMISATION_METHODS:
        kw = dict(kw)
        if kw.pop("bank", False):
            kw["bank_slices"] = bank
        t0 = time.perf_counter()
        res = {}
        for scope, within in (("slice", None), ("roi", roi)):
            exs = []

            def fn(s, m=method, k=kw, w=within, store=exs):
                ex = explain(m, s, case["image"], box=box, roi=w, seed=0, batch_size=BATCH, **k)
                store.append(ex)
                return ex

            check = randomization_check(fn, ctx["seg"], within=within)
            res[scope] = (check, flags(exs[0].heatmap, exs[1].heatmap, within), exs[0])
        orig = res["roi"][2]
        data = explain(method, ctx["seg"], shuffled, box=box, roi=roi, seed=0, batch_size=BATCH, **kw)
        rho_data = spearman(orig.heatmap, data.heatmap, within=roi)
        flat_data = flags(orig.heatmap, data.heatmap, roi)
        rows.append({"method": label,
                     "spearman_slice": res["slice"][0]["spearman"], "passed_slice": res["slice"][0]["passed"],
                     "flat_slice": res["slice"][1],
                     "spearman_roi": res["roi"][0]["spearman"], "passed_roi": res["roi"][0]["passed"],
                     "flat_roi": res["roi"][1],
                     "spearman_data": rho_data, "passed_data": bool(abs(rho_data) < 0.5),
                     "flat_data": flat_data, "seconds": time.perf_counter() - t0})
        for scope in ("slice", "roi", "data"):  # a zero trained map cannot be checked: say so, not "passed"
            rows[-1][f"verdict_{scope}"] = ("n/a" if rows[-1][f"flat_{scope}"] in ("trained", "both") else
                                            "pass" if rows[-1][f"passed_{scope}"] else "FAIL")
        if "mask_dice" not in ctx["results"].setdefault("randomisation_data", {}):
            # how much the shuffle changed what the model does: explanations can only change as much
            ctx["results"]["randomisation_data"] = {
                "mask_dice": dice(orig.baseline_mask, data.baseline_mask),
                "image_spearman_in_roi": spearman(case["image"], shuffled, within=roi)}
        print(f"  randomisation: {rows[-1]}", flush=True)

    def broken(_seg):  # ignores the model: must fail the check
        return case["image"]

    b_slice = randomization_check(broken, ctx["seg"])
    b_roi = randomization_check(broken, ctx["seg"], within=roi)
    rows.append({"method": "broken (returns the image)", "spearman_slice": b_slice["spearman"],
                 "passed_slice": b_slice["passed"], "flat_slice": "–", "spearman_roi": b_roi["spearman"],
                 "passed_roi": b_roi["passed"], "flat_roi": "–",
                 "spearman_data": spearman(case["image"], shuffled, within=roi), "passed_data": None, "flat_data": "–"})
    rows[-1]["passed_data"] = bool(abs(rows[-1]["spearman_data"]) < 0.5)
    for scope in ("slice", "roi", "data"):
        rows[-1][f"verdict_{scope}"] = "pass" if rows[-1][f"passed_{scope}"] else "FAIL"
    ctx["results"]["randomisation"] = rows
    data = ctx["results"]["randomisation_data"]
    return ["## Model- and data-randomisation sanity checks", "",
            f"Phantom segmenter, one slice ({case['organ']}, seed {case['seed']}, box prompt, the localizer's ROI), "
            f"batch {BATCH}, RISE N = 500. LiteMedSAM is left out: on this CPU one of its forwards takes 1.5-7 s "
            "and the checks need five full explanations per method.", "",
            "* Model randomisation (`metrics.randomization_check`): Spearman correlation between the map of the "
            "trained segmenter and of a copy with every weight re-initialised; `slice`: traditional maps over the "
            "whole slice; `ROI`: ROI-guided maps over the ROI's pixels. Passes at |rho| < 0.5.",
            "* Data randomisation (a shuffled-label model is not available): the ROI-guided map of the slice vs "
            "that of the same slice with its pixels shuffled inside the ROI (same box, same ROI), Spearman over "
            "the ROI; passes at |rho| < 0.5. The phantom's organs are nearly uniform, so the shuffle changes "
            f"little that the model uses: the baseline masks of the two slices agree at Dice "
            f"{data['mask_dice']:.3f} (the images themselves correlate at {data['image_spearman_in_roi']:.2f} "
            "inside the ROI). A map that stays put here may be faithful to a model that did not change; a "
            "failure in this column is weaker evidence than one in the model columns.",
            "* `flat`: which map is constant over the compared pixels (`random`: the re-initialised model predicts "
            "the same mask whatever the perturbation; `trained`: the trained model's map is constant there, e.g. "
            "causal blocks lie outside the segmentation; in the data column `random` stands for the shuffled "
            "slice's map). Spearman is then 0 by definition. Only the second map flat: a pass (the map changed "
            "from structure to nothing), though it says nothing about how; the trained map flat: `n/a`, nothing "
            "to check.",
            "* The last row is a control that ignores the model (its data column compares the two images).", "",
            markdown_table(rows, ["method", "spearman_slice", "verdict_slice", "flat_slice", "spearman_roi",
                                  "verdict_roi", "flat_roi", "spearman_data", "verdict_data", "flat_data"],
                           ["method", "model rand. rho, slice", "passed", "flat", "model rand. rho, ROI",
                            "passed", "flat", "data rand. rho, ROI", "passed", "flat"]), ""]


# --------------------------------------------------------------------------- other sections


def section_companions(ctx):
    """ExplainSeg variants (Dice/IoU vs ground truth) and causal vs SegX vs occlusion on the same slices."""
    import bench_companions

    return bench_companions.run(ctx)


def section_batch(ctx):
    """Cases per minute with 1 and 2 Dask workers (benchmarks/bench_batch.py)."""
    import bench_batch

    lines = bench_batch.run(n_cases=4 if ctx["quick"] else 6, rounds=ROUNDS)
    ctx["results"]["batch"] = lines
    return lines


def section_memory(ctx):
    """Memory of a 512 x 512 x 400 volume and of long sessions (benchmarks/bench_memory.py)."""
    import bench_memory
    import memtool

    test = _self_test(ctx)
    head = ["## Memory", "",
            "Each probe runs in a process started with multiprocessing's `spawn` context (not forked from the "
            "benchmark process); RSS and peak (VmHWM, reset at the start of a phase) from /proc/self/status; "
            "baselines: torch imported, phantom model loaded.", "", memtool.self_test_line(test), ""]
    if not test["passed"]:
        ctx["results"]["memory"] = {"instrument_failed": True}
        return head + ["instrument failed: no numbers (see the self-test above).", ""]
    n_loop, n_pipe = (20, 10) if ctx["quick"] else (100, 30)
    results = {"volume": bench_memory.measure_volume(None),
               "volume_int16": bench_memory.measure_volume(None, "int16"), "loop": bench_memory.measure_loop(n_loop),
               "pipeline": bench_memory.measure_pipeline(n_pipe)}
    ctx["results"]["memory"] = results
    return head + [bench_memory.markdown(results), ""]


def section_speed(ctx):
    """Execution modes on LiteMedSAM and RISE's convergence stop (benchmarks/bench_speed.py)."""
    import bench_speed

    return bench_speed.run(ctx)


def section_gpu(ctx):
    """Real models on a GPU (benchmarks/bench_gpu.py): run where CUDA is present, else the stored run."""
    import bench_gpu
    import torch

    stored = ROOT / "benchmarks" / "gpu_results.json"
    if torch.cuda.is_available():
        res = bench_gpu.measure(argparse.Namespace(device="cuda", budget=1800.0, json=str(stored), quick=False,
                                                   only=None))
        note = "Measured in this run."
    elif stored.exists():
        res = json.loads(stored.read_text())
        note = ("This machine has no GPU: the numbers are those of the stored run "
                "(`benchmarks/gpu_results.json`, made by `python benchmarks/bench_gpu.py --json "
                "benchmarks/gpu_results.json` on the GPU named below).")
    else:
        return ["## Real models on a GPU", "", "No GPU here and no stored GPU run.", ""]
    ctx["results"]["gpu"] = {"source": "benchmarks/gpu_results.json", "date": res.get("env", {}).get("date")}
    lines = bench_gpu.markdown(res)
    return lines[:2] + [note, ""] + lines[2:] + bench_gpu.targets(ctx["results"].get("speed")
                                                                  or ctx.get("old_results", {}).get("speed"), res)


def section_litemedsam(ctx):
    """LiteMedSAM: Dice (phantom, real CT) and traditional vs ROI-guided occlusion (benchmarks/bench_litemedsam.py)."""
    import bench_litemedsam

    return bench_litemedsam.run(ctx, _localize)


SECTIONS = {"models": section_models, "table3": section_table3, "engine": section_engine,
            "adaptive": section_adaptive, "rise_memory": section_rise_memory,
            "randomisation": section_randomisation, "companions": section_companions, "batch": section_batch,
            "memory": section_memory, "litemedsam": section_litemedsam, "speed": section_speed, "gpu": section_gpu}
#: the "## " headings each section writes (earlier titles too, so a rerun replaces them)
SECTION_TITLES = {
    "models": ["Models"], "table3": ["Table III analog: traditional vs ROI-guided"], "engine": ["Engine overhead"],
    "adaptive": ["Adaptive vs dense occlusion"], "rise_memory": ["RISE memory at a 1024 px model input"],
    "randomisation": ["Model- and data-randomisation sanity checks", "Model-randomisation sanity check"],
    "companions": ["ExplainSeg masks from relevance", "Causal (PdCR) vs SegX vs occlusion"],
    "batch": ["Batch throughput (`xaiclip batch`, local Dask cluster)"], "memory": ["Memory"],
    "litemedsam": ["LiteMedSAM (default segmenter)"],
    "speed": ["Execution modes and RISE's convergence stop"],
    "gpu": ["Real models on a GPU"],
}
#: results.json keys each section owns (earlier names too, dropped when the section is rerun)
SECTION_KEYS = {
    "models": ["models"],
    "table3": ["table3", "table3_summary", "table3_ratios", "table3_cost", "table3_sweep", "table3_quality",
               "table3_rounds"],
    "engine": ["engine"], "adaptive": ["adaptive"], "rise_memory": ["rise_memory"],
    "randomisation": ["randomisation", "randomisation_data"], "companions": ["explainseg", "companions"], "batch": ["batch"],
    "memory": ["memory"], "litemedsam": ["litemedsam"], "speed": ["speed"], "gpu": ["gpu"],
}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"


def split_sections(text: str) -> dict[str, list[str]]:
    """The document's "## " blocks by section name (blocks with an unknown heading are dropped)."""
    owner = {title: name for name, titles in SECTION_TITLES.items() for title in titles}
    blocks: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = owner.get(line[3:].strip())
            if current is None:
                print(f"[bench] dropping an unknown section of the old document: {line}", flush=True)
        # a run's closing line belongs to that run, not to the section it happened to follow
        if current is not None and not line.startswith(("Total benchmark time", "This run (`")):
            blocks.setdefault(current, []).append(line)
    return blocks


def _provenance_rows(runs: dict) -> list[dict]:
    rows = []
    for name in SECTIONS:
        r = runs.get(name)
        if r:
            load = r.get("load")
            rows.append({"section": ", ".join(SECTION_TITLES[name][:1 if name != "companions" else 2]),
                         "run": r["date"], "command": f"`{r['command']}`", "seconds": f"{r['seconds']:.0f}",
                         "load": f"{load[0]:.1f} / {load[1]:.1f}" if load else "not recorded"})
    return rows


def header(machine_text: str, runs: dict) -> list[str]:
    return [
        "# Benchmarks", "",
        f"Machine: {machine_text}; no GPU (the section \"Real models on a GPU\" comes from a run on a lent H200 "
        "and says so). The CPU is shared with other "
        "people's test runs (the load averages below say how busy it was): read the spreads, not only the "
        "medians. Models: the "
        "shipped phantom-trained demo models (segmenter spec `phantom`, the tiny SAM; tiny-CLIP localizer) in "
        "every section but the last, which measures the default segmenter LiteMedSAM (spec `default`) beside "
        "the tiny SAM.", "",
        "How the numbers are taken:", "",
        f"* Time: every comparison runs its sides interleaved, {ROUNDS} rounds, each side once per round in a "
        "seeded random order that changes from round to round (`benchmarks/timing.py`); a side's seconds are "
        "the median (min–max) of its rounds; a ratio is the ratio of the medians with the min–max of the "
        "per-round ratios. Compared sides run at the same batch size, and a sweep gives each side's best. "
        "No figure is extrapolated unless it is labelled as an estimate.",
        "* FLOPs: `torch.utils.flop_counter`, which counts 2 FLOPs per multiply-add; ptflops and fvcore count "
        "multiply-adds (MACs), about half. ROI-guided rows are end to end: the ROI extraction (the localizer's "
        "forward) is added to `total` and shown apart.",
        "* Memory: every figure comes from a process started with multiprocessing's `spawn` context, reporting "
        "its own peak (VmHWM from /proc/self/status) minus its baseline after imports, never `ru_maxrss` of a "
        "forked child (which starts at the parent's peak). A self-test in the same run (a spawned child "
        "touching a 200 MiB array must report +200 MiB within 10 %) is printed beside each memory table; "
        "where it fails the table says \"instrument failed\".", "",
        "Sections and the run each comes from (`make bench` runs every section; sections not rerun keep the "
        "text of their own run):", "",
        markdown_table(_provenance_rows(runs), ["section", "run", "command", "seconds", "load"],
                       ["section", "measured on", "command", "section wall time (s)",
                        "1-min load average at start / end (2 cores)"]), ""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--quick", action="store_true", help="one seed, fewer cases and masks: a smoke run")
    p.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run only these sections (the others are "
                   "kept from the existing document)")
    args = p.parse_args(argv)
    from napari_xaiclip.models import load_localizer, load_segmenter

    t0 = time.time()
    out = Path(args.out).resolve()
    # a run written elsewhere (a --quick check) keeps its raw numbers beside it, not over the published ones
    raw = ROOT / "benchmarks" / "results.json" if out == DEFAULT_OUT else out.with_suffix(".json")
    old_blocks, old_results = {}, {}
    if args.only and out.exists():
        old_blocks = split_sections(out.read_text())
        if raw.exists():
            old_results = json.loads(raw.read_text())
    runs = dict(old_results.get("_runs", {}))
    if "litemedsam" in old_results and "litemedsam" not in runs:  # measured before runs were recorded
        runs["litemedsam"] = {"date": old_results["litemedsam"].get("date", "earlier"), "seconds": float(
            old_results["litemedsam"].get("dice_seconds", 0) + old_results["litemedsam"].get("occlusion_seconds", 0)),
            "command": "benchmarks/run.py --only models litemedsam"}
    ctx = {"quick": args.quick, "results": {}, "old_results": old_results,
           "seg": load_segmenter("phantom", device="cpu"),
           "loc": load_localizer("default", device="cpu"), "cases": load_cases(args.quick)}
    command = "benchmarks/run.py" + (" --quick" if args.quick else "") + (
        f" --only {' '.join(args.only)}" if args.only else "")
    body = []
    for name, fn in SECTIONS.items():
        if args.only and name not in args.only:
            kept = old_blocks.get(name)
            if kept:
                while kept and not kept[-1].strip():
                    kept = kept[:-1]
                body += kept + [""]
            else:
                runs.pop(name, None)
            continue
        print(f"[bench] {name} …", flush=True)
        ts, load0 = time.time(), os.getloadavg()[0]
        body += fn(ctx)
        runs[name] = {"date": time.strftime("%Y-%m-%d"), "seconds": time.time() - ts, "command": command,
                      "load": [load0, os.getloadavg()[0]]}
        print(f"[bench] {name} done in {time.time() - ts:.0f} s", flush=True)
    results = dict(old_results)
    for name in SECTIONS:
        if not args.only or name in args.only:
            for key in SECTION_KEYS[name]:
                results.pop(key, None)
    results.update(ctx["results"])
    results["_runs"] = runs
    md = header(machine(), runs) + body + [f"This run (`{command}`) took {time.time() - t0:.0f} s.", ""]
    atomic_write_text(args.out, "\n".join(md))
    atomic_write_text(raw, json.dumps(results, indent=1, default=str))
    print(f"wrote {args.out} and {raw} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
