"""open_clip models: creation from a tag, a local file, ``local-dir:`` or
``hf-hub:``; multi-layer patch tokens; and a zero-shot dense localizer
(MaskCLIP-style patch-text similarity through the last block's value path).

The tiny architecture the shipped localizer uses is registered with open_clip
as ``"xaiclip-tiny"`` (its bundled BPE tokenizer needs no download).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..preprocess import from_model_input, to_model_input
from .base import Localizer, pick_device

__all__ = ["ClipBundle", "ZeroShotLocalizer", "create_clip", "parse_clip_spec", "patch_tokens",
           "register_tiny_config", "clip_input", "text_module"]

CONFIG_DIR = Path(__file__).with_name("configs")
TINY_NAME = "xaiclip-tiny"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
BACKGROUND_PROMPTS = ("background", "air", "fat", "bone", "muscle", "soft tissue")
TEMPLATE = "a CT image of the {}."


def register_tiny_config() -> None:
    """Make ``"xaiclip-tiny"`` known to open_clip (idempotent)."""
    import open_clip

    if TINY_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


@dataclass
class ClipBundle:
    """A CLIP model with what it takes to feed it."""

    model: Any
    tokenizer: Any
    image_size: int
    mean: tuple
    std: tuple
    spec: str
    device: Any


def parse_clip_spec(spec: str) -> tuple[str, str | None]:
    """``"MODEL:PRETRAINED"``, ``"MODEL"``, ``"hf-hub:ORG/REPO"`` or ``"local-dir:PATH"`` -> (model, pretrained)."""
    if spec.startswith(("hf-hub:", "local-dir:")):
        return spec, None
    model, _, pretrained = spec.partition(":")
    if not model:
        raise ValueError(f"empty CLIP model name in {spec!r}")
    return model, (pretrained or None)


def create_clip(spec: str = TINY_NAME, device="auto", pretrained_ok: bool = True) -> ClipBundle:
    """Create an open_clip model and its tokenizer from a spec.

    Parameters
    ----------
    spec : ``"ViT-B-16:openai"`` (tag, downloaded on first use), ``"ViT-B-16:/path/weights.pt"``
        (local file), ``"hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"``,
        ``"local-dir:/path/folder"`` or ``"xaiclip-tiny"`` (random weights).

    Raises
    ------
    ValueError
        Unknown model, unreadable file, or weights that cannot be fetched (offline).
    """
    import open_clip

    register_tiny_config()
    name, pretrained = parse_clip_spec(spec)
    dev = pick_device(device)
    if pretrained and not pretrained_ok:
        pretrained = None
    if not name.startswith(("hf-hub:", "local-dir:")) and name not in open_clip.list_models():
        raise ValueError(f"unknown CLIP model {name!r}; open_clip knows {len(open_clip.list_models())} "
                         f"models, e.g. ViT-B-16, ViT-B-32, {TINY_NAME}")
    try:
        with _quiet_logging(pretrained is None):  # open_clip warns about random init, which is intended here
            model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=dev)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:
        msg = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ValueError(f"could not load CLIP {spec!r}: {msg}. Tags and hf-hub models are downloaded on "
                         "first use; offline, pass a local weights file (MODEL:/path/file) or local-dir:") from None
    model.eval()
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return ClipBundle(model, tokenizer, size, tuple(cfg.get("mean", OPENAI_MEAN)),
                      tuple(cfg.get("std", OPENAI_STD)), spec, dev)


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextmanager
def _quiet_logging(active: bool):
    """Drop open_clip's info chatter (it logs on the root logger) without changing the root logger's
    level, which other code in the process (napari, other plugins) relies on."""
    root = logging.getLogger()
    quiet = _DropInfo()
    if active:
        root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def clip_input(slice2d: np.ndarray, bundle_or_size, mean=OPENAI_MEAN, std=OPENAI_STD):
    """(H, W) slice -> ((3, S, S) float32 normalised input, InputGeometry): min-max, resize, CLIP mean/std."""
    if isinstance(bundle_or_size, ClipBundle):
        size, mean, std = bundle_or_size.image_size, bundle_or_size.mean, bundle_or_size.std
    else:
        size = int(bundle_or_size)
    img = np.nan_to_num(np.asarray(slice2d, np.float32))
    if img.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {img.shape}")
    resized, geometry = to_model_input(img, size)
    lo, hi = float(resized.min()), float(resized.max())
    unit = ((resized.astype(np.float64) - lo) / max(hi - lo, 1e-8)).astype(np.float32)
    x = (unit[None] - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
    return x.astype(np.float32), geometry


def text_module(model):
    """The module holding token_embedding/transformer/ln_final/text_projection (CLIP or CustomTextCLIP)."""
    if hasattr(model, "token_embedding"):
        return model
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "token_embedding"):
        return text
    raise ValueError("this CLIP's text tower is not an open_clip text transformer "
                     "(e.g. a Hugging Face text model); learnable prompt context needs one")


def _vision_blocks(visual):
    """(embed fn, blocks, finish fn, grid) for open_clip ViTs and timm ViTs inside open_clip."""
    if hasattr(visual, "transformer") and hasattr(visual, "_embeds"):
        return visual._embeds, list(visual.transformer.resblocks), 1
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "patch_embed"):
        def embed(x):
            x = trunk.patch_embed(x)
            x = trunk._pos_embed(x)
            return trunk.norm_pre(x) if hasattr(trunk, "norm_pre") else x
        return embed, list(trunk.blocks), getattr(trunk, "num_prefix_tokens", 1)
    raise ValueError(f"dense features need a ViT vision tower, got {type(visual).__name__}")


def patch_tokens(model, images, layers) -> list:
    """Patch tokens after the given vision blocks, each (B, C, h, w); differentiable."""
    embed, blocks, n_prefix = _vision_blocks(model.visual)
    b, _, h, w = images.shape
    x = embed(images)
    grid = int(round(np.sqrt(x.shape[1] - n_prefix)))
    wanted = sorted(set(int(i) % len(blocks) for i in layers))
    out = {}
    for i, blk in enumerate(blocks[: wanted[-1] + 1]):
        x = blk(x)
        if i in wanted:
            out[i] = x[:, n_prefix:].transpose(1, 2).reshape(b, -1, grid, grid)
    return [out[int(i) % len(blocks)] for i in layers]


def _value_path_tokens(model, images):
    """MaskCLIP: last block's value projection and output projection, no q-k attention, no MLP."""
    import torch.nn.functional as F

    visual = model.visual
    embed, blocks, n_prefix = _vision_blocks(visual)
    x = embed(images)
    for blk in blocks[:-1]:
        x = blk(x)
    last = blocks[-1]
    y = last.ln_1(x) if hasattr(last, "ln_1") else last.norm1(x)
    attn = last.attn
    if hasattr(attn, "in_proj_weight"):  # nn.MultiheadAttention (open_clip)
        c = y.shape[-1]
        v = F.linear(y, attn.in_proj_weight[2 * c:], attn.in_proj_bias[2 * c:])
        v = attn.out_proj(v)
    else:  # timm Attention
        c = y.shape[-1]
        v = F.linear(y, attn.qkv.weight[2 * c:], None if attn.qkv.bias is None else attn.qkv.bias[2 * c:])
        v = attn.proj(v)
    tokens = v[:, n_prefix:]
    if hasattr(visual, "ln_post"):
        tokens = visual.ln_post(tokens)
        if visual.proj is not None:
            tokens = tokens @ visual.proj
    else:
        trunk = visual.trunk
        tokens = trunk.norm(tokens) if hasattr(trunk, "norm") else tokens
        if getattr(visual, "head", None) is not None:
            tokens = visual.head(tokens)
    return tokens


