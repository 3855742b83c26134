"""Slice enhancement: CT windows, MR percentile clipping, the XAI-CLIP adaptive
contrast pipeline, and resizing to and from a model's input.

Example
-------
>>> import numpy as np
>>> from napari_xaiclip.preprocess import CT_WINDOWS, enhance, window
>>> ct = np.linspace(-1000, 1000, 64 * 64, dtype=np.float32).reshape(64, 64)
>>> window(ct, *CT_WINDOWS["abdomen"]).dtype
dtype('uint8')
>>> enhance(ct).shape
(64, 64)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CT_WINDOWS",
    "InputGeometry",
    "adaptive_enhance_parts",
    "apply_preset",
    "enhance",
    "from_model_input",
    "mr_normalize",
    "rescale_to_uint8",
    "safe_otsu",
    "to_model_input",
    "window",
    "PRESETS",
]

#: CT window presets, (level, width) in HU.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),  # MedSAM's default
    "liver": (30.0, 150.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}

#: Every preset name the GUI and CLI accept.
PRESETS = tuple(f"ct-{k}" for k in CT_WINDOWS) + ("mr", "adaptive", "none")


def _finite(image: np.ndarray) -> np.ndarray:
    """float64 copy with NaN/-Inf set to the smallest finite value and +Inf to the largest."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {img.shape}")
    if img.size == 0:
        raise ValueError(f"empty slice of shape {img.shape}")
    ok = np.isfinite(img)
    if ok.all():
        return _clip_huge(img)
    if not ok.any():
        return np.zeros_like(img)
    lo, hi = img[ok].min(), img[ok].max()
    out = np.where(ok, img, lo)
    out[np.isposinf(img)] = hi
    return _clip_huge(out)


def _clip_huge(img: np.ndarray) -> np.ndarray:
    """Keep max - min finite in float64 (values beyond +-1e300 are clipped)."""
    return np.clip(img, -1e300, 1e300)


def safe_otsu(values: np.ndarray) -> float:
    """Otsu's threshold, or the midpoint when the range is too narrow (or wide) for its histogram."""
    from skimage.filters import threshold_otsu

    v = np.asarray(values, np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    try:
        with np.errstate(all="ignore"):  # huge ranges overflow Otsu's variance terms harmlessly
            return float(threshold_otsu(v))
    except (ValueError, FloatingPointError):
        return lo + (hi - lo) / 2


def rescale_to_uint8(image: np.ndarray) -> np.ndarray:
    """Min-max to 0..255 (a constant image gives zeros). NaN/Inf handled as in :func:`enhance`."""
    img = _finite(image)
    lo, hi = img.min(), img.max()
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    # divide by the span rather than multiply by 255 / span: 255 / a subnormal span overflows;
    # halve first when the span itself overflows (a range near +-1.8e308)
    span = hi - lo
    with np.errstate(over="ignore"):
        unit = (img - lo) / span if np.isfinite(span) else (img / 2 - lo / 2) / (hi / 2 - lo / 2)
    return np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def window(image: np.ndarray, level: float, width: float) -> np.ndarray:
    """Clip to ``[level - width/2, level + width/2]`` and map linearly to uint8.

    Works on 2D or 3D arrays; NaN maps to 0.

    >>> window(np.array([[-200.0, 40.0, 240.0]]), 40, 400).tolist()
    [[0, 128, 255]]
    """
    if not (np.isfinite(width) and width > 0):
        raise ValueError(f"window width must be a positive number, got {width}")
    if not np.isfinite(level):
        raise ValueError(f"window level must be a finite number, got {level}")
    img = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=-np.inf)
    lo = level - width / 2.0
    out = (np.clip(img, lo, lo + width) - lo) * 255.0 / width
    return np.round(out).astype(np.uint8)


