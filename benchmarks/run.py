"""`make bench`: measure explainers on phantom CT slices with the phantom-trained models, and the default
segmenter LiteMedSAM in its own section, in one run, and write docs/benchmarks.md (tables) plus benchmarks/results.json (raw numbers).

Sections: models; Table III analog (traditional vs ROI-guided occlusion, LIME, RISE);
engine vs a one-patch-per-forward loop vs Captum's Occlusion vs the pure batched forward;
adaptive vs dense ROI-guided occlusion; RISE memory at N = 2000 for a 1024 px input;
model-randomisation check; ExplainSeg variants; causal vs SegX vs occlusion; batch throughput; memory;
LiteMedSAM (Dice on the phantom and a real CT slice, traditional vs ROI-guided occlusion).

Usage: python benchmarks/run.py [--out docs/benchmarks.md] [--quick] [--only SECTION ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from napari_xaiclip.io import atomic_write_text  # noqa: E402
from napari_xaiclip.reports import markdown_table  # noqa: E402

ORGANS = {1: "liver", 3: "spleen", 2: "right kidney"}
SEEDS = (900, 901)


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


def section_table3(ctx):
    """Traditional vs ROI-guided occlusion, LIME and RISE with the localizer's ROI (Table III analog)."""
    from napari_xaiclip.metrics import dice
    from napari_xaiclip.pipeline import box_from_mask, explain_slice

    seg, loc = ctx["seg"], ctx["loc"]
    params = {"rise": {"n_masks": 500 if ctx["quick"] else 2000}}
    rows, per_case = [], []
    for case in ctx["cases"]:
        roi, score = _localize(loc, case)
        box = box_from_mask(case["gt"])
        results = explain_slice(seg, case["image"], box, ["occlusion", "lime", "rise"], ("traditional", "roi"),
                                roi=roi, gt=case["gt"], score_map=score, seed=0, params=params)
        for r in results:
            rec = dict(r.record, organ=case["organ"], seed=case["seed"], slice=case["slice"],
                       roi_dice_vs_gt=dice(roi, case["gt"]))
            per_case.append(rec)
        print(f"  table III: {case['organ']} seed {case['seed']} done", flush=True)
    ctx["results"]["table3"] = per_case
    fields = ["dice_vs_baseline", "iou_vs_baseline", "dice_vs_gt", "iou_vs_gt", "pointing_game", "deletion_auc",
              "insertion_auc", "gflops", "seconds", "n_forward", "rho"]
    for method in ("occlusion", "lime", "rise"):
        for mode in ("traditional", "roi"):
            sel = [r for r in per_case if r["method"] == method and r["mode"] == mode]
            row = {"method": method, "mode": mode}
            for f in fields:
                vals = [r[f] for r in sel if r.get(f) is not None]
                row[f] = float(np.mean(vals)) if vals else None
            rows.append(row)
    ratios = []
    for method in ("occlusion", "lime", "rise"):
        t = {r["mode"]: r for r in rows if r["method"] == method}
        ratios.append({"method": method,
                       "gflops_ratio": t["traditional"]["gflops"] / t["roi"]["gflops"],
                       "time_ratio": t["traditional"]["seconds"] / t["roi"]["seconds"],
                       "forward_ratio": t["traditional"]["n_forward"] / t["roi"]["n_forward"]})
    ctx["results"]["table3_summary"] = rows
    ctx["results"]["table3_ratios"] = ratios
    roi_quality = {o: float(np.mean([r["roi_dice_vs_gt"] for r in per_case if r["organ"] == o and
                                     r["method"] == "occlusion" and r["mode"] == "roi"])) for o in ORGANS.values()}
    n_cases = len(ctx["cases"])
    md = ["## Table III analog: traditional vs ROI-guided", "",
          f"Mean over {n_cases} held-out phantom CT slices (seeds {', '.join(map(str, SEEDS[:1] if ctx['quick'] else SEEDS))};"
          f" the slice where each of {', '.join(ORGANS.values())} is largest). Box prompt: the organ's bounding box; "
          "ROI: the default localizer's map for the organ's name (sigma 2, threshold 0.5, largest component, holes "
          "filled). Heatmaps thresholded with Otsu; pointing game against the ground truth; deletion/insertion AUC "
          f"with Dice against the baseline mask. RISE N = {params['rise']['n_masks']}, LIME n_samples auto "
          "(8 per superpixel, 200-500), occlusion patch 16 / stride 8 at the 256 px input.", "",
          markdown_table(rows, ["method", "mode"] + fields,
                         ["method", "mode", "Dice vs base", "IoU vs base", "Dice vs GT", "IoU vs GT", "pointing",
                          "deletion AUC", "insertion AUC", "GFLOPs", "seconds", "forwards", "rho"]), "",
          "Traditional / ROI-guided cost ratios (same grid, same model):", "",
          markdown_table(ratios, ["method", "gflops_ratio", "time_ratio", "forward_ratio"],
                         ["method", "GFLOPs ratio", "time ratio", "forward-pass ratio"]), "",
          "Localizer ROI Dice against the organ label on these slices: "
          + ", ".join(f"{k} {v:.3f}" for k, v in roi_quality.items()), ""]
    return md


