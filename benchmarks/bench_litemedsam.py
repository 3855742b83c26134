"""LiteMedSAM benchmarks for `make bench` (section ``litemedsam`` of benchmarks/run.py).

1. Dice with the ground-truth box on the phantom (every organ, CT and MR, held-out seed 900),
   LiteMedSAM next to the phantom-trained tiny SAM, with the filled box as a trivial baseline.
2. Dice on pydicom's real CT slice (CT_small.dcm) against reference masks built from HU
   thresholds only (no model), with the filled box beside it.
3. Traditional vs ROI-guided occlusion with LiteMedSAM (patch 16, stride 8 at 256 px), with
   deletion/insertion AUC as in the other sections. Traditional occlusion is ~1000 forwards of
   ~2 s on a 2-core CPU, so it runs on one slice only.
"""

from __future__ import annotations

import json
import time

import numpy as np
from scipy import ndimage as ndi

from napari_xaiclip.reports import markdown_table

MODELS = {"litemedsam": "default", "phantom tiny SAM": "phantom"}
PRESET = {"ct": "ct-abdomen", "mr": "mr"}   # what the tool applies before the model
SEED = 900                                  # held out from the tiny SAM's training seeds
# Search windows (x0, y0, x1, y1) and HU bands for the real-CT references, chosen by looking at the
# slice: the vertebral body above the spinal canal (the canal's roof is at y ~ 46) and the
# contrast-filled aorta (150-190 HU) cut by the top edge. Opening once detaches the aorta from
# the vertebra's cortex, which touches it.
REAL_CT_TARGETS = {"vertebral body": {"window": (30, 2, 90, 46), "hu": (200, np.inf), "opening": 0},
                   "aorta": {"window": (70, 0, 110, 30), "hu": (100, 300), "opening": 1}}
ROI_DILATION = 3       # px at the slice's resolution, around LiteMedSAM's own mask (real CT ROI)
BATCH = 1              # measured 1.5 s/image at batch 1 vs 2.2 s at batch 16 (auto) on this CPU


def _dice(a, b) -> float:
    from napari_xaiclip.metrics import dice

    return float(dice(a, b))


