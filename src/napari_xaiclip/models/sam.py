"""SAM and MedSAM segmenters on ``segment_anything``, and the tiny SAM the project trains.

Two preprocessing recipes:

- ``"medsam"``: grey slice to 3 channels, stretched to the square input
  (1024 for MedSAM), min-max to [0, 1], no ImageNet normalisation; box scaled
  by the same factors; sigmoid and bilinear back to the slice.
- ``"sam"``: SamPredictor's: min-max to 0..255, longest side resized to the
  input, ImageNet mean/std, zero padding bottom/right.

Batched prediction runs the image encoder on B images and the mask decoder on
B embeddings with the prompt embedded once (upstream ``MaskDecoder`` repeats
image embeddings per prompt, so :func:`decode_masks` calls its parts so that
the shapes match).
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np

from .base import Prompt, Segmenter, check_zip_archive, pick_device

__all__ = [
    "SAM_VARIANTS",
    "SamSegmenter",
    "build_sam",
    "decode_masks",
    "load_sam_state_dict",
]

#: encoder embed dim, depth, heads, global attention blocks (segment_anything's build_sam)
SAM_VARIANTS = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}

#: The shipped demo model's architecture: same classes, 256 px input, about 2 M parameters.
TINY_CONFIG = dict(image_size=256, patch_size=16, embed_dim=128, depth=4, num_heads=4,
                   global_attn_indexes=(1, 3), window_size=8, prompt_embed_dim=128,
                   decoder_mlp_dim=512, decoder_heads=8, iou_hidden=128)


def build_sam(variant: str | None = None, **config):
    """A ``segment_anything.Sam`` of a named variant (1024 px) or of an explicit config.

    ``config`` keys: image_size, patch_size, embed_dim, depth, num_heads,
    global_attn_indexes, window_size, prompt_embed_dim, decoder_mlp_dim,
    decoder_heads, iou_hidden. Weights are random.
    """
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    cfg = dict(image_size=1024, patch_size=16, window_size=14, prompt_embed_dim=256,
               decoder_mlp_dim=2048, decoder_heads=8, iou_hidden=256)
    if variant is not None:
        if variant not in SAM_VARIANTS:
            raise ValueError(f"unknown SAM variant {variant!r}; choose from {sorted(SAM_VARIANTS)}")
        cfg.update(SAM_VARIANTS[variant])
    cfg.update(config)
    missing = {"embed_dim", "depth", "num_heads", "global_attn_indexes"} - set(cfg)
    if missing:
        raise ValueError(f"SAM config lacks {sorted(missing)}")
    grid = cfg["image_size"] // cfg["patch_size"]
    dim = cfg["prompt_embed_dim"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg["depth"], embed_dim=cfg["embed_dim"], img_size=cfg["image_size"], mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=cfg["num_heads"],
            patch_size=cfg["patch_size"], qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=tuple(cfg["global_attn_indexes"]), window_size=cfg["window_size"],
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                     input_image_size=(cfg["image_size"],) * 2, mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=cfg["decoder_mlp_dim"],
                                          num_heads=cfg["decoder_heads"]),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=cfg["iou_hidden"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    return sam


def load_sam_state_dict(path: str | Path) -> dict:
    """Read a SAM/MedSAM checkpoint on the CPU: a plain state dict or a training
    checkpoint (``{"model": ...}`` / ``{"state_dict": ...}``), ``module.`` prefixes removed."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: no such file")
    check_zip_archive(path, "checkpoint")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {path}: cannot be read as a PyTorch file "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"checkpoint {path}: holds no state dict (got {type(obj).__name__})")
    state = {}
    for k, v in obj.items():
        k = k[len("module."):] if k.startswith("module.") else k
        state[k] = v
    return state


def _guess_variant(state: dict) -> str | None:
    w = state.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return None
    for name, cfg in SAM_VARIANTS.items():
        if w.shape[0] == cfg["embed_dim"]:
            return name
    return None


def load_into(sam, state: dict, what: str) -> None:
    """``load_state_dict`` with a readable error for mismatched architectures."""
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        guess = _guess_variant(state)
        hint = f" (the checkpoint looks like {guess})" if guess else ""
        raise ValueError(f"{what}: weights do not fit the architecture{hint}: "
                         + " ".join(lines[1:4])[:400]) from None


