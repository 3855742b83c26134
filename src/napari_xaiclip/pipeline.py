"""Explain a slice end to end: ROI, box, every method in every mode, metrics.

The GUI, the CLI and batch runs all go through :func:`iter_explain_slice`, so
they produce the same numbers for the same inputs and seeds.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .explain import Explanation, Progress, iter_explain
from .explain.base import run_to_end
from .metrics import deletion_insertion, heatmap_metrics, roi_metrics, trivial_metrics
from .roi import clean_roi, roi_bbox, roi_from_map

__all__ = [
    "METRIC_FIELDS",
    "ROI_FIELDS",
    "COST_FIELDS",
    "SliceResult",
    "SliceStep",
    "box_from_mask",
    "expand_modes",
    "explain_slice",
    "iter_explain_slice",
    "localize",
    "with_filler_bank",
]

#: Columns of metrics.csv / metrics.json and the metrics dock, in order.
METRIC_FIELDS = ["method", "mode", "n_forward", "n_patch", "n_patch_full", "rho", "seconds", "gflops",
                 "dice_vs_baseline", "iou_vs_baseline", "dice_vs_gt", "iou_vs_gt", "pointing_game",
                 "deletion_auc", "insertion_auc"]
#: Quality inside the ROI and the trivial map's figures (a constant inside the ROI) beside them:
#: an ROI-guided map is zero outside its ROI, so the whole-slice overlap figures above largely
#: measure the ROI; these do not (see docs/methods.md, "Reading the metrics").
ROI_FIELDS = ["dice_in_roi", "trivial_dice_in_roi", "pointing_in_roi", "trivial_pointing_in_roi",
              "trivial_dice_vs_baseline", "trivial_dice_vs_gt", "trivial_pointing_game",
              "trivial_deletion_auc", "trivial_insertion_auc"]
#: End-to-end cost: ROI-guided runs also paid for their ROI (the localizer's or segmenter's forward);
#: ``total_*`` = the explanation's cost plus, in ROI mode, the ROI's.
COST_FIELDS = ["roi_seconds", "roi_gflops", "total_seconds", "total_gflops"]

MODES = ("traditional", "roi")


@dataclass
class SliceResult:
    """One explanation of one slice with its metrics record."""

    explanation: Explanation
    record: dict = field(default_factory=dict)


class SliceStep(NamedTuple):
    """One step of :func:`iter_explain_slice`: explainer ``job`` of ``n_jobs`` (``method`` in ``mode``)."""

    job: int
    n_jobs: int
    method: str
    mode: str
    progress: Progress

    @property
    def label(self) -> str:
        return f"{self.method} ({self.mode})"

    @property
    def fraction(self) -> float:
        """How much of the slice's work is done, in [0, 1]."""
        return (self.job + self.progress.done / max(self.progress.total, 1)) / self.n_jobs


def with_filler_bank(params: dict, volume: np.ndarray, axis: int, index: int, prepare=None) -> dict:
    """``params`` ({method: {...}}) with the causal method's filler bank taken from the volume's other
    slices (unless one was given): fillers that look like this scan, not like the explained slice."""
    from .slicing import filler_slices

    if "causal" not in params or "bank_slices" in params["causal"]:
        return params
    return {**params, "causal": {**params["causal"], "bank_slices": filler_slices(volume, axis, index,
                                                                                    prepare=prepare)}}


def expand_modes(modes) -> tuple[str, ...]:
    """"both" -> ("traditional", "roi"); validates names."""
    if isinstance(modes, str):
        modes = (modes,)
    out = []
    for m in modes:
        if m == "both":
            out += list(MODES)
        elif m in MODES:
            out.append(m)
        else:
            raise ValueError(f"unknown mode {m!r}; choose traditional, roi or both")
    return tuple(dict.fromkeys(out))