def section_engine(ctx):
    """Engine vs pure batched forward, vs one patch per forward, vs Captum Occlusion, same model and windows."""
    import torch
    from captum.attr import Occlusion

    from napari_xaiclip.explain import explain
    from napari_xaiclip.explain.base import Context
    from napari_xaiclip.pipeline import box_from_mask

    seg = ctx["seg"]
    case = ctx["cases"][0]
    box = box_from_mask(case["gt"])
    patch, stride = 16, 8
    sizes = (16,) if ctx["quick"] else (8, 16, 32)
    c = Context(seg, case["image"], box=box)
    x = c.x

    def forward(inp):
        return c.target(torch.sigmoid(seg.logits(inp, c.prompt)))

    occ = Occlusion(forward)
    explain("occlusion", seg, case["image"], box=box, patch=patch, stride=stride, batch_size=16)  # warm-up
    runs = {"pure": {}, "engine": {}, "captum": {}}
    # rounds interleave the three implementations, so drifts of the machine hit them alike; best of the rounds
    for _ in range(1 if ctx["quick"] else 2):
        for bs in sizes:
            t0 = time.perf_counter()
            ex = explain("occlusion", seg, case["image"], box=box, patch=patch, stride=stride, batch_size=bs)
            t_engine = time.perf_counter() - t0
            n = ex.n_forward
            with torch.inference_mode():
                t0 = time.perf_counter()
                for start in range(0, n, bs):
                    seg.logits(x[None].expand(min(bs, n - start), -1, -1, -1).contiguous(), c.prompt)
                t_pure = time.perf_counter() - t0
                t0 = time.perf_counter()
                attr = occ.attribute(x[None], sliding_window_shapes=(x.shape[0], patch, patch),
                                     strides=(x.shape[0], stride, stride), baselines=0, perturbations_per_eval=bs)
                t_captum = time.perf_counter() - t0
            for key, t in (("pure", t_pure), ("engine", t_engine), ("captum", t_captum)):
                runs[key][bs] = min(runs[key].get(bs, np.inf), t)
    bs = min(runs["engine"], key=runs["engine"].get)
    best_ppe = min(runs["captum"], key=runs["captum"].get)
    t_engine, t_pure, captum_times = runs["engine"][bs], runs["pure"][bs], runs["captum"]
    # the paper's traditional implementation: one occluded image per forward
    from napari_xaiclip.explain.engine import window_boxes

    boxes = window_boxes(c.size, patch, stride)
    n_loop = min(len(boxes), 120 if ctx["quick"] else 300)
    with torch.inference_mode():
        t0 = time.perf_counter()
        for y0, y1, x0, x1 in boxes[:n_loop]:
            img = x.clone()
            img[:, y0:y1, x0:x1] = 0
            c.target(torch.sigmoid(seg.logits(img[None], c.prompt)))
        t_loop = (time.perf_counter() - t0) * len(boxes) / n_loop

    diff = float(np.abs(attr[0].sum(0).numpy() / x.shape[0] - ex.model_heatmap).max())
    rows = [
        {"implementation": f"pure batched forward, batch {bs} (no perturbation, no scoring)", "seconds": t_pure,
         "ratio": 1.0},
        {"implementation": f"xaiclip engine, batch {bs} (best of {list(sizes)})", "seconds": t_engine,
         "ratio": t_engine / t_pure},
        {"implementation": f"Captum Occlusion, perturbations_per_eval={best_ppe} (best of {sorted(captum_times)})",
         "seconds": captum_times[best_ppe], "ratio": captum_times[best_ppe] / t_pure},
        {"implementation": "one patch per forward (paper's loop)" + ("" if n_loop == len(boxes) else
                                                                      f", timed on {n_loop} windows"),
         "seconds": t_loop, "ratio": t_loop / t_pure},
    ]
    ctx["results"]["engine"] = {"rows": rows, "n_forward": n, "runs": runs,
                                "max_abs_diff_vs_captum": diff}
    return ["## Engine overhead", "",
            f"Full-image occlusion of one slice ({case['organ']}, seed {case['seed']}): {len(boxes)} windows of "
            f"{patch} px, stride {stride}, {n} forward passes of the default segmenter, same windows everywhere. "
            f"Maps agree with Captum to {diff:.1e}. Each time is the best of "
            f"{1 if ctx['quick'] else 2} interleaved rounds.", "",
            markdown_table(rows, ["implementation", "seconds", "ratio"],
                           ["implementation", "seconds", "time / pure forward"]), ""]


