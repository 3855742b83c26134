"""Metrics of masks and heatmaps (docs/methods.md).

Overlap (Dice, IoU), AUC-ROC of a heatmap against a mask, the energy-based
pointing game, deletion and insertion AUC with the segmentation target, rank
agreement of two maps, and the model-randomisation sanity check.

Example
-------
>>> import numpy as np
>>> from napari_xaiclip.metrics import auc_roc, pointing_game
>>> h = np.array([[0.9, 0.1], [0.8, 0.0]]); m = np.array([[1, 0], [1, 0]], bool)
>>> auc_roc(h, m), round(pointing_game(h, m), 4)
(1.0, 0.9444)
"""

from __future__ import annotations

import copy

import numpy as np

__all__ = [
    "auc_roc",
    "deletion_insertion",
    "dice",
    "heatmap_metrics",
    "iou",
    "otsu_within",
    "pointing_game",
    "randomize_segmenter",
    "randomization_check",
    "roi_metrics",
    "spearman",
    "threshold_heatmap",
    "topk_iou",
    "topk_mask",
    "trivial_metrics",
]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks; 1.0 when both are empty.

    >>> dice(np.array([1, 1, 0]), np.array([1, 0, 0]))
    0.6666666666666666
    """
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def threshold_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """Otsu mask of the positive part of a heatmap (importance); empty when nothing is positive.

    Uses ExplainSeg's Otsu (:func:`~napari_xaiclip.explain.postprocess.otsu_mask`).
    """
    from .explain.postprocess import otsu_mask

    h = np.clip(np.nan_to_num(np.asarray(heatmap, np.float64)), 0, None)
    if h.max() <= 0:
        return np.zeros(h.shape, bool)
    if h.max() == h.min():
        return h > 0
    return otsu_mask(h)


def auc_roc(heatmap: np.ndarray, mask: np.ndarray) -> float | None:
    """Area under the ROC curve of heatmap values as a classifier of ``mask`` (ties count half).

    ``None`` when the mask is empty or full.
    """
    from scipy.stats import rankdata

    h = np.nan_to_num(np.asarray(heatmap, np.float64)).ravel()
    m = np.asarray(mask, bool).ravel()
    n_pos, n_neg = int(m.sum()), int((~m).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(h)
    return float((ranks[m].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def pointing_game(heatmap: np.ndarray, mask: np.ndarray) -> float | None:
    """Energy-based pointing game: positive heatmap mass inside ``mask`` / total positive mass."""
    h = np.clip(np.nan_to_num(np.asarray(heatmap, np.float64)), 0, None)
    total = h.sum()
    if total <= 0:
        return None
    return float(h[np.asarray(mask, bool)].sum() / total)


def topk_mask(values: np.ndarray, frac: float, within: np.ndarray | None = None) -> np.ndarray:
    """The ``frac`` highest-valued pixels (of those ``within``, if given) as a mask."""
    v = np.nan_to_num(np.asarray(values, np.float64))
    region = np.ones(v.shape, bool) if within is None else np.asarray(within, bool)
    idx = np.flatnonzero(region)
    k = max(1, int(round(frac * idx.size)))
    top = idx[np.argsort(-v.ravel()[idx], kind="stable")[:k]]
    out = np.zeros(v.size, bool)
    out[top] = True
    return out.reshape(v.shape)


def topk_iou(a: np.ndarray, b: np.ndarray, frac: float = 0.2, within: np.ndarray | None = None) -> float:
    """IoU of the top-``frac`` pixels of two maps (within a region, e.g. the ROI)."""
    return iou(topk_mask(a, frac, within), topk_mask(b, frac, within))


def spearman(a: np.ndarray, b: np.ndarray, within: np.ndarray | None = None) -> float:
    """Spearman rank correlation of two maps (over a region); 0 when either is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if within is not None:
        a, b = a[np.asarray(within, bool)], b[np.asarray(within, bool)]
    a, b = a.ravel(), b.ravel()
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def deletion_insertion(ctx, heatmap_model: np.ndarray, steps: int = 50, seed: int = 0) -> dict:
    """Deletion and insertion AUC (RISE's definition) with the context's target.

    Pixels are removed (set to 0 in model input space) or inserted into a
    blurred canvas in order of decreasing heatmap value (ties in random order),
    ``steps`` equal fractions at a time; the AUC is the mean of the trapezoid
    under target vs fraction. Uses ``2 * (steps + 1)`` forward passes.

    Parameters
    ----------
    ctx : a :class:`~napari_xaiclip.explain.base.Context` (model input, prompt, target).
    heatmap_model : (S, S) heatmap at model resolution.
    """
    import torch

    from .explain.engine import fill_values, perturb_and_score

    h = np.nan_to_num(np.asarray(heatmap_model, np.float64))
    if h.shape != (ctx.size, ctx.size):
        raise ValueError(f"heatmap of shape {h.shape} is not at the model's {ctx.size}x{ctx.size}")
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(h.size), -h.ravel()))  # by value, ties at random
    rank = np.empty(h.size, np.int64)
    rank[order] = np.arange(h.size)
    rank_t = torch.as_tensor(rank.reshape(h.shape), device=ctx.device)
    n_pix = h.size
    cuts = torch.as_tensor(np.round(np.linspace(0, n_pix, steps + 1)).astype(np.int64), device=ctx.device)
    zero = torch.zeros_like(ctx.x)
    canvas = fill_values(ctx, "blur", blur_sigma=max(2.0, ctx.size / 32))
    curves = {}
    for name, start_img, end_img in (("deletion", ctx.x, zero), ("insertion", canvas, ctx.x)):
        def build(i0, i1, a=start_img, b=end_img):
            changed = rank_t[None] < cuts[i0:i1, None, None]
            return torch.where(changed[:, None], b[None], a[None])

        scores = np.zeros(steps + 1)
        for i0, i1, s in perturb_and_score(ctx, steps + 1, build):
            scores[i0:i1] = s.double().cpu().numpy()
        curves[name] = scores
    x = np.linspace(0, 1, steps + 1)
    return {"deletion_auc": float(np.trapezoid(curves["deletion"], x)),
            "insertion_auc": float(np.trapezoid(curves["insertion"], x)),
            "deletion_curve": curves["deletion"].tolist(), "insertion_curve": curves["insertion"].tolist()}