def box_from_mask(mask: np.ndarray, margin: int = 0) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of a mask grown by ``margin`` px, clipped to the slice."""
    b = roi_bbox(np.asarray(mask, bool))
    if b is None:
        raise ValueError("cannot take a box from an empty mask")
    h, w = np.shape(mask)
    x0, y0, x1, y1 = b
    return max(0, x0 - margin), max(0, y0 - margin), min(w, x1 + margin), min(h, y1 + margin)


def localize(localizer, slice2d: np.ndarray, prompt: str, sigma: float = 2.0, threshold: float = 0.5,
             margin: int = 0, largest_component: bool = True, fill_holes: bool = True):
    """(ROI, score map) from a text prompt through a localizer."""
    score = localizer.locate(slice2d, prompt)
    roi = roi_from_map(score, sigma=sigma, threshold=threshold)
    roi = clean_roi(roi, largest_component=largest_component, fill_holes=fill_holes, margin=margin)
    return roi, score


def _record(ex: Explanation, metrics: dict, warnings: Sequence[str] = ()) -> dict:
    s = ex.summary()
    rec = {k: metrics.get(k, s.get(k)) for k in METRIC_FIELDS + ROI_FIELDS + COST_FIELDS}  # None: not measured
    for k, v in metrics.items():
        if k not in rec and not k.endswith("_curve"):
            rec[k] = v
    if "segu" in ex.info:
        rec["segu"] = ex.info["segu"]
    rec = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in rec.items()}
    rec["warnings"] = list(dict.fromkeys([*warnings, *ex.info.get("warnings", [])]))
    return rec


def _roi_warnings(segmenter, slice2d, box, roi, curve_ctx, seed: int) -> list[str]:
    """The ROI-overlap warning, from the baseline segmentation (one forward unless curves made it)."""
    from .explain.base import Context
    from .preprocess import from_model_input
    from .provenance import roi_overlap_warning

    ctx = curve_ctx or Context(segmenter, slice2d, box=box, target="dice", seed=seed)
    base = from_model_input(ctx.base_mask.float().cpu().numpy(), ctx.geometry) > 0.5
    warning = roi_overlap_warning(roi, box, base)
    return [warning] if warning else []


def _cost(ex: Explanation, mode: str, roi_cost: tuple | None) -> dict:
    seconds, gflops = (None, None) if roi_cost is None else roi_cost
    paid_seconds = float(seconds or 0.0) if mode == "roi" else 0.0
    paid_gflops = float(gflops or 0.0) if mode == "roi" else 0.0
    return {"roi_seconds": seconds, "roi_gflops": gflops,
            "total_seconds": ex.seconds + paid_seconds, "total_gflops": ex.gflops + paid_gflops}


def _trivial_curves(segmenter, roi, curve_ctx, steps: int, seed: int) -> dict:
    """Deletion/insertion AUC of the constant-in-ROI map (once per slice, when curves are on)."""
    from .roi import roi_to_model

    if curve_ctx is None or roi is None or not np.any(roi):
        return {}
    trivial = roi_to_model(np.asarray(roi, bool), curve_ctx.size, segmenter.keep_aspect).astype(np.float64)
    curves = deletion_insertion(curve_ctx, trivial, steps=steps, seed=seed)
    return {"trivial_deletion_auc": curves["deletion_auc"], "trivial_insertion_auc": curves["insertion_auc"]}


def iter_explain_slice(segmenter, slice2d: np.ndarray, box, methods: Sequence[str], modes=("traditional", "roi"),
                       roi: np.ndarray | None = None, gt: np.ndarray | None = None,
                       score_map: np.ndarray | None = None, seed: int = 0, params: dict | None = None,
                       curves: bool = True, curve_steps: int = 50, batch_size="auto", target: str = "dice",
                       warnings: Sequence[str] = (), on_warning=None, roi_cost: tuple | None = None,
                       ) -> Generator[SliceStep, None, list[SliceResult]]:
    """Explain one slice with several methods and modes.

    Yields a :class:`SliceStep` per explainer step; returns a list of :class:`SliceResult`.
    ``params`` maps a method name to its keyword parameters; ``target`` is the
    explained target (deletion/insertion always use Dice against the baseline).
    ``warnings`` (known beforehand, e.g. a phantom model on a real scan) and the
    ROI-overlap check's warning go into every record's ``warnings``; the latter is
    also passed to ``on_warning(text)`` before any explainer runs. ``roi_cost`` is
    ``(seconds, gflops)`` spent getting the ROI; ROI-mode records add it to their totals.

    Raises
    ------
    ValueError
        ROI mode without an ROI, an empty ROI, unknown methods or modes.
    """
    from .explain.base import Context

    modes = expand_modes(modes)
    if "roi" in modes and (roi is None or not np.any(roi)):
        raise ValueError("ROI-guided mode needs a non-empty ROI (from a prompt, labels, a threshold or drawn)")
    params = params or {}
    jobs = [(m, mode) for m in methods for mode in modes]
    results = []
    curve_ctx = Context(segmenter, slice2d, box=box, target="dice", seed=seed) if curves else None
    warnings = list(warnings)
    if "roi" in modes:
        found = _roi_warnings(segmenter, slice2d, box, roi, curve_ctx, seed)
        for w in found:
            if on_warning is not None:
                on_warning(w)
        warnings += found
    trivial_curves = _trivial_curves(segmenter, roi, curve_ctx, curve_steps, seed)
    for j, (method, mode) in enumerate(jobs):
        gen = iter_explain(method, segmenter, slice2d, box=box, roi=roi if mode == "roi" else None, gt=gt,
                           score_map=score_map, seed=seed, batch_size=batch_size, target=target,
                           **params.get(method, {}))
        while True:
            try:
                progress = next(gen)
            except StopIteration as stop:
                ex = stop.value
                break
            yield SliceStep(j, len(jobs), method, mode, progress)
        metrics = heatmap_metrics(ex.heatmap, ex.baseline_mask, gt)
        if roi is not None and np.any(roi):
            metrics.update(roi_metrics(ex.heatmap, ex.baseline_mask, roi))
            metrics.update(trivial_metrics(ex.baseline_mask, roi, gt), **trivial_curves)
        if curve_ctx is not None:
            metrics.update(deletion_insertion(curve_ctx, ex.model_heatmap, steps=curve_steps, seed=seed))
        metrics.update(_cost(ex, mode, roi_cost))
        results.append(SliceResult(ex, _record(ex, metrics, warnings)))
    return results


def explain_slice(*args, **kwargs) -> list[SliceResult]:
    """:func:`iter_explain_slice` run to the end."""
    return run_to_end(iter_explain_slice(*args, **kwargs))