def section_adaptive(ctx):
    """Adaptive vs dense occlusion, inside the localizer's ROI and over the whole image."""
    from napari_xaiclip.explain import explain
    from napari_xaiclip.metrics import spearman, topk_iou
    from napari_xaiclip.pipeline import box_from_mask

    seg, loc = ctx["seg"], ctx["loc"]
    rows = []
    for scope in ("roi", "image"):
        scoped = []
        for case in ctx["cases"]:
            roi, _ = _localize(loc, case)
            within = roi if scope == "roi" else None
            box = box_from_mask(case["gt"])
            dense = explain("occlusion", seg, case["image"], box=box, roi=within)
            adaptive = explain("adaptive-occlusion", seg, case["image"], box=box, roi=within)
            scoped.append({"scope": scope, "organ": case["organ"], "seed": case["seed"],
                           "dense_forward": dense.n_forward, "adaptive_forward": adaptive.n_forward,
                           "saving": dense.n_forward / adaptive.n_forward,
                           "spearman": spearman(dense.heatmap, adaptive.heatmap, within=within),
                           "top20_iou": topk_iou(dense.heatmap, adaptive.heatmap, 0.2, within=within),
                           "top5_iou": topk_iou(dense.heatmap, adaptive.heatmap, 0.05, within=within),
                           "dense_s": dense.seconds, "adaptive_s": adaptive.seconds})
        mean = {k: float(np.mean([r[k] for r in scoped])) for k in scoped[0] if k not in ("scope", "organ", "seed")}
        rows += scoped + [{"scope": scope, "organ": "mean", "seed": "", **mean}]
    ctx["results"]["adaptive"] = rows
    return ["## Adaptive vs dense occlusion", "",
            "Adaptive: windows 4x, 2x, 1x the dense patch (16 px), each level's map divided by the window's area "
            "in patches, subdividing where it reaches 0.25 x the level's maximum. Scope `roi`: both inside the "
            "localizer's ROI (dense = ROI-guided occlusion); scope `image`: both over the whole image. Rank "
            "correlation and top-k IoU inside the scope.", "",
            markdown_table(rows, ["scope", "organ", "seed", "dense_forward", "adaptive_forward", "saving", "spearman",
                                  "top20_iou", "top5_iou", "dense_s", "adaptive_s"],
                           ["scope", "organ", "seed", "dense passes", "adaptive passes", "saving x", "Spearman",
                            "top-20 % IoU", "top-5 % IoU", "dense s", "adaptive s"]), ""]


RISE_MEMORY_SCRIPT = r"""
import resource, sys, time, numpy as np, torch
torch.set_num_threads(1)
from napari_xaiclip.models.generic import ModuleSegmenter
from napari_xaiclip.explain import explain
net = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Conv2d(1, 1, 3, padding=1), torch.nn.Upsample(scale_factor=8))
seg = ModuleSegmenter(net, input_size=1024, device="cpu")
img = np.random.default_rng(0).random((512, 512)).astype(np.float32)
n = int(sys.argv[1]); b = int(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
ex = explain("rise", seg, img, box=(100, 100, 400, 400), n_masks=n, batch_size=b)
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, ex.n_forward, time.perf_counter() - t0)
"""


def section_rise_memory(ctx):
    rows = []
    for n in (200, 2000):
        out = subprocess.run([sys.executable, "-c", RISE_MEMORY_SCRIPT, str(n), "8"], capture_output=True, text=True,
                             check=True).stdout.split()
        before, peak, nf, secs = int(out[0]), int(out[1]), int(out[2]), float(out[3])
        rows.append({"n_masks": n, "batch": 8, "rss_before_mb": before / 1024, "peak_rss_mb": peak / 1024,
                     "growth_mb": (peak - before) / 1024, "n_forward": nf, "seconds": secs,
                     "all_masks_at_once_mb": n * 1024 * 1024 * 4 / 2**20})
    ctx["results"]["rise_memory"] = rows
    return ["## RISE memory at a 1024 px model input", "",
            "Peak resident memory of a process running RISE (masks made per batch of 8 on the device) with a cheap "
            "1024 px segmenter, so the numbers are about the explainer, not the model. Keeping all N float32 masks "
            "would need the last column.", "",
            markdown_table(rows, ["n_masks", "batch", "rss_before_mb", "peak_rss_mb", "growth_mb", "n_forward",
                                  "seconds", "all_masks_at_once_mb"],
                           ["N", "batch", "RSS before (MB)", "peak RSS (MB)", "growth (MB)", "forwards", "seconds",
                            "all N masks (MB)"]), ""]


