"""Adaptive (coarse-to-fine) occlusion, beyond the paper.

Level 0 evaluates windows ``2**levels`` times the final window (stride half
the window) over the ROI or the image. A level's map is divided by the
window's area in patches, so that levels are on the scale of the finest one (a
window's effect is about the sum of its patches' effects). At each next level
the window and stride halve, and only the pixels where that map reached
``refine_fraction * max`` are subdivided. Each pixel keeps the finest level that
evaluated it, so the map matches dense occlusion where it matters and costs
far fewer forward passes elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Context, finish
from .engine import fill_values, window_boxes, window_sums
from .occlusion import WINDOW_PARAMS, average, evaluate_windows, occlusion_params, select_windows
from .registry import MethodSpec, Param

__all__ = ["SPEC", "adaptive_occlusion"]


def adaptive_occlusion(ctx: Context, window: int | None = None, stride: int | None = None, fill: str = "zero",
                       levels: int = 2, refine_fraction: float = 0.25, top_percent: float | None = None):
    """Coarse-to-fine occlusion (generator; returns an Explanation).

    Parameters
    ----------
    window, stride, fill : the finest level, as for occlusion. Defaults: S/16, window/2, "zero".
    levels : coarser levels above the finest (window 2**levels * window first). Default: 2.
    refine_fraction : subdivide where the level's |attribution| >= refine_fraction * its maximum.
        Default: 0.25.
    top_percent : as for occlusion, applied at the coarsest level.
    """
    params = occlusion_params(ctx, window, stride, fill, top_percent)
    params.update(levels=int(levels), refine_fraction=float(refine_fraction))
    fills = fill_values(ctx, params["fill"], blur_sigma=params["window"] / 4)
    full_grid = window_boxes(ctx.size, params["window"], params["stride"])
    heat = torch.zeros(ctx.size, ctx.size, dtype=torch.float32, device=ctx.device)
    region = None  # pixels to refine (numpy bool)
    n_eval, per_level = 0, []
    for level in range(levels, -1, -1):
        win = min(ctx.size, params["window"] * 2 ** level)
        step = max(1, params["stride"] * 2 ** level)
        boxes = window_boxes(ctx.size, win, step)
        idx = select_windows(ctx, boxes, params["top_percent"] if level == levels else None)
        if region is not None:
            idx = idx[window_sums(boxes[idx], region.astype(np.float64)) > 0]
        boxes = boxes[idx]
        total = torch.zeros(ctx.size, ctx.size, dtype=torch.float64, device=ctx.device)
        count = torch.zeros_like(total)
        scale = (params["window"] / win) ** 2  # on the finest level's scale
        for p in evaluate_windows(ctx, boxes, fills, total, count, stage=f"level {levels - level}"):
            partial = torch.where(count > 0, average(total, count) * scale, heat)
            yield ctx.progress(p.done, p.total, partial, p.stage)
        level_map = average(total, count) * scale
        heat = torch.where(count > 0, level_map, heat)
        n_eval += len(boxes)
        per_level.append({"window": win, "stride": step, "evaluated": len(boxes)})
        region = _refine_region(level_map, count > 0, refine_fraction)
        if not region.any():
            break
    n_full = len(full_grid)
    return finish(ctx, "adaptive-occlusion", params, heat, n_patch=n_eval, n_patch_full=n_full,
                  info={"levels": per_level})


def _refine_region(level_map: torch.Tensor, evaluated: torch.Tensor, fraction: float) -> np.ndarray:
    """Pixels this level evaluated whose |attribution| reached ``fraction`` x the level's maximum."""
    mag = level_map.abs().masked_fill(~evaluated, 0)
    peak = float(mag.max()) if mag.numel() else 0.0
    if peak <= 0:
        return np.zeros(tuple(level_map.shape), bool)
    return (mag >= fraction * peak).cpu().numpy()


SPEC = MethodSpec(
    "adaptive-occlusion", adaptive_occlusion,
    WINDOW_PARAMS[:3] + (
        Param("levels", int, 2, "coarser levels above the finest window", low=0, high=8),
        Param("refine_fraction", float, 0.25, "subdivide where |attribution| >= this fraction of the level's "
              "maximum", low=0, high=1, aliases=("threshold",)),
        WINDOW_PARAMS[3]),
    summary="coarse-to-fine occlusion: large windows first, subdivided only where they matter.",
    counts="windows", cost="one forward pass per evaluated window over all levels, plus the baseline")
