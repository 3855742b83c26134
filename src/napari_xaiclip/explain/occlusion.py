"""Occlusion and ROI-guided occlusion (XAI-CLIP section III-B/E).

A square window slides over the model input (Captum's grid: ceil((S - p) / s)
+ 1 positions per axis, the last window clipped), each occluded input is
scored, and the attribution ``baseline - score`` of each window is averaged
over the windows covering a pixel (Captum's convention).

ROI-guided mode evaluates only windows that intersect the ROI (optionally the
top ``top_percent`` % of those ranked by the localizer's mean score inside the window);
pixels covered by no evaluated window get 0, and the map (the model-resolution
one too) is 0 outside the ROI. ``rho = n_patch / n_patch_full``.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Context, finish
from .engine import box_masks, fill_values, outer_sum, paint_boxes, perturb_and_score, window_boxes, window_sums
from .registry import MethodSpec, Param

__all__ = ["SPEC", "WINDOW_PARAMS", "occlusion", "occlusion_params", "select_windows", "evaluate_windows"]

#: The sliding-window parameters occlusion and adaptive occlusion share.
WINDOW_PARAMS = (
    Param("window", int, None, "window side in model-input pixels; auto = S/16", low=1, auto=True,
          aliases=("patch",)),
    Param("stride", int, None, "window step; auto = window/2", low=1, auto=True),
    Param("fill", str, "zero", "what replaces an occluded window", choices=("zero", "mean", "blur")),
    Param("top_percent", float, None, "ROI mode: evaluate only this share of the ROI's windows, best localizer "
          "score first; auto = all", low=1e-9, high=100, auto=True, aliases=("top_k",)),
)


def occlusion_params(ctx: Context, window: int | None = None, stride: int | None = None, fill: str = "zero",
                     top_percent: float | None = None) -> dict:
    """Parameters with the automatic ones filled in: window = S/16, stride = window/2."""
    window = int(window) if window is not None else max(1, ctx.size // 16)
    stride = int(stride) if stride is not None else max(1, window // 2)
    if not 1 <= window <= ctx.size:
        raise ValueError(f"window must be between 1 and the input size {ctx.size}, got {window}")
    return {"window": window, "stride": stride, "fill": fill,
            "top_percent": None if top_percent is None else float(top_percent)}


def select_windows(ctx: Context, boxes: np.ndarray, top_percent: float | None = None) -> np.ndarray:
    """Indices of the windows to evaluate: all (traditional) or those touching the ROI (guided),
    then optionally the top ``top_percent`` % of those by mean localizer score."""
    if ctx.roi_model is None:
        return np.arange(len(boxes))
    roi = ctx.roi_model.cpu().numpy()
    idx = np.nonzero(window_sums(boxes, roi.astype(np.float64)) > 0)[0]
    if top_percent is not None and ctx.score_map is not None and len(idx):
        area = (boxes[idx, 1] - boxes[idx, 0]) * (boxes[idx, 3] - boxes[idx, 2])
        mean_score = window_sums(boxes[idx], ctx.score_map.cpu().numpy().astype(np.float64)) / area
        keep = max(1, int(np.ceil(len(idx) * top_percent / 100.0)))
        idx = np.sort(idx[np.argsort(-mean_score, kind="stable")[:keep]])
    elif top_percent is not None and ctx.score_map is None:
        raise ValueError("top_percent window selection needs the localizer's score map (score_map=...)")
    return idx


def evaluate_windows(ctx: Context, boxes: np.ndarray, fill: torch.Tensor, total: torch.Tensor,
                     count: torch.Tensor, attributions: np.ndarray | None = None, progress_offset: int = 0,
                     progress_total: int | None = None, stage: str = "occlusion"):
    """Score every window of ``boxes`` (N, 4), adding attribution and coverage into ``total``/``count``.

    Generator: yields a Progress per batch; fills ``attributions`` (N,) in place when given.
    """
    b = torch.as_tensor(boxes, device=ctx.device)
    n_total = progress_total or len(boxes)

    def build(start, stop):
        rows, cols = box_masks(b[start:stop], ctx.size)
        return paint_boxes(ctx.x, fill, rows, cols)

    for start, stop, scores in perturb_and_score(ctx, len(boxes), build):
        attr = ctx.base_score - scores.double()
        rows, cols = box_masks(b[start:stop], ctx.size)
        total += outer_sum(rows, cols, attr)
        count += outer_sum(rows, cols, torch.ones_like(attr))
        if attributions is not None:
            attributions[start:stop] = attr.cpu().numpy()
        yield ctx.progress(progress_offset + stop, n_total, average(total, count), stage)


def average(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total)).float()


def occlusion(ctx: Context, window: int | None = None, stride: int | None = None, fill: str = "zero",
              top_percent: float | None = None):
    """Occlusion sensitivity, traditional or ROI-guided (generator; returns an Explanation).

    Parameters
    ----------
    window : window side in model-input pixels. Default: S / 16 (64 at 1024, 16 at 256).
    stride : Default: window / 2.
    fill : "zero" (0 in model input space), "mean" or "blur". Default: "zero".
    top_percent : in ROI mode, evaluate only this percentage of ROI windows, ranked by
        the localizer's mean score (needs ``score_map``). Default: all.
    """
    params = occlusion_params(ctx, window, stride, fill, top_percent)
    boxes_all = window_boxes(ctx.size, params["window"], params["stride"])
    idx = select_windows(ctx, boxes_all, params["top_percent"])
    boxes = boxes_all[idx]
    total = torch.zeros(ctx.size, ctx.size, dtype=torch.float64, device=ctx.device)
    count = torch.zeros_like(total)
    attributions = np.zeros(len(boxes))
    fills = fill_values(ctx, params["fill"], blur_sigma=params["window"] / 4)
    yield ctx.progress(0, len(boxes), None, "occlusion")
    yield from evaluate_windows(ctx, boxes, fills, total, count, attributions)
    info = {"window_attributions": attributions.round(6).tolist() if len(boxes) <= 64 else None}
    heat = average(total, count)
    if ctx.roi_model is not None:  # windows reach past the ROI; the curves must see no attribution there
        heat = torch.where(ctx.roi_model, heat, torch.zeros_like(heat))
    return finish(ctx, "occlusion", params, heat, n_patch=len(boxes),
                  n_patch_full=len(boxes_all), info=info)


SPEC = MethodSpec(
    "occlusion", occlusion, WINDOW_PARAMS,
    summary="occlusion sensitivity: the score drop when a sliding window is blanked.",
    counts="windows", cost="one forward pass per evaluated window, plus the baseline")