def section_randomisation(ctx):
    from napari_xaiclip.explain import explain
    from napari_xaiclip.metrics import randomization_check
    from napari_xaiclip.pipeline import box_from_mask

    case = ctx["cases"][0]
    box = box_from_mask(case["gt"])
    rows = []
    for label, method, kw in (("occlusion", "occlusion", {}), ("rise (the paper's sum)", "rise", {"n_masks": 500}),
                              ("rise, center=True", "rise", {"n_masks": 500, "center": True}), ("lime", "lime", {})):
        res = randomization_check(lambda s, m=method, k=kw: explain(m, s, case["image"], box=box, **k), ctx["seg"])
        rows.append({"method": label, **res})

    def broken(_seg):  # ignores the model: must fail the check
        return case["image"]

    rows.append({"method": "broken (returns the image)", **randomization_check(broken, ctx["seg"])})
    ctx["results"]["randomisation"] = rows
    return ["## Model-randomisation sanity check", "",
            "Spearman correlation between the map of the trained segmenter and of a re-initialised copy "
            "(passes below 0.5). RISE N = 500. The re-initialised tiny SAM predicts the same mask whatever the "
            "input, so its perturbation maps are flat (Spearman 0) except RISE's uncentred sum, which is then the "
            "masks' random coverage pattern: the trained model's RISE map correlating with it shows how much of "
            "that map is sampling noise; centring the scores removes it.", "",
            markdown_table(rows, ["method", "spearman", "passed"], ["method", "Spearman", "passed"]), ""]


def section_companions(ctx):
    """ExplainSeg variants (Dice/IoU vs ground truth) and causal vs SegX vs occlusion on the same slices."""
    import bench_companions

    return bench_companions.run(ctx)


def section_batch(ctx):
    """Cases per minute with 1 and 2 Dask workers (benchmarks/bench_batch.py)."""
    import bench_batch

    lines = bench_batch.run(n_cases=4 if ctx["quick"] else 6, repeat=1 if ctx["quick"] else 2)
    ctx["results"]["batch"] = lines
    return lines


def section_memory(ctx):
    """Memory of a 512 x 512 x 400 volume and of long sessions (benchmarks/bench_memory.py)."""
    import bench_memory

    n_loop, n_pipe = (20, 10) if ctx["quick"] else (100, 30)
    results = {"volume": bench_memory.measure_volume(None), "loop": bench_memory.measure_loop(n_loop),
               "pipeline": bench_memory.measure_pipeline(n_pipe)}
    ctx["results"]["memory"] = results
    return ["## Memory", "", bench_memory.markdown(results), ""]


def section_litemedsam(ctx):
    """LiteMedSAM: Dice (phantom, real CT) and traditional vs ROI-guided occlusion (benchmarks/bench_litemedsam.py)."""
    import bench_litemedsam

    return bench_litemedsam.run(ctx, _localize)


SECTIONS = {"models": section_models, "table3": section_table3, "engine": section_engine,
            "adaptive": section_adaptive, "rise_memory": section_rise_memory,
            "randomisation": section_randomisation, "companions": section_companions, "batch": section_batch,
            "memory": section_memory, "litemedsam": section_litemedsam}


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
    import os

    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"


def main(argv=None) -> int:

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--quick", action="store_true", help="one seed, fewer masks: a smoke run")
    p.add_argument("--only", nargs="*", choices=list(SECTIONS), help="run only these sections")
    args = p.parse_args(argv)
    from napari_xaiclip.models import load_localizer, load_segmenter

    t0 = time.time()
    ctx = {"quick": args.quick, "results": {}, "seg": load_segmenter("phantom", device="cpu"),
           "loc": load_localizer("default", device="cpu"), "cases": load_cases(args.quick)}
    md = ["# Benchmarks", "",
          f"Measured by `make bench` on {time.strftime('%Y-%m-%d')} on {machine()}, all tables in one run. "
          "Models: the shipped phantom-trained demo models (segmenter spec `phantom`, the tiny SAM; tiny-CLIP "
          "localizer) in every section but the last; the LiteMedSAM section measures the default segmenter, "
          "LiteMedSAM (spec `default`), beside the tiny SAM. "
          "No GPU was available in this run; GPU numbers are not claimed here.", ""]
    for name, fn in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        print(f"[bench] {name} …", flush=True)
        ts = time.time()
        md += fn(ctx)
        print(f"[bench] {name} done in {time.time() - ts:.0f} s", flush=True)
    md += [f"Total benchmark time: {time.time() - t0:.0f} s.", ""]
    atomic_write_text(args.out, "\n".join(md))
    # a run written elsewhere (a --quick check) keeps its raw numbers beside it, not over the published ones
    out = Path(args.out).resolve()
    raw = ROOT / "benchmarks" / "results.json" if out == DEFAULT_OUT else out.with_suffix(".json")
    atomic_write_text(raw, json.dumps(ctx["results"], indent=1, default=str))
    print(f"wrote {args.out} and {raw} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
