"""LIME (Ribeiro et al. 2016) over superpixels, with segmentation targets.

Superpixels come from scikit-image (Felzenszwalb by default; SLIC and
QuickShift offered) on the model input. ROI-guided: only superpixels inside
the ROI are features (cut at its border, renumbered); the rest of the image is
never perturbed. Samples are random on/off vectors (the first keeps every
superpixel), scored through the shared engine; a ridge surrogate weighted by
an exponential kernel on the cosine distance to the all-on vector gives one
weight per superpixel. Multi-scale: Felzenszwalb at scales 50, 100 and 200,
each map min-max normalised (over the ROI's pixels in ROI mode), then averaged.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Context, finish
from .engine import fill_values, perturb_and_score
from .registry import MethodSpec, Param

__all__ = ["SPEC", "lime", "superpixels", "weighted_ridge"]

ALGORITHMS = ("felzenszwalb", "slic", "quickshift")


def superpixels(image: np.ndarray, algorithm: str = "felzenszwalb", scale: float = 100, sigma: float = 0.5,
                min_size: int = 50, n_segments: int = 100) -> np.ndarray:
    """(S, S) int labels 0..K-1 of a 2D image in [0, 1] (scikit-image)."""
    from skimage import segmentation

    img = np.asarray(image, np.float64)
    if algorithm == "felzenszwalb":
        return segmentation.felzenszwalb(img, scale=scale, sigma=sigma, min_size=int(min_size))
    if algorithm == "slic":
        return segmentation.slic(img, n_segments=int(n_segments), compactness=0.1, sigma=sigma,
                                 channel_axis=None, start_label=0)
    if algorithm == "quickshift":
        rgb = np.repeat(img[..., None], 3, axis=2)
        return segmentation.quickshift(rgb, kernel_size=3, max_dist=max(4.0, scale / 10), sigma=sigma,
                                       convert2lab=False)
    raise ValueError(f"unknown superpixel algorithm {algorithm!r}; choose from {ALGORITHMS}")


def restrict_to_roi(labels: np.ndarray, roi: np.ndarray | None) -> np.ndarray:
    """Labels with -1 outside the ROI and the inside parts renumbered 0..K-1."""
    out = labels.copy() if roi is None else np.where(roi, labels, -1)
    inside = out >= 0
    _, inverse = np.unique(out[inside], return_inverse=True)
    out[inside] = inverse
    return out


def weighted_ridge(z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float = 1.0) -> tuple[np.ndarray, float]:
    """Ridge regression of ``y`` on ``z`` with sample weights ``w`` and an intercept
    (what LIME fits with scikit-learn's ``Ridge(alpha).fit(z, y, sample_weight=w)``).

    Returns (coefficients (K,), intercept).
    """
    wn = w / w.sum()
    zm, ym = wn @ z, wn @ y
    zc, yc = z - zm, y - ym
    a = (zc * w[:, None]).T @ zc + alpha * np.eye(z.shape[1])
    coef = np.linalg.solve(a, (zc * w[:, None]).T @ yc)
    return coef, float(ym - zm @ coef)


def _segment_fill(ctx: Context, labels: torch.Tensor, k: int) -> torch.Tensor:
    """LIME's default: each superpixel replaced by its own mean.

    Pixels outside the ROI (label -1) enter no superpixel's mean; they are never
    switched off, so their fill is the input itself.
    """
    x = ctx.x
    flat = labels.reshape(-1)
    inside = flat >= 0
    xf = x.reshape(x.shape[0], -1)
    sums = torch.zeros(x.shape[0], k, device=x.device, dtype=x.dtype).index_add_(1, flat[inside], xf[:, inside])
    counts = torch.bincount(flat[inside], minlength=k).clamp_min(1)
    means = (sums / counts)[:, flat.clamp_min(0)]
    return torch.where(inside, means, xf).reshape(x.shape)


def _one_scale(ctx: Context, labels_np: np.ndarray, n_samples: int, fill: str, kernel_width: float,
               alpha: float, gen: torch.Generator, offset: int, total: int, stage: str):
    k = int(labels_np.max()) + 1
    if k < 1:
        raise ValueError("no superpixel inside the ROI")
    labels = torch.as_tensor(labels_np, device=ctx.device)
    fills = _segment_fill(ctx, labels, k) if fill == "segment-mean" else fill_values(ctx, fill)
    z = (torch.rand(n_samples, k, generator=gen, device=ctx.device) < 0.5)
    z[0] = True  # the unperturbed image anchors the surrogate
    idx = labels.clamp_min(0)
    outside = labels < 0
    scores = np.zeros(n_samples)

    def build(start, stop):
        off = ~z[start:stop][:, idx] & ~outside  # (b, S, S) pixels switched off
        return torch.where(off[:, None], fills[None], ctx.x[None])

    for start, stop, s in perturb_and_score(ctx, n_samples, build):
        scores[start:stop] = s.double().cpu().numpy()
        yield ctx.progress(offset + stop, total, None, stage)
    zn = z.double().cpu().numpy()
    cos = np.sqrt(zn.sum(1) / k)  # cosine similarity to the all-on vector
    weights = np.sqrt(np.exp(-((1 - cos) ** 2) / kernel_width ** 2))  # LIME's kernel
    coef, _ = weighted_ridge(zn, scores, weights, alpha)
    heat = np.where(labels_np >= 0, coef[np.clip(labels_np, 0, None)], 0.0)
    return heat, k


def lime(ctx: Context, n_samples: int | str = "auto", algorithm: str = "felzenszwalb", scale: float = 100,
         sigma: float = 0.5, min_size: int = 50, n_segments: int = 100, multiscale: bool = False,
         scales=(50, 100, 200), fill: str = "segment-mean", kernel_width: float = 0.25, alpha: float = 1.0):
    """LIME superpixel weights (generator; returns an Explanation).

    Parameters
    ----------
    n_samples : random on/off samples per scale, or "auto": 8 per superpixel,
        clipped to 200..500 (fewer features, as in ROI mode, need fewer samples). Default: "auto".
    algorithm : "felzenszwalb", "slic" or "quickshift". Default: "felzenszwalb".
    scale, sigma, min_size : Felzenszwalb parameters. Defaults: 100, 0.5, 50.
    n_segments : SLIC superpixel count. Default: 100.
    multiscale : aggregate Felzenszwalb at ``scales`` (50, 100, 200). Default: False.
    fill : "segment-mean" (LIME's), "zero", "mean" or "blur". Default: "segment-mean".
    kernel_width : exponential kernel width on the cosine distance. Default: 0.25.
    alpha : ridge penalty. Default: 1.0.

    ``n_patch`` is the number of superpixel features, ``n_patch_full`` the
    number over the whole image, ``rho`` their ratio.
    """
    grey = ctx.x.mean(0).cpu().numpy()
    grey = (grey - grey.min()) / max(float(grey.max() - grey.min()), 1e-8)
    roi = None if ctx.roi_model is None else ctx.roi_model.cpu().numpy()
    runs = [("felzenszwalb", s) for s in scales] if multiscale else [(algorithm, scale)]
    full = [superpixels(grey, alg, sc, sigma, min_size, n_segments) for alg, sc in runs]
    labels = [restrict_to_roi(f, roi) for f in full]
    counts = [int(lab.max()) + 1 for lab in labels]
    if min(counts) < 1:
        raise ValueError("no superpixel inside the ROI")
    per_run = [int(np.clip(8 * k, 200, 500)) if n_samples == "auto" else int(n_samples) for k in counts]
    params = dict(n_samples=n_samples if n_samples == "auto" else int(n_samples), samples_used=per_run,
                  algorithm=algorithm, scale=float(scale), sigma=float(sigma), min_size=int(min_size),
                  n_segments=int(n_segments), multiscale=bool(multiscale),
                  scales=list(scales) if multiscale else None, fill=fill, kernel_width=float(kernel_width),
                  alpha=float(alpha))
    total = int(sum(per_run))
    gen = ctx.generator()
    maps, done = [], 0
    yield ctx.progress(0, total, None, "superpixels")
    for (alg, sc), lab, n in zip(runs, labels, per_run):
        heat, _ = yield from _one_scale(ctx, lab, n, fill, kernel_width, alpha, gen, done, total,
                                        f"lime {alg} {sc:g}")
        done += n
        maps.append(heat)
        yield ctx.progress(done, total, _combine(maps, multiscale, roi), f"lime {alg} {sc:g}")
    n_full = int(sum(int(f.max()) + 1 for f in full))
    return finish(ctx, "lime", params, _combine(maps, multiscale, roi), n_patch=int(sum(counts)),
                  n_patch_full=n_full, info={"superpixels": counts})


def _combine(maps, multiscale: bool, roi: np.ndarray | None = None) -> np.ndarray:
    """The last map, or (multi-scale) the mean of the maps each min-max normalised.

    With an ROI the range is taken over its pixels only and the outside stays 0:
    the zeros outside would otherwise stretch each scale's range differently.
    """
    if not multiscale or len(maps) == 1:
        return maps[-1].astype(np.float32)
    inside = np.ones(maps[0].shape, bool) if roi is None else np.asarray(roi, bool)
    normed = []
    for m in maps:
        lo, hi = m[inside].min(), m[inside].max()
        n = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        normed.append(np.where(inside, n, 0.0))
    return np.mean(normed, 0).astype(np.float32)


SPEC = MethodSpec(
    "lime", lime,
    (Param("n_samples", int, "auto", "random on/off samples per scale; auto = 8 per superpixel, 200..500",
           low=2, high=1_000_000, auto=True),
     Param("algorithm", str, "felzenszwalb", "superpixels", choices=ALGORITHMS),
     Param("scale", float, 100, "Felzenszwalb scale (larger = bigger superpixels)", low=1e-6),
     Param("sigma", float, 0.5, "superpixel pre-smoothing", low=0),
     Param("min_size", int, 50, "Felzenszwalb minimum superpixel size in pixels", low=1),
     Param("n_segments", int, 100, "SLIC superpixel count", low=1, high=100_000),
     Param("multiscale", bool, False, "average Felzenszwalb at scales 50, 100, 200"),
     Param("scales", object, (50, 100, 200), "multi-scale Felzenszwalb scales", gui=False),
     Param("fill", str, "segment-mean", "what replaces a switched-off superpixel",
           choices=("segment-mean", "zero", "mean", "blur")),
     Param("kernel_width", float, 0.25, "kernel width on the cosine distance", low=1e-6),
     Param("alpha", float, 1.0, "ridge penalty", low=0)),
    summary="LIME: a weighted ridge surrogate over superpixels switched on and off.",
    counts="superpixels", cost="n_samples forward passes per scale (the first is the unperturbed image)")