class ZeroShotLocalizer(Localizer):
    """Open-vocabulary localizer from any open_clip ViT, no training (MaskCLIP style).

    The map is the softmax probability of the prompt against generic background
    prompts, per patch, upsampled bilinearly to the slice.
    """

    def __init__(self, bundle: ClipBundle, template: str = TEMPLATE,
                 background=BACKGROUND_PROMPTS):
        self.bundle = bundle
        self.template = template
        self.background = tuple(background)
        self.name = f"clip:{bundle.spec}"
        self.classes = ()
        self.description = f"zero-shot dense CLIP similarity ({bundle.spec})"
        self._text_cache: dict[str, Any] = {}

    def _text(self, prompts):
        import torch

        key = tuple(prompts)
        if key not in self._text_cache:
            tokens = self.bundle.tokenizer([self.template.format(p) for p in prompts]).to(self.bundle.device)
            with torch.inference_mode():
                t = self.bundle.model.encode_text(tokens)
            self._text_cache[key] = torch.nn.functional.normalize(t.float(), dim=-1)
        return self._text_cache[key]

    def locate(self, slice2d: np.ndarray, prompt: str, allow_similar: bool = False) -> np.ndarray:
        import torch

        if not prompt or not prompt.strip():
            raise ValueError("empty text prompt")
        x, geometry = clip_input(slice2d, self.bundle)
        with torch.inference_mode():
            tok = _value_path_tokens(self.bundle.model, torch.from_numpy(x)[None].to(self.bundle.device))
            tok = torch.nn.functional.normalize(tok.float(), dim=-1)[0]
            text = self._text([prompt.strip(), *self.background])
            logits = 100.0 * tok @ text.T
            prob = logits.softmax(-1)[:, 0]
        grid = int(round(np.sqrt(prob.shape[0])))
        pmap = prob.reshape(1, 1, grid, grid)
        s = self.bundle.image_size
        up = torch.nn.functional.interpolate(pmap, size=(s, s), mode="bilinear", align_corners=False)[0, 0]
        return np.clip(from_model_input(up.cpu().numpy(), geometry), 0.0, 1.0)
