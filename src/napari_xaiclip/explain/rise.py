"""RISE (Petsiuk et al. 2018) with segmentation targets, and ROI-constrained RISE.

N = ``n_samples`` random binary grids (``cells`` x ``cells``, each cell on with probability
``p1``) are upsampled bilinearly to (cells + 1) cells, shifted at random by up to one
cell, cropped to the input and multiplied into it. Saliency is
``sum_i f_i M_i / (N p1)``; with ``center=True``, ``sum_i (f_i - mean f) M_i / (N p1)``:
the same map up to a constant in expectation, without the random mask-coverage
pattern that otherwise dominates when the scores vary little (it made RISE fail
the model-randomisation check). ROI-constrained: the multiplier is 1 outside the
ROI, so only the ROI is perturbed, and the map is kept inside it.

Masks are made per batch on the device (never all N at once), and one forward
pass serves two targets, so two maps come out, each min-max normalised:
``fidelity`` (Dice against the baseline mask, the heatmap) and ``relevance``
(mean foreground probability inside the ROI, or the baseline mask without one).

Convergence stop (opt-in, ``stop_iou``; off by default): at the end of the batch
that reaches each multiple of ``check_every`` masks (a checkpoint), the top 20 %
pixels of the running fidelity map (of the ROI's pixels in ROI mode) are compared
with the previous checkpoint's by IoU; the run stops when two consecutive IoUs
are >= ``stop_iou``, so never before the third checkpoint. Masks are drawn in the
same order either way, so a run that stops after n masks gives the same maps as
a run with ``n_samples = n`` (same seed and batch size). ``info`` records
``n_samples_used``, ``stop_reason`` and each checkpoint's IoU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Context, finish
from .engine import perturb_and_score
from .registry import MethodSpec, Param
from .targets import RegionProbTarget

__all__ = ["SPEC", "rise", "rise_masks"]


def rise_masks(n: int, size: int, grid: int = 7, p1: float = 0.5, generator=None, device="cpu") -> torch.Tensor:
    """(n, size, size) float masks in [0, 1] as in RISE: random grid, bilinear upsampling, random shift."""
    cell = math.ceil(size / grid)
    up = (grid + 1) * cell
    g = (torch.rand(n, 1, grid, grid, generator=generator, device=device) < p1).float()
    big = F.interpolate(g, size=(up, up), mode="bilinear", align_corners=False)[:, 0]
    shift = torch.randint(0, cell, (n, 2), generator=generator, device=device)
    ar = torch.arange(size, device=device)
    rows = (shift[:, 0:1] + ar)[:, :, None]
    cols = (shift[:, 1:2] + ar)[:, None, :]
    return big[torch.arange(n, device=device)[:, None, None], rows, cols]


def _normalise(m: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    vals = m[region] if region is not None else m.reshape(-1)
    lo, hi = vals.min(), vals.max()
    out = (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)
    return out if region is None else torch.where(region, out, torch.zeros_like(out))


def rise(ctx: Context, n_samples: int = 2000, cells: int = 7, p1: float = 0.5, normalize: bool = True,
         center: bool = False, stop_iou: float | None = None, check_every: int = 200):
    """RISE saliency (generator; returns an Explanation with maps "fidelity" and "relevance").

    Parameters
    ----------
    n_samples : N random masks. Default: 2000.
    cells : cells per side of the random grid. Default: 7.
    p1 : probability that a cell is kept. Default: 0.5.
    normalize : min-max normalise each map (inside the ROI in ROI mode). Default: True.
    center : subtract the mean score from every score (a control variate). Default: False (the paper's sum).
    stop_iou : stop early once the map's top 20 % is stable (see the module docstring), in (0, 1].
        Default: None (off, all ``n_samples`` masks).
    check_every : masks between convergence checkpoints. Default: 200.
    """
    if stop_iou is not None and not 0 < float(stop_iou) <= 1:
        raise ValueError(f"rise.stop_iou must be in (0, 1], got {stop_iou!r}")
    params = {"n_samples": int(n_samples), "cells": int(cells), "p1": float(p1), "normalize": bool(normalize),
              "center": bool(center), "stop_iou": None if stop_iou is None else float(stop_iou),
              "check_every": int(check_every)}
    n_masks, grid, normalise = params["n_samples"], params["cells"], params["normalize"]
    gen = ctx.generator()
    region = ctx.roi_model
    fidelity_target = ctx.target
    relevance_target = RegionProbTarget(region if region is not None else ctx.base_mask)
    sal_fid = torch.zeros(ctx.size, ctx.size, dtype=torch.float64, device=ctx.device)
    sal_rel = torch.zeros_like(sal_fid)
    coverage = torch.zeros_like(sal_fid)  # sum_i M_i, for centring
    score_sum = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    state = {}

    def build(start, stop):
        m = rise_masks(stop - start, ctx.size, grid, p1, gen, ctx.device)
        if region is not None:
            m = torch.where(region, m, torch.ones_like(m))
        state["masks"] = m
        return ctx.x[None] * m[:, None]

    both = _Both(fidelity_target, relevance_target)  # one forward pass serves both maps
    check = None if stop_iou is None else _Convergence(float(stop_iou), int(check_every), region)
    used = n_masks
    for start, stop, scores in perturb_and_score(ctx, n_masks, build, target=both):
        m = state["masks"].double()
        sal_fid += torch.einsum("b,bij->ij", scores[:, 0].double(), m)
        sal_rel += torch.einsum("b,bij->ij", scores[:, 1].double(), m)
        if center:
            coverage += m.sum(0)
            score_sum += scores.double().sum(0)
        fid = _saliency(sal_fid, coverage, score_sum[0] / stop, center, stop * p1)
        yield ctx.progress(stop, n_masks, _normalise(fid, region) if normalise else fid, "rise")
        if check is not None and check(stop, fid):
            used = stop
            break
    fid = _saliency(sal_fid, coverage, score_sum[0] / used, center, used * p1)
    rel = _saliency(sal_rel, coverage, score_sum[1] / used, center, used * p1)
    if normalise:
        fid, rel = _normalise(fid, region), _normalise(rel, region)
    info = {"n_samples_used": used, "stop_reason": "stop_iou off" if check is None else check.reason(used, n_masks)}
    if check is not None:
        info["checkpoints"] = check.history
    return finish(ctx, "rise", params, fid, n_patch=None, n_patch_full=None,
                  maps_model={"fidelity": fid, "relevance": rel}, info=info)


def _saliency(weighted: torch.Tensor, coverage: torch.Tensor, mean_score, center: bool, scale: float):
    """``sum_i f_i M_i / scale``, or ``sum_i (f_i - mean f) M_i / scale`` when centred."""
    return (weighted - mean_score * coverage if center else weighted) / scale


def _top_set(m: torch.Tensor, region: torch.Tensor | None, share: float) -> torch.Tensor:
    """Bool over the map's (or the region's) pixels: the ``share`` with the highest values."""
    vals = m[region] if region is not None else m.reshape(-1)
    k = max(1, math.ceil(share * vals.numel()))
    top = torch.zeros(vals.numel(), dtype=torch.bool, device=vals.device)
    top[torch.topk(vals, k).indices] = True
    return top


class _Convergence:
    """The stop rule: IoU of the top-20 % set between consecutive checkpoints, twice >= threshold."""

    share = 0.2

    def __init__(self, threshold: float, every: int, region: torch.Tensor | None):
        self.threshold, self.every, self.region = threshold, max(1, every), region
        self.next = self.every
        self.previous = None
        self.history: list[list] = []   # [masks, IoU with the previous checkpoint (None for the first)]

    def __call__(self, done: int, saliency: torch.Tensor) -> bool:
        if done < self.next:
            return False
        self.next = (done // self.every + 1) * self.every
        top = _top_set(saliency, self.region, self.share)
        iou = None
        if self.previous is not None:
            iou = float((top & self.previous).sum()) / max(1, int((top | self.previous).sum()))
        self.previous = top
        self.history.append([done, None if iou is None else round(iou, 6)])
        return self.converged()

    def converged(self) -> bool:
        ious = [h[1] for h in self.history[-2:]]
        return len(self.history) >= 3 and all(v >= self.threshold for v in ious)

    def reason(self, used: int, n_masks: int) -> str:
        if self.converged():
            a, b = self.history[-2:]
            return (f"converged: top-20 % IoU {a[1]:.3f} at {a[0]} and {b[1]:.3f} at {b[0]} masks "
                    f">= {self.threshold:g}")
        return f"n_samples reached ({n_masks}) before two consecutive checkpoints had IoU >= {self.threshold:g}"


class _Both:
    """Two targets evaluated on the same forward pass, stacked as (B, 2)."""

    uses_logits = False

    def __init__(self, first, second):
        self.first, self.second = first, second
        self.name = first.name

    def __call__(self, probs):
        return torch.stack([self.first(probs), self.second(probs)], 1)


SPEC = MethodSpec(
    "rise", rise,
    (Param("n_samples", int, 2000, "random masks", low=1, high=10_000_000, aliases=("n_masks",)),
     Param("cells", int, 7, "cells per side of the random grid", low=1, high=256, aliases=("grid",)),
     Param("p1", float, 0.5, "probability that a cell is kept", low=1e-6, high=1 - 1e-6),
     Param("normalize", bool, True, "min-max normalise the map (inside the ROI)", aliases=("normalise",)),
     Param("center", bool, False, "subtract the mean score (a control variate; passes the randomisation "
           "check)"),
     Param("stop_iou", float, None, "stop once the top-20 % pixels are stable: IoU between consecutive "
           "checkpoints twice >= this, in (0, 1], e.g. 0.95; auto = off (all n_samples)", low=1e-6, high=1,
           auto=True),
     Param("check_every", int, 200, "masks between convergence checkpoints (with stop_iou)", low=1,
           high=10_000_000)),
    summary="RISE: the score-weighted average of random smooth masks.",
    sign="higher = supports the segmentation; min-max normalised to [0, 1] inside the ROI by default",
    cost="one forward pass per mask (n_samples, or fewer with stop_iou), plus the baseline")
