"""What a result rests on, and the warnings a user must see before trusting it.

Qt-free: the CLI prints these as ``warning:`` lines, the GUI shows them as
napari notifications, and every metrics record carries them.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "model_provenance",
    "phantom_model_warnings",
    "roi_overlap_warning",
]

REAL_SEGMENTER_HINT = "choose the segmenter 'default' (LiteMedSAM, a real medical model)"
REAL_ROI_HINT = ("take the ROI from the segmenter's mask of your box (CLI: --roi segmenter), from labels, "
                 "a threshold or drawn by hand, or use a localizer trained on your data")


def _card(model) -> dict:
    return dict(getattr(model, "card", None) or {})


def is_phantom_trained(model) -> bool:
    return bool(_card(model).get("phantom_trained"))


def model_provenance(segmenter=None, localizer=None) -> dict:
    """Flat record fields naming the models, what they were trained on, and the segmenter's execution
    mode (``speed_*``, see :mod:`napari_xaiclip.models.speed`)."""
    out = {}
    if segmenter is not None:
        from .models.speed import speed_record

        out.update(speed_record(segmenter))   # eager / bf16 / compile, and why
    for role, model in (("segmenter", segmenter), ("localizer", localizer)):
        if model is None:
            continue
        card = _card(model)
        out[role] = getattr(model, "name", type(model).__name__)
        out[f"{role}_trained_on"] = card.get("trained_on", "unknown (no model card)")
        if card.get("licence"):
            out[f"{role}_licence"] = card["licence"]
    return out


def phantom_model_warnings(volume_is_phantom: bool, segmenter=None, localizer=None) -> list[str]:
    """One warning per phantom-trained model applied to a volume that is not the phantom."""
    if volume_is_phantom:
        return []
    out = []
    if segmenter is not None and is_phantom_trained(segmenter):
        out.append(f"the segmenter {segmenter.name!r} was trained on a synthetic abdominal phantom only, "
                   f"not on patient scans: its masks on this volume mean little; {REAL_SEGMENTER_HINT}")
    if localizer is not None and is_phantom_trained(localizer):
        classes = ", ".join(c for c in getattr(localizer, "classes", ()) if c.lower() != "background")
        out.append(f"the localizer {localizer.name!r} was trained on a synthetic abdominal phantom only "
                   f"(classes: {classes}): its ROI on this volume means little; {REAL_ROI_HINT}")
    return out


def roi_overlap_warning(roi: np.ndarray | None, box=None, baseline_mask: np.ndarray | None = None) -> str | None:
    """A warning when the ROI misses the box prompt or the baseline segmentation (both in slice pixels).

    An ROI-guided explanation only perturbs inside the ROI, so an ROI away from
    the segmented structure explains nothing about it.
    """
    if roi is None or not np.any(roi):
        return None
    roi = np.asarray(roi, bool)
    missed = []
    if box is not None:
        h, w = roi.shape
        x0, y0, x1, y1 = (float(v) for v in box)
        r0, r1 = max(0, int(np.floor(y0))), min(h, int(np.ceil(y1)))
        c0, c1 = max(0, int(np.floor(x0))), min(w, int(np.ceil(x1)))
        if r1 <= r0 or c1 <= c0 or not roi[r0:r1, c0:c1].any():
            missed.append("the box prompt")
    if baseline_mask is not None and np.any(baseline_mask) and not (roi & np.asarray(baseline_mask, bool)).any():
        missed.append("the baseline segmentation")
    if not missed:
        return None
    return (f"the ROI does not overlap {' or '.join(missed)}: an ROI-guided explanation will perturb "
            "only pixels away from the segmented structure")
