"""Segmenters from any ``nn.Module`` or TorchScript file whose output is mask logits.

The model declares how it takes a box through a small config (keyword
arguments, or a JSON stored inside the TorchScript archive as the extra file
``xaiclip.json``, or beside it as ``MODEL.pt.json``):

``input_size`` (default 256), ``in_channels`` (1 or 3, default 1),
``box`` ("channel": a binary box mask is appended as one more input channel;
"ignore": the box is not passed, default), ``normalize`` ("minmax" to [0, 1],
"zscore", or "none"; default "minmax"), ``keep_aspect`` (default false).

The module maps (B, C[+1], S, S) to (B, 1, S, S) or (B, S, S) logits.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from .base import Prompt, Segmenter, check_zip_archive, pick_device

__all__ = ["ModuleSegmenter", "load_torchscript"]

_DEFAULTS = dict(input_size=256, in_channels=1, box="ignore", normalize="minmax", keep_aspect=False)


class ModuleSegmenter(Segmenter):
    """Wrap an ``nn.Module`` returning mask logits as a segmenter.

    >>> import torch
    >>> net = torch.nn.Conv2d(2, 1, 3, padding=1)
    >>> seg = ModuleSegmenter(net, input_size=32, box="channel")
    >>> seg.segment(np.random.rand(40, 40), box=(5, 5, 20, 20)).shape
    (40, 40)
    """

    def __init__(self, module, name: str = "module", device="auto", **config):
        _check_config(name, config)
        unknown = set(config) - set(_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown segmenter options {sorted(unknown)}; known: {sorted(_DEFAULTS)}")
        cfg = {**_DEFAULTS, **config}
        if cfg["box"] not in ("channel", "ignore"):
            raise ValueError(f"box must be 'channel' or 'ignore', got {cfg['box']!r}")
        if cfg["normalize"] not in ("minmax", "zscore", "none"):
            raise ValueError(f"normalize must be 'minmax', 'zscore' or 'none', got {cfg['normalize']!r}")
        self.device = pick_device(device)
        self.module = module.to(self.device).eval()
        self.name = name
        self.input_size = int(cfg["input_size"])
        self.in_channels = int(cfg["in_channels"])
        self.box_mode = cfg["box"]
        self.uses_box = self.box_mode == "channel"
        self.norm = cfg["normalize"]
        self.keep_aspect = bool(cfg["keep_aspect"])
        self.config = cfg
        self.description = f"nn.Module {type(module).__name__} ({cfg})"
        self._gflops = None

    def normalize(self, image: np.ndarray) -> np.ndarray:
        img = image.astype(np.float64)  # float32 max - min can overflow
        if self.norm == "minmax":
            img = (img - img.min()) / max(float(img.max() - img.min()), 1e-8)
        elif self.norm == "zscore":
            img = (img - img.mean()) / max(float(img.std()), 1e-8)
        return np.repeat(img.astype(np.float32)[None], self.in_channels, axis=0)

    def _encode(self, prompt: Prompt):
        import torch

        if self.box_mode != "channel":
            return None
        s = self.input_size
        mask = torch.zeros(1, 1, s, s, device=self.device)
        if prompt.box is not None:
            x0, y0, x1, y1 = np.clip(np.round(prompt.box), 0, s).astype(int)
            mask[..., y0:y1, x0:x1] = 1.0
        return mask

    def logits(self, images, prompt: Prompt):
        import torch

        prompt = self.as_prompt(prompt)
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape (B, {self.in_channels}, S, S), got {tuple(images.shape)}")
        if self.box_mode == "channel":
            if prompt.encoded is None:
                prompt.encoded = self._encode(prompt)
            images = torch.cat([images, prompt.encoded.expand(images.shape[0], -1, -1, -1)], dim=1)
        try:
            out = self.module(images)
        # shape and dtype mismatches; TorchScript raises its own torch.jit.Error, not a RuntimeError
        except (RuntimeError, TypeError, IndexError, torch.jit.Error) as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
            # TorchScript puts a generic header first and the cause ("RuntimeError: ...") last
            first = (lines[-1] if isinstance(exc, torch.jit.Error) else lines[0])[:200]
            raise ValueError(f"the model {self.name} failed on an input of shape {tuple(images.shape)} "
                             f"(input_size {self.input_size}, {images.shape[1]} channels): {first}; set input_size "
                             "and in_channels in its config to what it expects") from exc
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not hasattr(out, "ndim") or out.ndim not in (3, 4):
            raise ValueError(f"the model {self.name} returned {type(out).__name__} of shape "
                             f"{tuple(getattr(out, 'shape', ()))}; expected mask logits (B, 1, H, W) or (B, H, W)")
        if out.ndim == 4:
            if out.shape[1] != 1:
                raise ValueError(f"model returned {out.shape[1]} channels; expected 1 (mask logits)")
            out = out[:, 0]
        if out.shape[-2:] != images.shape[-2:]:
            import torch.nn.functional as F

            out = F.interpolate(out[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return out


def load_torchscript(path: str, device="auto") -> ModuleSegmenter:
    """Load a TorchScript segmenter; its config comes from the archive's ``xaiclip.json`` or ``PATH.json``."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"TorchScript model {p}: no such file")
    check_zip_archive(p, "TorchScript model")
    extra = {"xaiclip.json": ""}
    try:
        with warnings.catch_warnings():  # torch >= 2.9 flags TorchScript as deprecated; users still ship it
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise ValueError(f"TorchScript model {p}: cannot be loaded ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]})") from None
    config = {}
    sidecar = p.with_name(p.name + ".json")
    try:
        if extra["xaiclip.json"]:
            config = json.loads(extra["xaiclip.json"])
        elif sidecar.is_file():
            config = json.loads(sidecar.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"TorchScript model {p}: its config is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        _check_config(f"TorchScript model {p}", config)
    return ModuleSegmenter(module, name=f"torchscript:{path}", device=device, **config)


def _check_config(name: str, config) -> None:
    """A user model's config, refused with its name before any forward pass."""
    if not isinstance(config, dict):
        raise ValueError(f"the config of {name} must be a JSON object such as {{\"input_size\": 256}}, "
                         f"got {type(config).__name__}")
    for key, low, high in (("input_size", 8, 4096), ("in_channels", 1, 16)):
        if key in config:
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"the config of {name}: {key} must be an integer from {low} to {high}, "
                                 f"got {value!r}")