def heatmap_metrics(heatmap: np.ndarray, baseline_mask: np.ndarray, gt: np.ndarray | None = None) -> dict:
    """Overlap of the Otsu-thresholded heatmap with the baseline mask (and ground truth), AUC, pointing game."""
    thr = threshold_heatmap(heatmap)
    out = {
        "dice_vs_baseline": dice(thr, baseline_mask), "iou_vs_baseline": iou(thr, baseline_mask),
        "auc_vs_baseline": auc_roc(heatmap, baseline_mask),
        "pointing_game": pointing_game(heatmap, baseline_mask if gt is None else gt),
        "dice_vs_gt": None, "iou_vs_gt": None, "auc_vs_gt": None,
    }
    if gt is not None:
        out.update(dice_vs_gt=dice(thr, gt), iou_vs_gt=iou(thr, gt), auc_vs_gt=auc_roc(heatmap, gt))
    return out


def otsu_within(heatmap: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Otsu mask of the positive heatmap computed over ``region``'s pixels only (empty outside it).

    Outside pixels do not enter the threshold: an ROI-guided map is zero there,
    and those zeros would otherwise decide the threshold.
    """
    from .preprocess import safe_otsu

    region = np.asarray(region, bool)
    h = np.clip(np.nan_to_num(np.asarray(heatmap, np.float64)), 0, None)
    values = h[region]
    if values.size == 0 or values.max() <= 0:
        return np.zeros(h.shape, bool)
    if values.max() == values.min():
        return region & (h > 0)
    return region & (h > safe_otsu(values))


def roi_metrics(heatmap: np.ndarray, baseline_mask: np.ndarray, roi: np.ndarray) -> dict:
    """Overlap and pointing **inside the ROI**: can the map find the segmented object within
    the region it was given? Not circular for ROI-guided maps, which are zero outside the ROI.

    ``dice_in_roi``: Dice of the map's Otsu mask over ROI pixels with the baseline mask
    inside the ROI; ``pointing_in_roi``: share of the positive mass in the ROI that lies on
    the baseline mask.
    """
    roi = np.asarray(roi, bool)
    target = np.asarray(baseline_mask, bool) & roi
    h = np.where(roi, np.nan_to_num(np.asarray(heatmap, np.float64)), 0.0)
    return {"dice_in_roi": dice(otsu_within(h, roi), target), "pointing_in_roi": pointing_game(h, target)}


def trivial_metrics(baseline_mask: np.ndarray, roi: np.ndarray, gt: np.ndarray | None = None) -> dict:
    """The quality figures a map that knows nothing but the ROI scores: a constant inside the ROI.

    Printed next to every ROI-mode figure: an explanation is only informative
    where it beats this.
    """
    trivial = np.asarray(roi, np.float64)
    whole = heatmap_metrics(trivial, baseline_mask, gt)
    inside = roi_metrics(trivial, baseline_mask, roi)
    out = {f"trivial_{k}": whole[k] for k in ("dice_vs_baseline", "dice_vs_gt", "pointing_game")}
    out.update({f"trivial_{k}": v for k, v in inside.items()})
    return out


def randomize_segmenter(segmenter, seed: int = 0):
    """A copy of ``segmenter`` with every weight re-initialised (Adebayo et al.'s sanity check)."""
    import torch

    seg = copy.copy(segmenter)
    module = copy.deepcopy(segmenter.module)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        touched = set()
        for sub in module.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
                touched.update(id(p) for p in sub.parameters(recurse=False))
        with torch.no_grad():
            for p in module.parameters():
                if id(p) not in touched:
                    p.normal_(0.0, 0.02)
    seg.module = module.eval()
    seg._gflops = getattr(segmenter, "_gflops", None)
    return seg


def randomization_check(explain_fn, segmenter, threshold: float = 0.5, seed: int = 0,
                        within: np.ndarray | None = None) -> dict:
    """Run ``explain_fn(segmenter)`` on the model and on a re-initialised copy.

    ``explain_fn`` maps a segmenter to a heatmap (or an Explanation). The check
    passes when the Spearman correlation of the two maps is below ``threshold``.
    """
    def heat(seg):
        out = explain_fn(seg)
        return out.heatmap if hasattr(out, "heatmap") else np.asarray(out)

    original, randomized = heat(segmenter), heat(randomize_segmenter(segmenter, seed))
    rho = spearman(original, randomized, within)
    return {"spearman": rho, "passed": bool(abs(rho) < threshold), "threshold": threshold}