def _box_mask(shape, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def _segment_all(segs: dict, image, box, gt, row: dict, times: dict) -> None:
    """Add each model's Dice vs ``gt`` to ``row`` and its seconds to ``times``."""
    for name, seg in segs.items():
        t0 = time.perf_counter()
        mask = seg.segment(image, box=box) > 0.5
        times.setdefault(name, []).append(time.perf_counter() - t0)
        row[name] = _dice(mask, gt)


def phantom_dice(segs: dict, quick: bool) -> tuple[list[dict], dict]:
    """Dice per organ x modality x model on the organ's largest slice, ground-truth box prompt."""
    from napari_xaiclip.phantom import make_phantom
    from napari_xaiclip.pipeline import box_from_mask
    from napari_xaiclip.preprocess import apply_preset

    rows, times = [], {}
    for modality in ("ct",) if quick else ("ct", "mr"):
        vol, labels, names = make_phantom(shape=(40, 256, 256), modality=modality, seed=SEED)
        for value in sorted(v for v in names if v and (labels == v).any()):
            z = int(np.argmax((labels == value).sum((1, 2))))
            gt = labels[z] == value
            box = [int(v) for v in box_from_mask(gt)]
            row = {"organ": names[value], "modality": modality, "slice": z, "box": box,
                   "box filled": _dice(_box_mask(gt.shape, box), gt)}
            _segment_all(segs, apply_preset(vol.data[z], PRESET[modality]), box, gt, row, times)
            rows.append(row)
    return rows, times


def load_real_ct():
    """pydicom's CT_small.dcm in HU and windowed as the tool does."""
    import pydicom
    from pydicom.data import get_testdata_file

    from napari_xaiclip.preprocess import apply_preset

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return hu, apply_preset(hu, PRESET["ct"])


def reference_mask(hu: np.ndarray, window, band, opening: int) -> np.ndarray:
    """HU band inside the search window, optional 4-connected opening, largest component, holes filled."""
    x0, y0, x1, y1 = window
    sub = (hu[y0:y1, x0:x1] > band[0]) & (hu[y0:y1, x0:x1] < band[1])
    if opening:
        sub = ndi.binary_opening(sub, ndi.generate_binary_structure(2, 1), iterations=opening)
    lab, n = ndi.label(sub)
    sub = lab == 1 + int(np.argmax(ndi.sum(sub, lab, range(1, n + 1))))
    out = np.zeros(hu.shape, bool)
    out[y0:y1, x0:x1] = ndi.binary_fill_holes(sub)
    return out


def real_ct_cases():
    """(name, windowed image, box, reference) for the real CT targets; box = the reference's bounding box."""
    from napari_xaiclip.pipeline import box_from_mask

    hu, image = load_real_ct()
    cases = []
    for name, t in REAL_CT_TARGETS.items():
        ref = reference_mask(hu, t["window"], t["hu"], t["opening"])
        cases.append({"name": name, "image": image, "box": [int(v) for v in box_from_mask(ref)],
                      "gt": ref})
    return cases


def real_ct_dice(segs: dict, cases) -> list[dict]:
    rows = []
    for c in cases:
        row = {"target": c["name"], "box": c["box"], "reference px": int(c["gt"].sum()),
               "box filled": _dice(_box_mask(c["gt"].shape, c["box"]), c["gt"])}
        _segment_all(segs, c["image"], c["box"], c["gt"], row, {})
        rows.append(row)
    return rows


def occlusion_jobs(ctx, seg, real_cases, localize, quick: bool) -> list[dict]:
    """The slices to explain: ROI-guided on 3 (2 real CT, 1 phantom liver), traditional on the first.

    Real CT ROI: LiteMedSAM's own mask from the box, dilated (the shipped localizer knows only the
    phantom). Phantom ROI: the default localizer's map for "liver" on the raw slice, as in Table III.
    """
    from napari_xaiclip.pipeline import box_from_mask
    from napari_xaiclip.preprocess import apply_preset

    jobs = []
    for c in real_cases:
        roi = ndi.binary_dilation(seg.segment(c["image"], box=c["box"]) > 0.5, iterations=ROI_DILATION)
        jobs.append({"slice": f"real CT, {c['name']}", "image": c["image"], "box": c["box"], "gt": c["gt"],
                     "roi": roi, "roi_source": f"LiteMedSAM mask + {ROI_DILATION} px"})
    liver = ctx["cases"][0]   # seed 900, the liver's largest slice
    roi, _ = localize(ctx["loc"], liver)
    jobs.append({"slice": f"phantom CT seed {liver['seed']} liver (z {liver['slice']})",
                 "image": apply_preset(liver["image"], PRESET["ct"]), "box": box_from_mask(liver["gt"]),
                 "gt": liver["gt"], "roi": roi, "roi_source": "default localizer"})
    modes = [(j, "roi") for j in jobs] + [(jobs[0], "traditional")]
    return modes[:1] if quick else modes   # ROI jobs first: they finish even if the long one is cut short


def run_occlusion(seg, job, mode, params, curve_steps) -> dict:
    from napari_xaiclip.pipeline import explain_slice

    t0 = time.perf_counter()
    (res,) = explain_slice(seg, job["image"], job["box"], ["occlusion"], (mode,), roi=job["roi"], gt=job["gt"],
                           seed=0, params={"occlusion": params}, curve_steps=curve_steps, batch_size=BATCH)
    keep = ("n_forward", "n_patch", "n_patch_full", "seconds", "gflops", "deletion_auc", "insertion_auc",
            "dice_vs_gt", "pointing_game")
    rec = {"slice": job["slice"], "mode": mode, "roi_source": job["roi_source"],
           **{k: res.record.get(k) for k in keep}, "wall_s_with_curves": time.perf_counter() - t0}
    print("  litemedsam occlusion:", json.dumps(rec, default=str), flush=True)  # partial results survive a cut
    return rec


def ratios(recs: list[dict]) -> list[dict]:
    """Traditional / ROI-guided cost per ROI-guided slice. Forwards from the window counts (traditional
    scores all n_patch_full windows plus the baseline, as ROI-guided scores n_patch plus the baseline);
    seconds only where traditional was run."""
    trad = {r["slice"]: r for r in recs if r["mode"] == "traditional"}
    out = []
    for r in (r for r in recs if r["mode"] == "roi"):
        t = trad.get(r["slice"])
        out.append({"slice": r["slice"], "forward_ratio": (r["n_patch_full"] + 1) / r["n_forward"],
                    "time_ratio": t["seconds"] / r["seconds"] if t else None})
    return out


def run(ctx, localize) -> list[str]:
    """Run the three parts (``localize(loc, case)`` gives a phantom case's ROI), store raw numbers in ctx["results"]["litemedsam"], return markdown lines."""
    import torch

    from napari_xaiclip.models import load_segmenter

    quick = ctx["quick"]
    segs = {name: load_segmenter(spec, device="cpu") for name, spec in MODELS.items()}
    t0 = time.time()
    dice_rows, times = phantom_dice(segs, quick)
    real = real_ct_cases()
    real_rows = real_ct_dice(segs, real)
    t_dice = time.time() - t0
    print(f"  litemedsam: Dice parts done in {t_dice:.0f} s", flush=True)
    print(json.dumps({"phantom_dice": dice_rows, "seconds": times, "real_ct_dice": real_rows}), flush=True)
    params = {"window": 64, "stride": 64} if quick else {"window": 16, "stride": 8}
    steps = 5 if quick else 50
    t0 = time.time()
    occ = [run_occlusion(segs["litemedsam"], job, mode, params, steps)
           for job, mode in occlusion_jobs(ctx, segs["litemedsam"], real, localize, quick)]
    t_occ = time.time() - t0
    per_slice = {k: float(np.mean(v)) for k, v in times.items()}
    ctx["results"]["litemedsam"] = {
        "phantom_dice": dice_rows, "phantom_seconds_per_slice": per_slice, "real_ct_dice": real_rows,
        "occlusion": occ, "occlusion_ratios": ratios(occ), "occlusion_params": params, "curve_steps": steps,
        "batch_size": BATCH, "torch_threads": torch.get_num_threads(), "dice_seconds": t_dice,
        "occlusion_seconds": t_occ, "date": time.strftime("%Y-%m-%d")}
    return markdown(ctx["results"]["litemedsam"])


def _dice_table(rows: list[dict]) -> list[dict]:
    """One row per organ, columns modality x model, plus the mean over organs."""
    cols = [f"{m} {name}" for m in ("ct", "mr") for name in (*MODELS, "box filled")]
    table = {}
    for r in rows:
        t = table.setdefault(r["organ"], {"organ": r["organ"]})
        for name in (*MODELS, "box filled"):
            t[f"{r['modality']} {name}"] = r[name]
    out = list(table.values())
    out.append({"organ": "mean", **{c: float(np.mean([t[c] for t in out if c in t])) for c in cols
                                    if any(c in t for t in out)}})
    return out


def _band(band) -> str:
    lo, hi = band
    return f"HU > {lo}" if np.isinf(hi) else f"{lo} < HU < {hi}"


def markdown(res: dict) -> list[str]:
    cols = [f"{m} {name}" for m in ("ct", "mr") for name in (*MODELS, "box filled")]
    heads = [f"{m.upper()} {name}" for m in ("ct", "mr") for name in (*MODELS, "box filled")]
    sec = res["phantom_seconds_per_slice"]
    real_cols = ["target", "box", "reference px", *MODELS, "box filled"]
    occ_cols = ["slice", "mode", "roi_source", "n_forward", "n_patch", "n_patch_full", "seconds", "gflops",
                "deletion_auc", "insertion_auc", "dice_vs_gt"]
    p = res["occlusion_params"]
    targets = "; ".join(f"{k}: {_band(t['hu'])} inside x {t['window'][0]}-{t['window'][2]}, "
                        f"y {t['window'][1]}-{t['window'][3]}" + (", one 3x3-cross opening" if t["opening"] else "")
                        for k, t in REAL_CT_TARGETS.items())
    return [
        "## LiteMedSAM (default segmenter)", "",
        f"Measured on {res['date']} with `benchmarks/run.py --only models litemedsam`, torch "
        f"{res['torch_threads']} threads, on the same 2-core CPU shared with other jobs (test runs of other "
        "engineers ran at the same time, so seconds are upper bounds). Inputs as the tool prepares them: CT "
        "through the abdomen window (level 40, width 400), MR through the `mr` preset (0.5-99.5 percentile "
        "clip); both models get the same input.", "",
        f"### Dice with the ground-truth box, phantom seed {SEED}", "",
        "Each organ's largest slice in the (40, 256, 256) phantom; box = the organ's bounding box on that "
        "slice; mask = probability > 0.5. `box filled` is the trivial baseline (the box itself as the mask). "
        f"Time per slice: " + ", ".join(f"{k} {v:.2f} s" for k, v in sec.items()) + ".", "",
        markdown_table(_dice_table(res["phantom_dice"]), ["organ", *cols], ["organ", *heads]), "",
        "### Dice on a real CT slice (pydicom `CT_small.dcm`, 128 x 128)", "",
        "References built without any model: " + targets + "; then the largest connected component, holes "
        "filled. The box prompt is the reference's bounding box. `MR_small.dcm` (64 x 64) is left out: no "
        "structure on it has a reference that intensity rules alone define defensibly.", "",
        markdown_table(res["real_ct_dice"], real_cols, real_cols), "",
        f"### Occlusion with LiteMedSAM: traditional vs ROI-guided", "",
        f"Patch {p['patch']}, stride {p['stride']} at the 256 px input (the paper's grid scaled to 256 px), "
        f"zero fill, batch {res['batch_size']}; deletion/insertion AUC with {res['curve_steps']} steps and Dice "
        "against the baseline mask, as in the other sections (their forwards are not in `forwards`/`seconds`). "
        "Traditional on one slice only (~1000 forwards). Real-CT ROI: LiteMedSAM's own mask from the box, "
        f"dilated {ROI_DILATION} px, since the shipped CLIP localizer knows only the phantom; phantom ROI: the "
        "default localizer's map for \"liver\" (as in Table III).", "",
        markdown_table(res["occlusion"], occ_cols,
                       ["slice", "mode", "ROI", "forwards", "windows", "windows (full)", "seconds", "GFLOPs",
                        "deletion AUC", "insertion AUC", "Dice vs ref"]), "",
        *trivial_lines(res),
        markdown_table(res["occlusion_ratios"], ["slice", "forward_ratio", "time_ratio"],
                       ["slice", "traditional / ROI forwards", "traditional / ROI seconds (measured)"]), "",
        f"Dice parts took {res['dice_seconds']:.0f} s, the occlusion runs (with their curves) "
        f"{res['occlusion_seconds']:.0f} s: " + ", ".join(f"{r['slice']} {r['mode']} {r['wall_s_with_curves']:.0f} s"
                                                          for r in res["occlusion"]) + ".", ""]


def trivial_lines(res: dict) -> list[str]:
    """The trivial map's AUCs beside the ROI-guided ones (benchmarks/litemedsam_trivial.py), if measured."""
    rows = res.get("trivial")
    if not rows:
        return ["Trivial baseline (a map constant inside the same ROI): not measured in this run; "
                "`python benchmarks/litemedsam_trivial.py` adds it.", ""]
    return ["The trivial map (constant inside the same ROI) on the same slices, same curves "
            "(`python benchmarks/litemedsam_trivial.py`):", "",
            markdown_table(rows, ["slice", "trivial_deletion_auc", "trivial_insertion_auc"],
                           ["slice", "trivial deletion AUC", "trivial insertion AUC"]), ""]