def mr_normalize(image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Clip to percentiles of the voxels > 0 and map to uint8 (MR has no absolute scale)."""
    img = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    positive = img[img > 0]
    if positive.size == 0:
        return np.zeros(img.shape, np.uint8)
    lo, hi = np.percentile(positive, percentiles)
    if hi <= lo:  # every positive voxel has the same value: show them, not the void
        return np.where(img > 0, 255, 0).astype(np.uint8)
    return np.round((np.clip(img, lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def adaptive_enhance_parts(slice2d: np.ndarray, bg_threshold: float | None = None,
                           percentiles: tuple[float, float] = (5.0, 95.0), clip_limit: float = 2.0,
                           tile_grid: tuple[int, int] = (8, 8)) -> dict[str, np.ndarray]:
    """The intermediate images of :func:`enhance`, for display and tests.

    Returns a dict with ``background`` (bool), ``stretched``, ``clahe``,
    ``original8`` and ``enhanced`` (all uint8 but the first) and the scalars
    ``bg_threshold``, ``p_low`` and ``p_high`` (as 0-d arrays).
    """
    import cv2

    img = _finite(slice2d)
    if not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    if clip_limit <= 0:
        raise ValueError(f"clip_limit must be positive, got {clip_limit}")
    tiles = tuple(int(t) for t in tile_grid)
    if len(tiles) != 2 or min(tiles) < 1:
        raise ValueError(f"tile_grid must be two positive ints, got {tile_grid}")
    if bg_threshold is None:
        bg_threshold = safe_otsu(img)
    background = img < bg_threshold
    original8 = rescale_to_uint8(img)
    foreground = img[~background]
    if foreground.size == 0:
        p_low = p_high = float(img.max())
        stretched = original8.copy()
    else:
        p_low, p_high = (float(v) for v in np.percentile(foreground, percentiles))
        if p_high > p_low:
            stretched = np.round(np.clip((img - p_low) / (p_high - p_low), 0, 1) * 255).astype(np.uint8)
        else:  # flat foreground: white foreground on black
            stretched = np.where(img >= p_high, 255, 0).astype(np.uint8)
    if img.max() <= img.min():  # a constant slice holds nothing to enhance
        stretched = np.zeros(img.shape, np.uint8)
    if stretched.min() == stretched.max():  # CLAHE would turn a flat image grey
        clahe = stretched.copy()
    else:
        clahe = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=tiles).apply(stretched)
    enhanced = np.where(background, original8, clahe).astype(np.uint8)
    return {
        "background": background, "stretched": stretched, "clahe": clahe,
        "original8": original8, "enhanced": enhanced,
        "bg_threshold": np.asarray(bg_threshold), "p_low": np.asarray(p_low), "p_high": np.asarray(p_high),
    }


def enhance(slice2d: np.ndarray, bg_threshold: float | None = None,
            percentiles: tuple[float, float] = (5.0, 95.0), clip_limit: float = 2.0,
            tile_grid: tuple[int, int] = (8, 8)) -> np.ndarray:
    """Adaptive contrast enhancement of the XAI-CLIP paper (section III-A).

    1. background ``I < bg_threshold`` (Otsu on the slice when ``None``);
    2. ``p_low, p_high`` = percentiles of the foreground;
    3. linear stretch to 0..255 between them;
    4. CLAHE (OpenCV) on the stretched image;
    5. CLAHE result on the foreground, the original rescaled to 8 bits on the background.

    Parameters
    ----------
    slice2d : (H, W) ndarray, any real dtype
        NaN and -Inf count as the slice's minimum, +Inf as its maximum.
    bg_threshold : float, optional
        Background threshold in the slice's units. Default: Otsu.
    percentiles : (low, high)
        Default: (5, 95).
    clip_limit : float
        CLAHE clip limit. Default: 2.0.
    tile_grid : (int, int)
        CLAHE tile grid. Default: (8, 8).

    Returns
    -------
    (H, W) uint8 ndarray. A constant slice, an empty foreground or a flat
    foreground give a defined result, never NaN.

    Raises
    ------
    ValueError
        Not 2D, or parameters out of range.

    >>> enhance(np.full((16, 16), 7.0)).max()
    np.uint8(0)
    """
    return adaptive_enhance_parts(slice2d, bg_threshold, percentiles, clip_limit, tile_grid)["enhanced"]


def apply_preset(image: np.ndarray, preset: str, **params) -> np.ndarray:
    """Apply a preset by name (``PRESETS``) to a 2D slice or a 3D volume (slice by slice for adaptive).

    ``params`` go to :func:`enhance` for ``"adaptive"``; ``level``/``width``
    override a CT window.
    """
    image = np.asarray(image)
    if preset == "none":
        return image.astype(np.float32)
    if preset.startswith("ct-"):
        name = preset[3:]
        if name not in CT_WINDOWS:
            raise ValueError(f"unknown CT window {name!r}; choose from {sorted(CT_WINDOWS)}")
        level, width = CT_WINDOWS[name]
        return window(image, params.get("level", level), params.get("width", width))
    if preset == "mr":
        return mr_normalize(image, params.get("percentiles", (0.5, 99.5)))
    if preset == "adaptive":
        if image.ndim == 2:
            return enhance(image, **params)
        return np.stack([enhance(s, **params) for s in image])
    raise ValueError(f"unknown preset {preset!r}; choose from {PRESETS}")


@dataclass(frozen=True)
class InputGeometry:
    """How a slice maps onto a square model input of side ``size``.

    ``resized`` is the (h, w) the slice occupies at the top-left of the input;
    the rest is padding (SAM) or nothing (MedSAM stretches to the full square).
    """

    shape: tuple[int, int]
    size: int
    resized: tuple[int, int]
    keep_aspect: bool = False

    @property
    def scale(self) -> tuple[float, float]:
        """(row, column) factor from slice pixels to model pixels: size / max(H, W) on both
        axes when the aspect is kept (SAM, LiteMedSAM), not the rounded resized sides."""
        if self.keep_aspect:
            s = self.size / max(self.shape)
            return s, s
        return self.resized[0] / self.shape[0], self.resized[1] / self.shape[1]

    def box_to_model(self, box) -> np.ndarray:
        """(x0, y0, x1, y1) in slice pixels to model-input pixels."""
        sy, sx = self.scale
        x0, y0, x1, y1 = (float(v) for v in box)
        return np.array([x0 * sx, y0 * sy, x1 * sx, y1 * sy])

    def points_to_model(self, points) -> np.ndarray:
        """(N, 2) points as (x, y) slice pixels to model-input pixels."""
        sy, sx = self.scale
        return np.asarray(points, float) * np.array([sx, sy])


def _resize(image: np.ndarray, hw: tuple[int, int], nearest: bool) -> np.ndarray:
    import cv2

    h, w = hw
    if image.shape[:2] == (h, w):
        return image.copy()
    if nearest:
        interp = cv2.INTER_NEAREST
    elif h <= image.shape[0] and w <= image.shape[1]:
        interp = cv2.INTER_AREA  # shrinking: area averaging avoids aliasing
    else:
        interp = cv2.INTER_LINEAR
    src = image.astype(np.uint8) if image.dtype == bool else image
    if src.dtype in (np.int64, np.uint64, np.uint32):  # OpenCV has no 64-bit integer images
        src = src.astype(np.int32) if nearest else src.astype(np.float64)
    out = cv2.resize(src, (w, h), interpolation=interp)
    return out.astype(image.dtype) if (image.dtype == bool or nearest) else out


def to_model_input(image: np.ndarray, size: int, keep_aspect: bool = False,
                   nearest: bool = False) -> tuple[np.ndarray, InputGeometry]:
    """Resize a 2D slice to a ``size`` x ``size`` model input.

    Parameters
    ----------
    image : (H, W) ndarray
    size : side of the square input.
    keep_aspect : SAM style (longest side to ``size``, zero padding bottom/right)
        when True; MedSAM style (stretch to the square) when False.
    nearest : nearest-neighbour (for masks) instead of area/linear interpolation.

    Returns
    -------
    (size, size) array of the input's dtype (float32 for floats) and the geometry
    for :func:`from_model_input`.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty slice of shape {image.shape}")
    h, w = image.shape
    if keep_aspect:
        s = size / max(h, w)
        resized = (max(1, int(round(h * s))), max(1, int(round(w * s))))
    else:
        resized = (size, size)
    if image.dtype != bool and not nearest:
        image = image.astype(np.float32)
    small = _resize(image, resized, nearest)
    out = np.zeros((size, size), dtype=small.dtype)
    out[: resized[0], : resized[1]] = small
    return out, InputGeometry((h, w), size, resized, keep_aspect)


def from_model_input(array: np.ndarray, geometry: InputGeometry, nearest: bool = False) -> np.ndarray:
    """Crop the padding and resize a model-input-sized map back to the slice (inverse of ``to_model_input``)."""
    array = np.asarray(array)
    if array.shape[-2:] != (geometry.size, geometry.size):
        raise ValueError(f"expected a {geometry.size}x{geometry.size} map, got shape {array.shape}")
    h, w = geometry.resized
    crop = array[:h, :w]
    if array.dtype != bool and not nearest:
        crop = crop.astype(np.float32)
    import cv2

    if nearest or crop.dtype == bool:
        return _resize(crop, geometry.shape, nearest=True)
    # bilinear back up (what MedSAM does with F.interpolate); area when shrinking
    H, W = geometry.shape
    interp = cv2.INTER_AREA if (H <= h and W <= w) else cv2.INTER_LINEAR
    return cv2.resize(crop, (W, H), interpolation=interp)
