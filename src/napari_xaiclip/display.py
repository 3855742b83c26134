"""How a scan and a heatmap are first shown: modality, body region, window, heatmap colours.

Qt- and napari-free: the reader hook, the widgets and the figures call these and
turn the plain values into layer arguments.

Rules
-----
* **Modality** from the header first: the DICOM Modality (``description`` starts
  with ``"DICOM CT"``), a NIfTI description naming CT or MR, the phantom's marker.
  Then from intensities: CT when air is there (minimum <= -500 HU), or when the
  voxels look like HU of a skull-stripped or cropped CT: integer values, most of
  them in the soft-tissue range [-100, 100] and a bone tail above 700. Anything
  else is not treated as CT.
* **Body region** of a CT: "head" when the description says HEAD/BRAIN/SKULL,
  or when the in-plane field of view is at most 260 mm and, on the middle axial
  slice, bone (> 300 HU) closes a ring around most of the brain-density tissue
  (0-80 HU). Otherwise "body".
* **Window**: head CT -> brain (W80 L40); body CT -> abdomen (W400 L40); other
  scans -> the 0.5-99.5 percentiles of the non-zero voxels.
* **Heatmaps** are drawn with translucent blending and a colour map whose low end
  is fully transparent, so the scan shows through where nothing is important and
  the important pixels stay readable over bright MR and dark CT alike (additive
  blending saturates to white over bright tissue). Signed maps get a diverging
  map, transparent at 0, with limits symmetric about 0.
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["BRAIN_WINDOW", "ABDOMEN_WINDOW", "guess_body_region", "guess_modality", "heatmap_colormap",
           "heatmap_limits", "heatmap_style", "initial_window", "is_signed"]

#: (level, width) in HU.
BRAIN_WINDOW = (40.0, 80.0)
ABDOMEN_WINDOW = (40.0, 400.0)
HEAD_FOV_MM = 260.0
_HEAD_WORDS = re.compile(r"\b(HEAD|BRAIN|SKULL|CRANI\w*|NEURO)\b", re.IGNORECASE)
_MAX_SAMPLE = 2_000_000


def _sample(data: np.ndarray) -> np.ndarray:
    """A strided subsample of the voxels (enough for histograms, cheap on 500-slice volumes)."""
    flat = np.asarray(data).ravel()
    step = max(1, flat.size // _MAX_SAMPLE)
    v = flat[::step].astype(np.float64)
    return v[np.isfinite(v)]


def guess_modality(vol) -> tuple[str, str]:
    """("CT" | "MR" | "other", why): the header first, then the intensities."""
    text = str(getattr(vol, "description", "") or "")
    m = re.match(r"DICOM (\w+)", text)
    if m:
        modality = m.group(1).upper()
        return (modality if modality in ("CT", "MR") else "other"), f"DICOM Modality {modality}"
    if text.startswith("xaiclip synthetic phantom"):
        kind = "CT" if " ct " in f" {text} " else "MR"
        return kind, f"phantom ({kind})"
    if re.search(r"\bCT\b", text):
        return "CT", "the file's description says CT"
    if re.search(r"\b(MR|MRI|T1|T2|FLAIR)\b", text):
        return "MR", "the file's description says MR"
    v = _sample(vol.data)
    if v.size == 0:
        return "other", "no finite voxels"
    lo = float(v.min())
    if lo <= -500:
        return "CT", f"intensities look like HU (minimum {lo:.0f})"
    if _looks_like_cropped_hu(v):
        return "CT", f"intensities look like HU without air (minimum {lo:.0f}, bone above 700)"
    return "other", f"intensities are not HU (range {lo:.0f} to {float(v.max()):.0f})"


def _looks_like_cropped_hu(v: np.ndarray) -> bool:
    """A CT with its air stripped: integer HU, mostly soft tissue, a bone tail, nothing below -1100."""
    if v.min() < -1100 or v.max() < 700 or not np.all(np.equal(np.mod(v, 1), 0)):
        return False
    soft = np.mean((v >= -100) & (v <= 100))
    bone = np.mean(v > 700)
    return soft >= 0.3 and 0.001 <= bone <= 0.5


def guess_body_region(vol) -> tuple[str, str]:
    """("head" | "body", why) for a CT volume."""
    text = str(getattr(vol, "description", "") or "")
    if _HEAD_WORDS.search(text):
        return "head", "the description names the head"
    spacing = getattr(vol, "spacing", (1.0, 1.0, 1.0))
    fov = max(vol.data.shape[1] * spacing[1], vol.data.shape[2] * spacing[2])
    if fov > HEAD_FOV_MM:
        return "body", f"field of view {fov:.0f} mm"
    if _skull_ring(np.asarray(vol.data[vol.data.shape[0] // 2], np.float64)):
        return "head", f"field of view {fov:.0f} mm with a bone ring around brain-density tissue"
    return "body", f"field of view {fov:.0f} mm, no skull ring"


def _skull_ring(plane: np.ndarray) -> bool:
    from scipy import ndimage

    bone = plane > 300
    if bone.mean() < 0.005:
        return False
    enclosed = ndimage.binary_fill_holes(bone) & ~bone
    brain = (plane >= 0) & (plane <= 80)
    if brain.sum() < 0.05 * plane.size:
        return False
    return bool((enclosed & brain).sum() >= 0.7 * brain.sum())


def initial_window(vol) -> tuple[tuple[float, float], str]:
    """(contrast limits, a label saying what was chosen and why)."""
    modality, why = guess_modality(vol)
    if modality == "CT":
        region, where = guess_body_region(vol)
        level, width = BRAIN_WINDOW if region == "head" else ABDOMEN_WINDOW
        name = "brain" if region == "head" else "abdomen"
        return ((level - width / 2, level + width / 2),
                f"CT ({why}), {region} ({where}): {name} window W{width:.0f} L{level:.0f}")
    v = _sample(vol.data)
    nonzero = v[v != 0]
    if nonzero.size == 0:
        return (0.0, 1.0), f"{modality} ({why}): empty volume"
    lo, hi = (float(x) for x in np.percentile(nonzero, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(nonzero.min()), float(nonzero.max()) + (1.0 if nonzero.max() == nonzero.min() else 0.0)
    label = "MR" if modality == "MR" else "not CT"
    return (lo, hi), f"{label} ({why}): 0.5-99.5 percentile window {lo:.4g} to {hi:.4g}"


# --------------------------------------------------------------------------- heatmaps

#: (position, RGBA): transparent below 10 % of the range, then purple -> red -> orange -> yellow,
#: more opaque as importance grows.
_HEAT = [(0.0, (0.0, 0.0, 0.0, 0.0)), (0.1, (0.35, 0.0, 0.55, 0.0)), (0.3, (0.7, 0.05, 0.45, 0.55)),
         (0.55, (0.95, 0.2, 0.15, 0.8)), (0.8, (1.0, 0.6, 0.0, 0.9)), (1.0, (1.0, 0.95, 0.3, 0.95))]
#: Blue (hinders) -> transparent at 0 -> red (supports).
_DIVERGING = [(0.0, (0.1, 0.3, 1.0, 0.95)), (0.3, (0.35, 0.6, 1.0, 0.6)), (0.45, (0.6, 0.8, 1.0, 0.0)),
              (0.55, (1.0, 0.75, 0.6, 0.0)), (0.7, (1.0, 0.45, 0.25, 0.6)), (1.0, (1.0, 0.1, 0.1, 0.95))]


def is_signed(heatmap: np.ndarray, rel_tol: float = 0.05) -> bool:
    """Whether a map has negative values beyond noise (more than ``rel_tol`` of its largest magnitude)."""
    h = np.nan_to_num(np.asarray(heatmap, np.float64))
    peak = float(np.abs(h).max()) if h.size else 0.0
    return peak > 0 and float(-h.min()) > rel_tol * peak


def heatmap_colormap(signed: bool) -> dict:
    """``{"name", "colors" (N, 4) RGBA, "controls" (N,)}`` for napari's Colormap or matplotlib."""
    stops = _DIVERGING if signed else _HEAT
    return {"name": "xaiclip diverging" if signed else "xaiclip importance",
            "colors": np.array([c for _, c in stops], np.float32),
            "controls": np.array([p for p, _ in stops], np.float32)}


def heatmap_limits(heatmap: np.ndarray, signed: bool | None = None) -> tuple[float, float]:
    """Contrast limits from the map's own range: (0, p99.5 of the positive values), or (-m, m) when signed."""
    h = np.nan_to_num(np.asarray(heatmap, np.float64))
    signed = is_signed(h) if signed is None else signed
    if signed:
        m = float(np.percentile(np.abs(h[h != 0]), 99.5)) if np.any(h != 0) else 1.0
        return (-m, m) if m > 0 else (-1.0, 1.0)
    pos = h[h > 0]
    if pos.size == 0:
        return 0.0, 1.0
    hi = float(np.percentile(pos, 99.5))
    return (0.0, hi) if hi > 0 else (0.0, float(pos.max()))


def heatmap_style(heatmap: np.ndarray, signed: bool | None = None) -> dict:
    """Plain-value layer style: blending, opacity, contrast limits and the colour map spec."""
    h = np.nan_to_num(np.asarray(heatmap, np.float64))
    signed = is_signed(h) if signed is None else signed
    return {"blending": "translucent", "opacity": 0.9, "contrast_limits": heatmap_limits(h, signed),
            "colormap": heatmap_colormap(signed), "signed": signed}
