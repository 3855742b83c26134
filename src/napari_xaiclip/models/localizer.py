"""The trained CLIP region localizer of the XAI-CLIP paper (after MediCLIP).

Architecture, for K classes (Background plus organs):

- CLIP vision encoder: patch tokens from several blocks, each through a 1x1
  conv adapter to the decoder width, summed;
- CoOp prompts ``[V1]...[VM][CLASS].`` with M learnable context vectors shared
  by the classes, encoded by the CLIP text encoder;
- MapMaker: prompt embeddings projected to the decoder width; per-class cosine
  similarity maps with the visual features; [features, similarities] decoded by
  a small U-Net whose skips come from a light conv stem on the image; one
  output channel per class.

Trained with multi-class Dice + cross-entropy (paper eq. 9-11).

CLIPs whose text tower is not open_clip's own transformer (BiomedCLIP's
PubMedBERT, other Hugging Face text models) take fixed prompt embeddings
(:class:`FixedPrompts`) instead of learnable context.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io import atomic_write_bytes
from ..preprocess import from_model_input
from .base import Localizer, PromptResolution, check_zip_archive, pick_device
from .clip import ClipBundle, clip_input, create_clip, patch_tokens, text_module

__all__ = ["PromptLearner", "RegionLocalizerNet", "TrainedLocalizer", "load_trained_localizer",
           "save_trained_localizer"]

SYNONYMS = {
    "hepatic": "liver", "hepar": "liver", "splenic": "spleen", "lien": "spleen",
    "renal right": "right kidney", "kidney right": "right kidney", "r kidney": "right kidney",
    "renal left": "left kidney", "kidney left": "left kidney", "l kidney": "left kidney",
    "gastric": "stomach", "pancreatic": "pancreas", "abdominal aorta": "aorta",
}


def _conv_block(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(min(8, cout), cout), nn.GELU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(min(8, cout), cout), nn.GELU())


class PromptLearner(nn.Module):
    """CoOp: M learnable context vectors before each class name, through the CLIP text encoder."""

    def __init__(self, clip_model, tokenizer, classes, n_ctx: int = 8):
        super().__init__()
        tm = text_module(clip_model)
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(torch.randn(n_ctx, tm.token_embedding.embedding_dim) * 0.02)
        texts = [" ".join(["X"] * n_ctx) + f" {c}." for c in classes]
        self.register_buffer("tokens", tokenizer(texts), persistent=False)

    def forward(self, clip_model) -> torch.Tensor:
        """(K, embed_dim) prompt embeddings."""
        tm = text_module(clip_model)
        tok = self.tokens
        x = tm.token_embedding(tok)
        k = x.shape[0]
        ctx = self.ctx.unsqueeze(0).expand(k, -1, -1).to(x.dtype)
        x = torch.cat([x[:, :1], ctx, x[:, 1 + self.n_ctx:]], 1)
        x = x + tm.positional_embedding[: x.shape[1]].to(x.dtype)
        x = tm.transformer(x, attn_mask=tm.attn_mask)
        x = tm.ln_final(x)
        x = x[torch.arange(k, device=x.device), tok.argmax(dim=-1)]  # end-of-text token
        proj = tm.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj


class FixedPrompts(nn.Module):
    """Prompt embeddings of ``"a CT image of the {class}."`` computed once by any CLIP text tower.

    Used when the text tower is not open_clip's own transformer (e.g. BiomedCLIP's
    PubMedBERT), where learnable context cannot be injected; the MapMaker's
    projection still learns.
    """

    def __init__(self, clip_model, tokenizer, classes):
        super().__init__()
        with torch.no_grad():
            emb = clip_model.encode_text(tokenizer([f"a CT image of the {c}." for c in classes])).float()
        self.register_buffer("embeddings", emb, persistent=False)

    def forward(self, clip_model) -> torch.Tensor:
        return self.embeddings


def _has_open_clip_text(clip_model) -> bool:
    try:
        text_module(clip_model)
        return True
    except ValueError:
        return False


class RegionLocalizerNet(nn.Module):
    """CLIP + adapters + CoOp prompts + MapMaker U-Net: (B, 3, S, S) -> (B, K, S, S) logits.

    Parameters
    ----------
    clip_model, tokenizer : an open_clip model with a ViT vision tower and its tokenizer.
    classes : class names, Background first.
    layers : vision blocks whose patch tokens are used. Default: (1, 3, 5).
    n_ctx : learnable context vectors. Default: 8.
    width : decoder width. Default: 64.
    """

    def __init__(self, clip_model, tokenizer, classes, layers=(1, 3, 5), n_ctx: int = 8, width: int = 64):
        super().__init__()
        self.clip = clip_model
        self.classes = list(classes)
        self.layers = list(layers)
        with torch.no_grad():
            probe = patch_tokens(clip_model, torch.zeros(1, 3, *_input_hw(clip_model)), self.layers[:1])[0]
        self.coop = _has_open_clip_text(clip_model)
        self.prompts = (PromptLearner(clip_model, tokenizer, self.classes, n_ctx) if self.coop
                        else FixedPrompts(clip_model, tokenizer, self.classes))
        self.adapters = nn.ModuleList(nn.Conv2d(probe.shape[1], width, 1) for _ in self.layers)
        self.text_proj = nn.Linear(_embed_dim(clip_model), width)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))
        k = len(self.classes)
        self.stem = nn.ModuleList([_conv_block(3, 16), _conv_block(16, 24), _conv_block(24, 32)])
        self.bottleneck = _conv_block(width + k, width)
        self.up = nn.ModuleList([_conv_block(width + 32, 48), _conv_block(48 + 24, 32), _conv_block(32 + 16, 24)])
        self.head = nn.Conv2d(24, k, 1)

    def text_features(self) -> torch.Tensor:
        """(K, width) unit-norm projected prompt embeddings."""
        return F.normalize(self.text_proj(self.prompts(self.clip).float()), dim=-1)

    def forward(self, images: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        tokens = patch_tokens(self.clip, images, self.layers)
        feat = sum(a(t.float()) for a, t in zip(self.adapters, tokens))
        text = self.text_features() if text is None else text
        sim = torch.einsum("bchw,kc->bkhw", F.normalize(feat, dim=1), text) * self.logit_scale.exp()
        x = self.bottleneck(torch.cat([feat, sim], 1))
        skips, s = [], images
        for block in self.stem:  # light image stem at 1/2, 1/4, 1/8 for sharp edges
            s = block(F.avg_pool2d(s, 2))
            skips.append(s)
        for block, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        x = F.interpolate(x, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(x)


def _input_hw(model) -> tuple[int, int]:
    size = getattr(model.visual, "image_size", 224)
    size = size if isinstance(size, (tuple, list)) else (size, size)
    return int(size[0]), int(size[1])


def _embed_dim(model) -> int:
    """Width of the joint embedding (what encode_text returns)."""
    with torch.no_grad():
        return int(model.encode_text(torch.zeros(1, _context_length(model), dtype=torch.long)).shape[-1])


def _context_length(model) -> int:
    return int(getattr(model, "context_length", None) or getattr(getattr(model, "text", None), "context_length", 77))


def normalize_prompt(text: str) -> str:
    t = re.sub(r"[^a-z0-9 ]+", " ", text.lower())
    t = re.sub(r"\b(the|a|an|of|organ|region|ct|mr|mri|image)\b", " ", t)
    return re.sub(r"\s+", " ", t).strip()


class TrainedLocalizer(Localizer):
    """The trained localizer behind the :class:`Localizer` protocol.

    ``locate(slice2d, prompt)`` returns the softmax probability of the class the
    prompt refers to, at the slice's resolution. A free-text prompt maps to a
    class exactly, by synonym or by its words; anything else is an error unless
    text-similarity matching is allowed (see :meth:`resolve_prompt`).
    """

    def __init__(self, net, bundle: ClipBundle, name: str = "localizer", description: str = "",
                 card: dict | None = None):
        self.net = net.to(bundle.device).eval()
        self.bundle = bundle
        self.name = name
        self.classes = tuple(net.classes)
        self.description = description
        self.card = card or {}
        self._text = None

    @property
    def organ_classes(self) -> tuple[str, ...]:
        return tuple(c for c in self.classes if c.lower() != "background")

    def resolve_prompt(self, prompt: str, allow_similar: bool = False) -> PromptResolution:
        """Map a prompt to one of the trained classes: exactly, by a known synonym, or by its words.

        Any other prompt is a ValueError naming the classes, unless ``allow_similar``:
        then it maps to the nearest class by text-embedding similarity, which the
        returned :class:`PromptResolution` records (callers show it; never silent).
        """
        if not prompt or not prompt.strip():
            raise ValueError("empty text prompt")
        want = normalize_prompt(prompt)
        by_norm = {normalize_prompt(c): c for c in self.organ_classes}
        if want in by_norm:
            return PromptResolution(prompt.strip(), by_norm[want], "exact")
        if want in SYNONYMS and SYNONYMS[want] in by_norm:
            return PromptResolution(prompt.strip(), by_norm[SYNONYMS[want]], "synonym")
        words = {SYNONYMS.get(w, w) for w in want.split()}
        for norm, c in by_norm.items():
            if norm and set(norm.split()) <= words:
                return PromptResolution(prompt.strip(), c, "words")
        if not allow_similar:
            raise ValueError(f"the localizer {self.name!r} knows no class {prompt.strip()!r}; its classes: "
                             f"{', '.join(self.organ_classes)} (or allow text-similarity matching: --prompt-match similar)")
        model, tok = self.bundle.model, self.bundle.tokenizer
        with torch.inference_mode():
            t = torch.nn.functional.normalize(model.encode_text(tok([want] + list(self.organ_classes)).to(
                self.bundle.device)).float(), dim=-1)
        sims = (t[1:] @ t[0]).cpu().numpy()
        best = int(sims.argmax())
        return PromptResolution(prompt.strip(), self.organ_classes[best], "similarity", float(sims[best]))

    def probabilities(self, slice2d: np.ndarray):
        """(K, S, S) class probabilities at model input size and the InputGeometry."""
        x, geometry = clip_input(slice2d, self.bundle)
        with torch.inference_mode():
            if self._text is None:
                self._text = self.net.text_features()
            logits = self.net(torch.from_numpy(x)[None].to(self.bundle.device), self._text)
            return logits.softmax(1)[0].float().cpu().numpy(), geometry

    def locate(self, slice2d: np.ndarray, prompt: str, allow_similar: bool = False) -> np.ndarray:
        cls = self.resolve(prompt, allow_similar)
        probs, geometry = self.probabilities(slice2d)
        return np.clip(from_model_input(probs[self.classes.index(cls)], geometry), 0.0, 1.0)


def save_trained_localizer(path, net, clip_spec: str, clip_config: dict | None, include_clip: bool,
                           card: dict, n_ctx: int, width: int) -> None:
    """Save in the project's format: fp16 weights, the CLIP spec, classes, layers and the model card."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()
             if include_clip or not k.startswith("clip.")}
    buf = io.BytesIO()
    torch.save({"format": "xaiclip-localizer/1", "clip_spec": clip_spec, "clip_config": clip_config,
                "includes_clip": include_clip, "classes": list(net.classes), "layers": list(net.layers),
                "n_ctx": n_ctx, "width": width, "state_dict": state, "card": card}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_trained_localizer(path: str | Path, device="auto", name: str | None = None) -> TrainedLocalizer:
    """Load a localizer written by :func:`save_trained_localizer` (``xaiclip train-localizer``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"localizer {path}: no such file")
    check_zip_archive(path, "localizer")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"localizer {path}: not a readable PyTorch file ({type(exc).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != "xaiclip-localizer/1":
        raise ValueError(f"localizer {path}: not a localizer written by `xaiclip train-localizer`")
    bundle = create_clip(obj["clip_spec"], device="cpu", pretrained_ok=not obj["includes_clip"])
    net = RegionLocalizerNet(bundle.model, bundle.tokenizer, obj["classes"], obj["layers"], obj["n_ctx"],
                             obj["width"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in obj["state_dict"].items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if obj["includes_clip"] or not k.startswith("clip.")]
    if missing or unexpected:
        raise ValueError(f"localizer {path}: weights do not fit ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected, e.g. {(missing + unexpected)[:3]})")
    dev = pick_device(device)
    bundle.device = dev
    bundle.model.to(dev)
    return TrainedLocalizer(net, bundle, name=name or str(path),
                            description=obj.get("card", {}).get("model", "trained CLIP region localizer"),
                            card=obj.get("card", {}))
