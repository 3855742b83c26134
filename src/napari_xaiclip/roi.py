"""Regions of interest: from localizer maps, thresholds, boxes and labels; clean-up.

Every function takes and returns 2D arrays in slice pixels; an ROI is a
boolean (H, W) mask.

Example
-------
>>> import numpy as np
>>> from napari_xaiclip.roi import roi_from_map, roi_bbox
>>> score = np.zeros((32, 32)); score[8:20, 10:24] = 1.0
>>> roi = roi_from_map(score, sigma=1.0)
>>> roi_bbox(roi)
(10, 8, 24, 20)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "clean_roi",
    "roi_area",
    "roi_bbox",
    "roi_from_box",
    "roi_from_labels",
    "roi_from_map",
    "roi_from_threshold",
    "roi_to_model",
]


def _check_2d(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"expected a 2D {what}, got shape {a.shape}")
    return a


def clean_roi(roi: np.ndarray, largest_component: bool = False, fill_holes: bool = False,
              margin: int = 0) -> np.ndarray:
    """Optional clean-up: keep the largest connected component, fill holes, dilate by ``margin`` px."""
    roi = _check_2d(roi, "ROI").astype(bool)
    if largest_component and roi.any():
        lab, n = ndimage.label(roi)
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            roi = lab == (1 + int(np.argmax(sizes)))
    if fill_holes:
        roi = ndimage.binary_fill_holes(roi)
    if margin > 0:
        disk = _disk(int(margin))
        roi = ndimage.binary_dilation(roi, structure=disk)
    elif margin < 0:
        roi = ndimage.binary_erosion(roi, structure=_disk(int(-margin)))
    return roi


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def _finite_map(score: np.ndarray) -> np.ndarray:
    """float64 map with NaN as 0, +Inf as the largest finite value, -Inf as the smallest, |values| <= 1e300."""
    s = np.asarray(score, np.float64)
    finite = np.isfinite(s)
    hi = float(s[finite].max()) if finite.any() else 1.0
    lo = float(s[finite].min()) if finite.any() else 0.0
    out = np.where(np.isposinf(s), hi, np.where(np.isneginf(s), lo, np.nan_to_num(s, nan=0.0)))
    return np.clip(out, -1e300, 1e300)  # keeps max - min finite


def roi_from_map(score: np.ndarray, sigma: float = 2.0, threshold: float = 0.5,
                 normalize: str = "auto", largest_component: bool = False,
                 fill_holes: bool = False, margin: int = 0) -> np.ndarray:
    """Threshold a localizer map into an ROI (XAI-CLIP section III-D).

    Parameters
    ----------
    score : (H, W) ndarray
        Localizer output. NaN counts as 0, +Inf as the map's maximum, -Inf as its minimum.
    sigma : float
        Gaussian smoothing in pixels before thresholding. Default: 2.0.
    threshold : float
        Keep pixels with smoothed normalised score >= threshold. Default: 0.5.
    normalize : {"auto", "minmax", "none"}
        "auto" keeps maps already in [0, 1] (a probability keeps its meaning)
        and min-max normalises anything else. Default: "auto".
    largest_component, fill_holes, margin : see :func:`clean_roi`.

    Returns
    -------
    (H, W) bool ndarray; all False for a map with no signal.
    """
    s = _finite_map(_check_2d(score, "score map"))
    if normalize not in ("auto", "minmax", "none"):
        raise ValueError(f"normalize must be 'auto', 'minmax' or 'none', got {normalize!r}")
    in_unit = s.min() >= 0.0 and s.max() <= 1.0
    if normalize == "minmax" or (normalize == "auto" and not in_unit):
        lo, hi = s.min(), s.max()
        s = (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)
    if sigma > 0:
        s = ndimage.gaussian_filter(s, sigma)
    roi = s >= threshold
    return clean_roi(roi, largest_component, fill_holes, margin)


def roi_from_threshold(image: np.ndarray, value: float | None = None, box=None,
                       above: bool = True) -> np.ndarray:
    """Pixels above (or below) ``value`` (Otsu inside the box when ``None``), optionally only inside ``box``."""
    from .preprocess import safe_otsu

    img = np.nan_to_num(_check_2d(image, "slice").astype(np.float64))
    inside = np.ones(img.shape, bool) if box is None else roi_from_box(img.shape, box)
    if not inside.any():
        raise ValueError(f"box {box} does not overlap the {img.shape} slice")
    if value is None:
        region = img[inside]
        value = safe_otsu(region)
    roi = img > value if above else img < value
    return roi & inside


def roi_from_box(shape, box) -> np.ndarray:
    """Boolean mask of a box (x0, y0, x1, y1) in pixels, clipped to the slice (x1/y1 exclusive)."""
    h, w = int(shape[0]), int(shape[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box must have x1 > x0 and y1 > y0, got {box}")
    out = np.zeros((h, w), bool)
    c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    c1, r1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
    if c1 > c0 and r1 > r0:
        out[r0:r1, c0:c1] = True
    return out


def roi_from_labels(labels: np.ndarray, value: int | None = None) -> np.ndarray:
    """ROI from a label image: one label value, or every non-zero label when ``value`` is None."""
    labels = _check_2d(labels, "label slice")
    return labels != 0 if value is None else labels == int(value)


def roi_bbox(roi: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the ROI with x1/y1 exclusive, or ``None`` when empty."""
    roi = _check_2d(roi, "ROI").astype(bool)
    rows, cols = np.nonzero(roi.any(1))[0], np.nonzero(roi.any(0))[0]
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1] + 1), int(rows[-1] + 1)


def roi_area(roi: np.ndarray, spacing=(1.0, 1.0)) -> tuple[int, float]:
    """(pixels, mm^2) of an ROI for (row, column) pixel spacing in mm."""
    n = int(np.count_nonzero(roi))
    return n, float(n * spacing[0] * spacing[1])


def roi_to_model(roi: np.ndarray, size: int, keep_aspect: bool = False) -> np.ndarray:
    """The ROI at model input resolution (nearest neighbour, as the design asks)."""
    from .preprocess import to_model_input

    out, _ = to_model_input(np.asarray(roi, bool), size, keep_aspect=keep_aspect, nearest=True)
    return out.astype(bool)
