"""``xaiclip demo``: the main job headless, on the phantom with the default (phantom-trained) models.

Writes the CT phantom and its labels as NIfTI, explains the slice where the
liver is largest with occlusion, RISE and LIME, traditional and ROI-guided
(ROI from the localizer with the prompt "liver", box from the liver label),
through :func:`napari_xaiclip.jobs.run_case`; then adds one figure per method
comparing the two modes and a ``report.md`` embedding the figures and the
metrics table. Every file is written atomically.

Outputs in ``out``: ``phantom_ct.nii.gz``, ``phantom_labels.nii.gz``,
``<method>-<mode>.nii.gz`` / ``.png``, ``<method>-comparison.png``,
``roi.nii.gz``, ``segmentation.nii.gz``, ``metrics.json``, ``metrics.csv``,
``report.md``.

Example
-------
>>> from napari_xaiclip.demo import run_demo
>>> result = run_demo("demo-output", fast=True)   # doctest: +SKIP
>>> result["slice"], len(result["records"])        # doctest: +SKIP
(24, 6)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from .progress import TerminalProgress
from .io import atomic_write_text, load_volume, save_volume
from .phantom import make_phantom
from .slicing import check_slice

__all__ = ["DEMO_SHAPE", "FAST_PARAMS", "METHODS", "TABLE_FIELDS", "run_demo"]

#: Phantom size (z, y, x) of the demo.
DEMO_SHAPE = (48, 256, 256)
METHODS = ("occlusion", "rise", "lime")
#: Parameters of ``--fast``: fewer RISE masks and LIME samples.
FAST_PARAMS = {"rise": {"n_samples": 500}, "lime": {"n_samples": 200}}
#: Deletion/insertion curves (the demo's default; tests switch them off).
CURVES = True
PROMPT, ORGAN, LIVER = "liver", "liver", 1
#: Columns of the printed and reported metrics table (all columns are in metrics.csv).
TABLE_FIELDS = ["method", "mode", "n_forward", "rho", "seconds", "gflops", "dice_vs_baseline", "dice_vs_gt",
                "dice_in_roi", "trivial_dice_in_roi", "pointing_in_roi", "trivial_pointing_in_roi",
                "deletion_auc", "trivial_deletion_auc", "insertion_auc", "trivial_insertion_auc"]
DEMO_MODELS_NOTE = ("The models are **phantom-trained demo models**: a tiny SAM segmenter and a CLIP region "
                    "localizer trained by this project's own training commands on its synthetic phantom. They "
                    "show the pipeline end to end; their heatmaps and numbers say nothing about real scans or "
                    "about MedSAM, SAM or your own network.")


def _merge(*dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for method, p in (d or {}).items():
            out.setdefault(method, {}).update(p)
    return out


def run_demo(out: Path, slice_index: int | None = None, fast: bool = False, seed: int = 0, *,
             shape=None, params: dict | None = None, curves: bool | None = None, stream=None,
             model: str = "phantom") -> dict:
    """Run the demo into ``out``; returns ``{"slice", "records", "seconds", "roi_source", "box", "out"}``.

    Parameters
    ----------
    out : output folder (created).
    slice_index : axial slice; default the one where the liver is largest.
    fast : RISE with 500 masks and LIME with 200 samples (:data:`FAST_PARAMS`).
    seed : phantom and explainer seed. Default: 0.
    shape : phantom size (z, y, x). Default: :data:`DEMO_SHAPE`.
    params : method parameters on top of the defaults, e.g. ``{"rise": {"n_samples": 100}}``.
    curves : compute deletion/insertion AUC. Default: :data:`CURVES`.
    stream : where progress and the table go. Default: stdout.
    model : segmenter spec. Default: "phantom" (the phantom-trained tiny SAM, for speed);
        "default"/"litemedsam" runs the real LiteMedSAM (about 2 s per forward on a laptop CPU).

    Raises
    ------
    ValueError
        A slice outside the phantom or without liver (before anything is written).
    """
    from .jobs import CASE_FIELDS, Case, run_case
    from .models import load_localizer, load_segmenter
    from .pipeline import box_from_mask, localize
    from .reports import format_table

    t0 = time.perf_counter()
    stream = stream or sys.stdout
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    shape = tuple(shape or DEMO_SHAPE)
    vol, labels, _ = make_phantom(shape=shape, modality="ct", seed=seed)
    liver = labels == LIVER
    if slice_index is None:
        z = int(np.argmax(liver.sum(axis=(1, 2))))
    else:
        z = int(slice_index)
        check_slice(vol.data.shape, 0, z)
        if not liver[z].any():
            zs = np.nonzero(liver.any(axis=(1, 2)))[0]
            raise ValueError(f"the liver is not on slice {z}; choose a slice in {zs.min()}..{zs.max()}")
    params = _merge(FAST_PARAMS if fast else None, params)
    curves = CURVES if curves is None else bool(curves)

    seg, loc = load_segmenter(model), load_localizer("phantom")
    models = ("phantom-trained demo models (for speed; real scans: the default LiteMedSAM)" if model == "phantom"
              else f"segmenter {seg.name}, phantom-trained localizer")
    print(f"xaiclip demo: CT phantom {shape} (seed {seed}), axial slice {z}, {models}"
          + (", fast settings" if fast else ""), file=stream, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    ct, lab = out / "phantom_ct.nii.gz", out / "phantom_labels.nii.gz"
    save_volume(ct, vol.data, like=vol)
    save_volume(lab, labels, like=vol)

    image = load_volume(ct).data[z]  # exactly what run_case will read
    roi, _ = localize(loc, image, PROMPT)
    roi_source = "localizer" if roi.any() else "labels"
    if roi_source == "labels":
        print(f"note: the localizer found no '{PROMPT}' on slice {z}; the ROI comes from the liver label instead",
              file=stream, flush=True)
    box = box_from_mask(liver[z])
    case = Case(volume=str(ct), slices=[z], labels=str(lab), organ=ORGAN, roi=roi_source, prompt=PROMPT,
                methods=list(METHODS), modes=("traditional", "roi"), seed=seed, params=params, curves=curves,
                name="phantom", model=seg.name, localizer=loc.name)
    records = run_case(case, out, on_progress=TerminalProgress(stream), segmenter=seg, localizer=loc)
    print(format_table(records, TABLE_FIELDS), file=stream, flush=True)

    figures = _comparison_figures(out, image, z, records, vol.spacing[1:],
                                  "phantom-trained demo models" if model == "phantom" else seg.name)
    seconds = time.perf_counter() - t0
    _write_report(out, records, figures, z=z, shape=shape, seed=seed, fast=fast, params=params, curves=curves,
                  roi_source=roi_source, roi_pixels=int(load_volume(out / "roi.nii.gz").data[z].sum()), box=box,
                  seconds=seconds, fields=CASE_FIELDS, model=seg.name)
    print(f"demo finished in {seconds:.1f} s; wrote {out}/report.md, figures, heatmaps (NIfTI) and metrics",
          file=stream, flush=True)
    return {"slice": z, "records": records, "seconds": seconds, "roi_source": roi_source, "box": box,
            "out": str(out)}


def _comparison_figures(out: Path, image: np.ndarray, z: int, records: list[dict], spacing,
                        models: str) -> list[str]:
    """One PNG per method: traditional and ROI-guided heatmaps side by side, read back from the NIfTI files."""
    from .reports import save_figure

    roi = load_volume(out / "roi.nii.gz").data[z] > 0
    mask = load_volume(out / "segmentation.nii.gz").data[z] > 0
    by_job = {(r["method"], r["mode"]): r for r in records}
    names = []
    for method in METHODS:
        panels = []
        for mode, title in (("traditional", "traditional"), ("roi", "ROI-guided")):
            r = by_job[(method, mode)]
            heat = load_volume(out / f"{method}-{mode}.nii.gz").data[z]
            cost = f"{r['n_forward']} forward passes, {r['seconds']:.1f} s"
            if r.get("rho") is not None:
                cost += f", rho {r['rho']:.2f}"
            panels.append({"title": f"{method}, {title}\n{cost}",
                           "heatmap": heat, "roi": roi if mode == "roi" else None, "mask": mask})
        name = f"{method}-comparison.png"
        save_figure(out / name, image, panels, spacing=spacing,
                    suptitle=f"{method} on phantom slice {z} ({models})")
        names.append(name)
    return names


def _write_report(out: Path, records, figures, *, z, shape, seed, fast, params, curves, roi_source, roi_pixels,
                  box, seconds, fields, model="phantom") -> None:
    from .reports import markdown_table

    roi_line = (f'from the CLIP localizer with the prompt "{PROMPT}"' if roi_source == "localizer" else
                f'from the liver label (the localizer found no "{PROMPT}" on this slice)')
    setting = ", ".join(f"{m}: " + ", ".join(f"{k}={v}" for k, v in p.items()) for m, p in params.items())
    lines = [
        "# xaiclip demo", "",
        DEMO_MODELS_NOTE if model == "phantom" else
        (f"Segmenter: `{model}` (LiteMedSAM, a real medical model, research use); the localizer is the "
         "phantom-trained demo localizer."), "",
        (f"- Volume: synthetic abdominal CT phantom, {' x '.join(map(str, shape))} voxels (z, y, x), seed {seed}: "
         "`phantom_ct.nii.gz`, labels `phantom_labels.nii.gz`"),
        f"- Slice: axial {z}, where the liver is largest",
        f"- Box prompt: the liver label's bounding box (x0, y0, x1, y1) = {tuple(int(v) for v in box)}",
        f"- ROI: {roi_line}, {roi_pixels} pixels (`roi.nii.gz`); segmentation in `segmentation.nii.gz`",
        f"- Methods: {', '.join(METHODS)}, each traditional (whole image) and ROI-guided; seed {seed}; "
        f"parameters: {setting or 'defaults'}" + (" (fast settings)" if fast else "")
        + ("" if curves else "; deletion/insertion curves off"),
        f"- Total run time: **{seconds:.1f} s**", "",
        "## Metrics", "",
        markdown_table(records, TABLE_FIELDS), "",
        ("`rho` is the ROI-guided run's share of the traditional run's perturbation units (occlusion patches, "
         "LIME superpixels); Dice and pointing game compare the heatmap with the baseline segmentation or the "
         "liver label; seconds include the method's forward passes only. Every column "
         f"({', '.join(fields)}) is in `metrics.csv` and `metrics.json`."), "",
        "## Figures", "",
        "Slice in the abdomen window; yellow: segmentation contour, cyan: ROI contour; heatmap in colour.", "",
    ]
    for name in figures:
        method = name.rsplit("-", 1)[0]
        lines += [f"### {method}", "", f"![{method}: traditional and ROI-guided]({name})", ""]
    lines += ["Heatmaps as NIfTI in the phantom's geometry: "
              + ", ".join(f"`{r['method']}-{r['mode']}.nii.gz`" for r in records) + "."]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
