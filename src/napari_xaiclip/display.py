"""How a scan and a heatmap are first shown: modality, body region, window, heatmap colours.

Qt- and napari-free: the reader hook, the widgets and the figures call these and
turn the plain values into layer arguments.

Rules
-----
* **Modality** from the header first: the DICOM Modality (``description`` starts
  with ``"DICOM CT"``), a NIfTI description naming CT or MR, the phantom's marker.
  Then from intensities: CT when air is there (minimum <= -500 HU), or when the
  non-zero voxels look like HU of a CT with its air stripped: nothing below
  -1100 or above 4000, some negative voxels (fat, noise around water), at least
  30 % in [-20, 100] (soft tissue), a bone tail above 700 and few voxels in
  (200, 600) between the two. Zeros are left out because both stripped CTs and
  MR pad with them, and MR magnitude is never negative, so a T1 with dark CSF
  and bright tissue is not taken for CT. Anything else is not treated as CT.
* **Body region** of a CT: "head" when the description says HEAD/BRAIN/SKULL
  ("body" when it names the chest, abdomen, ...), or when the in-plane field of
  view is at most 260 mm and, on one of three axial slices (30, 50, 70 % down),
  bone (> 300 HU) closes a ring around most of the brain-density tissue
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

from .io import is_phantom_description

__all__ = ["BRAIN_WINDOW", "ABDOMEN_WINDOW", "guess_body_region", "guess_modality", "heatmap_colormap",
           "heatmap_layer_style", "heatmap_limits", "heatmap_style", "initial_window", "is_signed",
           "slice_window"]

#: (level, width) in HU.
BRAIN_WINDOW = (40.0, 80.0)
ABDOMEN_WINDOW = (40.0, 400.0)
HEAD_FOV_MM = 260.0
_HEAD_WORDS = re.compile(r"\b(HEAD|BRAIN|SKULL|CRANI\w*|NEURO)\b", re.IGNORECASE)
_BODY_WORDS = re.compile(r"\b(CHEST|THORAX|LUNGS?|ABDOMEN|ABD|PELVIS|LIVER|KIDNEYS?|SPINE|BODY|TRUNK)\b",
                         re.IGNORECASE)
_CT_WORDS = re.compile(r"\b(CT|HU|computed tomography)\b", re.IGNORECASE)
_MR_WORDS = re.compile(r"\b(MR|MRI|T1w?|T2w?|FLAIR|MPRAGE|DWI|ADC)\b", re.IGNORECASE)
_MAX_SAMPLE = 2_000_000


def _sample(data: np.ndarray) -> np.ndarray:
    """A strided subsample of the voxels (enough for histograms, cheap on 500-slice volumes)."""
    data = np.asarray(data)
    # every axis thinned alike: ravel() of a reoriented (non-contiguous) view would copy the volume
    step = max(1, int(np.ceil((data.size / _MAX_SAMPLE) ** (1 / max(1, data.ndim)))))
    v = data[(slice(None, None, step),) * data.ndim].astype(np.float64).ravel()
    return v[np.isfinite(v)]


def _header_text(vol) -> str:
    """The description plus a NIfTI intent name, where the source says what it is."""
    text = str(getattr(vol, "description", "") or "")
    header = getattr(vol, "header", None)
    try:
        intent = str(header.get_intent()[2] or "") if header is not None else ""
    except Exception:  # not a NIfTI header
        intent = ""
    return f"{text} {intent}".strip() if intent else text


def guess_modality(vol) -> tuple[str, str]:
    """("CT" | "MR" | "other", why): the header first, then the intensities."""
    text = _header_text(vol)
    m = re.match(r"DICOM (\w+)", text)
    if m and m.group(1).upper() != "OT":  # OT (other/secondary capture) says nothing: look further
        modality = m.group(1).upper()
        return (modality if modality in ("CT", "MR") else "other"), f"DICOM Modality {modality}"
    if is_phantom_description(text):
        kind = "CT" if " ct " in f" {text} " else "MR"
        return kind, f"phantom ({kind})"
    if _CT_WORDS.search(text):
        return "CT", "the file's description says CT"
    if _MR_WORDS.search(text):
        return "MR", "the file's description says MR"
    v = _sample(vol.data)
    if v.size == 0:
        return "other", "no finite voxels"
    lo = float(v.min())
    if lo <= -500:
        return "CT", f"intensities look like HU (minimum {lo:.0f})"
    if _looks_like_hu_without_air(v):
        return "CT", f"intensities look like HU without air (minimum {lo:.0f}, soft tissue and bone peaks)"
    return "other", f"intensities are not HU (range {lo:.0f} to {float(v.max()):.0f})"


def _looks_like_hu_without_air(v: np.ndarray) -> bool:
    """A CT with its air stripped (e.g. a skull-stripped head): see the module's rules."""
    v = v[v != 0]
    if v.size < 100 or v.min() < -1100 or v.max() < 700 or v.max() > 4000:
        return False
    negative = np.mean(v < 0)
    soft = np.mean((v >= -20) & (v <= 100))
    between = np.mean((v > 200) & (v < 600))
    bone = np.mean(v > 700)
    return negative >= 0.001 and soft >= 0.3 and between <= 0.1 and 0.001 <= bone <= 0.5