def decode_masks(sam, image_embeddings, sparse, dense):
    """Mask logits (B, 1, h, w) of ``sam.mask_decoder`` for B images and one or B prompts.

    Same computation as ``MaskDecoder.predict_masks`` with single-mask output,
    but image embeddings are not repeated per prompt: a prompt of batch 1 is
    broadcast to the B images.
    """
    import torch

    dec = sam.mask_decoder
    b = image_embeddings.shape[0]
    if sparse.shape[0] not in (1, b):
        raise ValueError(f"{sparse.shape[0]} prompts for {b} images")
    output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse), dim=1)
    tokens = tokens.expand(b, -1, -1)
    src = image_embeddings + dense
    pos_src = sam.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
    _, c, h, w = src.shape
    hs, src = dec.transformer(src, pos_src, tokens)
    mask_token_out = hs[:, 1, :]
    src = src.transpose(1, 2).reshape(b, c, h, w)
    upscaled = dec.output_upscaling(src)
    hyper = dec.output_hypernetworks_mlps[0](mask_token_out)
    _, c2, h2, w2 = upscaled.shape
    return (hyper.unsqueeze(1) @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, 1, h2, w2)


class SamSegmenter(Segmenter):
    """A ``segment_anything.Sam`` behind the segmenter protocol.

    Parameters
    ----------
    sam : segment_anything.Sam
    mode : {"medsam", "sam"}
        Preprocessing recipe (see the module docstring).
    name : spec shown in reports.
    device : "auto", "cpu", "cuda", ...
    autocast : run under ``torch.autocast`` on GPU (bfloat16) for speed.
    """

    in_channels = 3

    def __init__(self, sam, mode: str = "medsam", name: str = "sam", device="auto",
                 autocast: bool = False, description: str = ""):
        if mode not in ("medsam", "sam"):
            raise ValueError(f"mode must be 'medsam' or 'sam', got {mode!r}")
        self.device = pick_device(device)
        self.module = sam.to(self.device).eval()
        self.mode = mode
        self.keep_aspect = mode == "sam"
        self.input_size = int(sam.image_encoder.img_size)
        self.name = name
        self.autocast = autocast and self.device.type == "cuda"
        self.description = description
        self._gflops = None

    def normalize(self, image: np.ndarray) -> np.ndarray:
        img = image.astype(np.float64)  # float32 max - min can overflow
        lo, hi = float(img.min()), float(img.max())
        unit = ((img - lo) / max(hi - lo, 1e-8)).astype(np.float32)
        if self.mode == "medsam":
            return np.repeat(unit[None], 3, axis=0)
        mean = np.array([123.675, 116.28, 103.53], np.float32)[:, None, None]
        std = np.array([58.395, 57.12, 57.375], np.float32)[:, None, None]
        return (np.round(unit * 255.0)[None] - mean) / std

    def _encode(self, prompt: Prompt):
        import torch

        pe = self.module.prompt_encoder
        boxes = points = None
        if prompt.box is not None:
            boxes = torch.as_tensor(prompt.box, dtype=torch.float32, device=self.device)[None]
        if prompt.points is not None:
            coords = torch.as_tensor(prompt.points, dtype=torch.float32, device=self.device)[None]
            labels = torch.as_tensor(prompt.point_labels, dtype=torch.int64, device=self.device)[None]
            points = (coords, labels)
        with torch.inference_mode():
            sparse, dense = pe(points=points, boxes=boxes, masks=None)
        return sparse.clone(), dense.clone()

    def embed(self, images):
        return self.module.image_encoder(images)

    def decode(self, embeddings, prompt: Prompt):
        import torch.nn.functional as F

        sparse, dense = prompt.encoded
        low = decode_masks(self.module, embeddings, sparse, dense)
        s = self.input_size
        return F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)[:, 0]

    def logits(self, images, prompt: Prompt):
        import torch

        prompt = self.as_prompt(prompt)
        if prompt.encoded is None:
            prompt.encoded = self._encode(prompt)
        if images.ndim != 4 or images.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(f"expected images of shape (B, 3, {self.input_size}, {self.input_size}), "
                             f"got {tuple(images.shape)}")
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else nullcontext()
        with ctx:
            return self.decode(self.embed(images), prompt).float()


def sam_from_checkpoint(path: str, variant: str, mode: str, device="auto",
                        name: str | None = None) -> SamSegmenter:
    """Build ``variant`` and load a checkpoint into it."""
    sam = build_sam(variant)
    load_into(sam, load_sam_state_dict(path), f"checkpoint {path}")
    return SamSegmenter(sam, mode=mode, name=name or f"{mode}:{path}", device=device,
                        description=f"{'MedSAM' if mode == 'medsam' else 'SAM'} {variant} from {path}")
