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

Convergence stop (opt-in, ``stop_iou``; off by default), a split-half rule: the
masks are dealt alternately into two halves (even and odd draw index), each with
its own running fidelity map. At the end of the batch that reaches each multiple
of ``check_every`` masks (a checkpoint), the top 20 % pixels of the two half maps
(of the ROI's pixels in ROI mode) are compared by IoU, and the run stops at the
first checkpoint where it is >= ``stop_iou``. The halves share no mask, so their
agreement measures the noise left in a map of n / 2 masks; the map returned uses
all n, so it is at least that stable. (Comparing consecutive checkpoints instead
would stop too early: they share most of their masks.) Masks are drawn in the
same order either way, so a run that stops after n masks gives the same maps as a
run with ``n_samples = n`` (same seed and batch size). ``info`` records
``n_samples_used``, ``stop_reason`` and each checkpoint's split-half IoU.
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
    stop_iou : stop early once two independent halves of the masks give the same top 20 % (see the module
        docstring), in (0, 1]. Default: None (off, all ``n_samples`` masks).
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
    half = _EvenHalf(sal_fid) if stop_iou is not None else None   # the even-index masks' share, for the stop
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
        if half is not None:
            half.add(start, scores[:, 0].double(), m)
        fid = _saliency(sal_fid, coverage, score_sum[0] / stop, center, stop * p1)
        yield ctx.progress(stop, n_masks, _normalise(fid, region) if normalise else fid, "rise")
        if check is not None and check.due(stop) and check(stop, *half.maps(sal_fid, coverage, score_sum[0], stop,
                                                                              center)):
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


class _EvenHalf:
    """Running sums over the masks with an even draw index; the odd half is the total minus these."""

    def __init__(self, like: torch.Tensor):
        self.sal = torch.zeros_like(like)
        self.coverage = torch.zeros_like(like)
        self.score_sum = torch.zeros((), dtype=like.dtype, device=like.device)
        self.count = 0

    def add(self, start: int, scores: torch.Tensor, masks: torch.Tensor) -> None:
        first = start % 2   # the batch's first even-index mask
        even_scores, even_masks = scores[first::2], masks[first::2]
        self.sal += torch.einsum("b,bij->ij", even_scores, even_masks)
        self.coverage += even_masks.sum(0)
        self.score_sum += even_scores.sum()
        self.count += int(even_scores.numel())

    def maps(self, sal_all, coverage_all, score_sum_all, done: int, center: bool):
        """(even-half map, odd-half map), each the RISE saliency of its own masks."""
        odd = done - self.count
        even_map = _saliency(self.sal, self.coverage, self.score_sum / max(1, self.count), center, 1.0)
        odd_map = _saliency(sal_all - self.sal, coverage_all - self.coverage,
                            (score_sum_all - self.score_sum) / max(1, odd), center, 1.0)
        return even_map, odd_map


class _Convergence:
    """The stop rule: at a checkpoint, the IoU of the two half maps' top-20 % sets >= threshold."""

    share = 0.2

    def __init__(self, threshold: float, every: int, region: torch.Tensor | None):
        self.threshold, self.every, self.region = threshold, max(1, every), region
        self.next = self.every
        self.history: list[list] = []   # [masks, split-half IoU]

    def due(self, done: int) -> bool:
        """Whether ``done`` masks reach the next checkpoint."""
        return done >= max(2, self.next)   # two masks at least: one per half

    def __call__(self, done: int, first: torch.Tensor, second: torch.Tensor) -> bool:
        self.next = (done // self.every + 1) * self.every
        a, b = _top_set(first, self.region, self.share), _top_set(second, self.region, self.share)
        iou = float((a & b).sum()) / max(1, int((a | b).sum()))
        self.history.append([done, round(iou, 6)])
        return self.converged()

    def converged(self) -> bool:
        return bool(self.history) and self.history[-1][1] >= self.threshold

    def reason(self, used: int, n_masks: int) -> str:
        if self.converged():
            done, iou = self.history[-1]
            return (f"converged: the two halves of {done} masks agree at top-20 % IoU {iou:.3f} "
                    f">= {self.threshold:g}")
        return f"n_samples reached ({n_masks}) before the two halves agreed at top-20 % IoU >= {self.threshold:g}"


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
     Param("stop_iou", float, None, "stop once two independent halves of the masks agree: top-20 % IoU of "
           "their maps >= this at a checkpoint, in (0, 1], e.g. 0.9; auto = off (all n_samples)", low=1e-6,
           high=1, auto=True),
     Param("check_every", int, 200, "masks between convergence checkpoints (with stop_iou)", low=1,
           high=10_000_000)),
    summary="RISE: the score-weighted average of random smooth masks.",
    sign="higher = supports the segmentation; min-max normalised to [0, 1] inside the ROI by default",
    cost="one forward pass per mask (n_samples, or fewer with stop_iou), plus the baseline")