def guess_body_region(vol) -> tuple[str, str]:
    """("head" | "body", why) for a CT volume."""
    text = _header_text(vol)
    if _HEAD_WORDS.search(text):
        return "head", "the description names the head"
    if _BODY_WORDS.search(text):
        return "body", "the description names the body"
    spacing = getattr(vol, "spacing", (1.0, 1.0, 1.0))
    fov = max(vol.data.shape[1] * spacing[1], vol.data.shape[2] * spacing[2])
    if fov > HEAD_FOV_MM:
        return "body", f"field of view {fov:.0f} mm"
    # axis 0 runs head to foot: three slices so a scan reaching into the neck still shows the skull
    nz = vol.data.shape[0]
    if any(_skull_ring(np.asarray(vol.data[min(nz - 1, int(f * nz))], np.float64)) for f in (0.5, 0.3, 0.7)):
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


def slice_window(plane: np.ndarray) -> tuple[float, float] | None:
    """CT window of one slice with no header (figures): brain inside a skull ring, else abdomen; None if not HU."""
    v = _sample(plane)
    if v.size == 0 or not (v.min() <= -500 or _looks_like_hu_without_air(v)):
        return None
    level, width = BRAIN_WINDOW if _skull_ring(np.asarray(plane, np.float64)) else ABDOMEN_WINDOW
    return level - width / 2, level + width / 2


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
#: Blue (negative) -> transparent at 0 -> red (positive); which sign supports the segmentation is the method's.
_DIVERGING = [(0.0, (0.1, 0.3, 1.0, 0.95)), (0.3, (0.35, 0.6, 1.0, 0.6)), (0.45, (0.6, 0.8, 1.0, 0.0)),
              (0.55, (1.0, 0.75, 0.6, 0.0)), (0.7, (1.0, 0.45, 0.25, 0.6)), (1.0, (1.0, 0.1, 0.1, 0.95))]


def is_signed(heatmap: np.ndarray, rel_tol: float = 0.05) -> bool:
    """Whether a map has negative values beyond noise (more than ``rel_tol`` of its largest magnitude)."""
    v = _sample(heatmap)
    if v.size == 0:
        return False
    lo, hi = float(v.min()), float(v.max())
    peak = max(-lo, hi)
    return peak > 0 and -lo > rel_tol * peak


def heatmap_colormap(signed: bool) -> dict:
    """``{"name", "colors" (N, 4) RGBA, "controls" (N,)}`` for napari's Colormap or matplotlib."""
    stops = _DIVERGING if signed else _HEAT
    return {"name": "xaiclip diverging" if signed else "xaiclip importance",
            "colors": np.array([c for _, c in stops], np.float32),
            "controls": np.array([p for p, _ in stops], np.float32)}


def heatmap_limits(heatmap: np.ndarray, signed: bool | None = None) -> tuple[float, float]:
    """Contrast limits from the map's own range: (0, p99.5 of the positive values), or (-m, m) when signed."""
    signed = is_signed(heatmap) if signed is None else signed
    v = _sample(heatmap)  # percentiles of a strided sample: cheap on every live update of a large map
    if signed:
        m = float(np.percentile(np.abs(v[v != 0]), 99.5)) if np.any(v != 0) else 1.0
        return (-m, m) if m > 0 else (-1.0, 1.0)
    pos = v[v > 0]
    if pos.size == 0:
        return 0.0, 1.0
    hi = float(np.percentile(pos, 99.5))
    return (0.0, hi) if hi > 0 else (0.0, float(pos.max()))


def heatmap_style(heatmap: np.ndarray, signed: bool | None = None) -> dict:
    """Plain-value layer style: blending, opacity, contrast limits, the colour map spec and ``signed``."""
    signed = is_signed(heatmap) if signed is None else signed
    return {"blending": "translucent", "opacity": 0.9, "contrast_limits": heatmap_limits(heatmap, signed),
            "colormap": heatmap_colormap(signed), "signed": signed}


def heatmap_layer_style(heatmap: np.ndarray, signed: bool | None = None) -> dict:
    """napari ``add_image`` keyword arguments for a heatmap (``signed=None``: inferred from the map).

    The colour map is the plain spec dict, which napari turns into its Colormap
    itself (``Colormap(**spec)``), so this module needs no napari.
    """
    style = heatmap_style(heatmap, signed)
    style.pop("signed")
    return style
