"""Model-card text for the model choosers' tooltips, built without loading any model.

LiteMedSAM's card is a constant; the shipped phantom models' cards are read from
their weight files (memory-mapped, the weights themselves are not read).
"""

from __future__ import annotations

from functools import lru_cache

PROJECT_LICENCE = "BSD-3-Clause (this project)"
PHANTOM_NOTE = ("phantom sample: using the phantom-trained demo models for speed; "
                "the default for real scans is LiteMedSAM")


@lru_cache(maxsize=4)
def weights_header(path: str) -> dict:
    """Everything but the weights in a file written by the project's trainers ({} when unreadable)."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a card is a nicety: never fail a tooltip
        return {}
    return {k: v for k, v in obj.items() if k != "state_dict"} if isinstance(obj, dict) else {}


def _lines(model: str, trained_on: str, licence: str, input_size, extra=()) -> str:
    rows = [model, f"Trained on: {trained_on}", f"Licence: {licence}"]
    if input_size:
        rows.append(f"Input: {input_size} px")
    return "\n".join([*rows, *extra])


def _litemedsam() -> str:
    from ..models.litemedsam import LITEMEDSAM_CARD as c

    return _lines(c["model"], c["trained_on"], c["licence"], 256,
                  ["9.8 M parameters; about 2 s per forward pass on a CPU (an explainer runs hundreds)",
                   f"Cite: {c['cite']}"])


def _phantom_segmenter() -> str:
    from ..models import PHANTOM_SEGMENTER, PHANTOM_TRAINED_ON

    card = weights_header(str(PHANTOM_SEGMENTER)).get("card", {})
    size = card.get("config", {}).get("image_size", 256)
    return _lines(card.get("model", "tiny SAM, phantom-trained demo model"), PHANTOM_TRAINED_ON,
                  PROJECT_LICENCE, size, ["Fast, for the phantom only: its masks on patient scans mean little"])


SEGMENTER_CARDS = {
    "default": _litemedsam,
    "phantom": _phantom_segmenter,
    "litemedsam": lambda: _lines("LiteMedSAM architecture with your fine-tuned weights "
                                 "(a state dict or {'model': ...})", "whatever you fine-tuned it on",
                                 "that of your weights", 256),
    "medsam": lambda: _lines("MedSAM ViT-B (medsam_vit_b.pth from bowang-lab/MedSAM)",
                             "MedSAM's training set (over 1.5 million medical image-mask pairs)",
                             "Apache-2.0; research use only", 1024),
    "sam": lambda: _lines("Segment Anything (vit_b / vit_l / vit_h checkpoint)",
                          "SA-1B natural images, not medical scans", "Apache-2.0", 1024),
    "torchscript": lambda: _lines("A TorchScript model returning mask logits (config in the archive)",
                                  "whatever its author trained it on", "that of the model", None),
}


def localizer_classes(key: str = "default") -> list[str]:
    """The shipped localizer's organ classes (no background), read from its file; [] for other kinds."""
    from ..models import DEFAULT_LOCALIZER

    if key != "default":
        return []
    return [c for c in weights_header(str(DEFAULT_LOCALIZER)).get("classes", []) if c.lower() != "background"]


def _default_localizer() -> str:
    from ..models import DEFAULT_LOCALIZER, PHANTOM_TRAINED_ON

    head = weights_header(str(DEFAULT_LOCALIZER))
    size = (head.get("clip_config") or {}).get("vision_cfg", {}).get("image_size")
    return _lines(head.get("card", {}).get("model", "CLIP region localizer, phantom-trained demo model"),
                  PHANTOM_TRAINED_ON, PROJECT_LICENCE, size,
                  [f"Classes: {', '.join(localizer_classes())}",
                   "On patient scans take the ROI from the segmenter's mask of a box (Box tab) instead"])


LOCALIZER_CARDS = {
    "default": _default_localizer,
    "file": lambda: _lines("A localizer written by `xaiclip train-localizer`", "the data in its card",
                           "that of your data", None, ["Classes: press 'List classes'"]),
    "clip": lambda: _lines("Zero-shot dense open_clip similarity (open vocabulary: any text prompt)",
                           "the pretraining data of the tag (natural image-text pairs unless a medical CLIP "
                           "such as BiomedCLIP)", "that of the weights", None),
}


def segmenter_card(key: str) -> str:
    """Tooltip text for a segmenter kind."""
    return SEGMENTER_CARDS[key]() if key in SEGMENTER_CARDS else ""


def localizer_card(key: str) -> str:
    """Tooltip text for a localizer kind."""
    return LOCALIZER_CARDS[key]() if key in LOCALIZER_CARDS else ""
