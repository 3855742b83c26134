"""Train the tiny SAM demo segmenter (``xaiclip train-segmenter``) and evaluate segmenters.

Training: phantom CT and MR slices of several seeds (or the user's NIfTI
pairs), one jittered box prompt per labelled organ, Dice + BCE, AdamW with
warm-up and cosine decay, fixed seed. Augmentations: how the slice is
presented (raw, windowed, enhanced), gamma/contrast/noise, flips, box jitter.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes
from ..metrics import dice
from .data import (SliceSet, augment_intensity, collect_slices, heldout_organ_slices, jitter_box, mask_box,
                   mean_per_organ, phantom_volumes, present)

__all__ = ["evaluate_segmenter", "save_sam_weights", "train_segmenter"]

TRAIN_SEEDS = tuple(range(100, 116))
EVAL_SEEDS = (900, 901)
EVAL_ORGANS = {1: "liver", 3: "spleen", 2: "right kidney", 13: "left kidney"}


def _organ_items(slices: SliceSet, min_pixels: int) -> list[tuple[int, int]]:
    items = []
    for i, lab in enumerate(slices.labels):
        counts = np.bincount(lab.ravel(), minlength=256)
        items += [(i, int(k)) for k in np.nonzero(counts >= min_pixels)[0] if k != 0]
    return items


def _sample_batch(slices: SliceSet, items, batch: int, size: int, rng):
    xs, boxes, ys = [], [], []
    for j in rng.integers(0, len(items), batch):
        i, organ = items[j]
        img = present(slices.images[i], slices.modality[i], rng)
        lo, hi = float(img.min()), float(img.max())
        unit = augment_intensity((img - lo) / max(hi - lo, 1e-8), rng)
        mask = slices.labels[i] == organ
        if rng.random() < 0.5:
            unit, mask = unit[:, ::-1], mask[:, ::-1]
        if rng.random() < 0.2:
            unit, mask = unit[::-1], mask[::-1]
        xs.append(np.repeat(np.ascontiguousarray(unit)[None], 3, 0))
        boxes.append(jitter_box(mask_box(mask), size, rng))
        ys.append(np.ascontiguousarray(mask, dtype=np.float32))
    return np.stack(xs), np.stack(boxes).astype(np.float32), np.stack(ys)


def _loss(logits, target):
    import torch
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2)) + target.sum((1, 2)) + 1)
    return bce + dice.mean()


def save_sam_weights(path, sam, config: dict, mode: str, card: dict) -> None:
    """Save a SAM-architecture model in the project's format (fp16 weights, config, model card)."""
    import torch

    state = {k: (v.half() if v.is_floating_point() else v) for k, v in sam.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"format": "xaiclip-sam/1", "config": config, "mode": mode, "state_dict": state,
                "card": card}, buf)
    atomic_write_bytes(path, buf.getvalue())


def train_segmenter(out: str | Path, steps: int = 3000, batch: int = 16, lr: float = 6e-4,
                    seed: int = 0, seeds=TRAIN_SEEDS, modalities=("ct", "mr"), cases=None,
                    threads: int | None = None, eval_seeds=EVAL_SEEDS, init: str | Path | None = None,
                    log=print) -> dict:
    """Train a tiny SAM and write it to ``out`` with its model card; returns the card.

    ``cases`` (an iterable as from :func:`~napari_xaiclip.models.data.nifti_volumes`)
    replaces the phantom seeds when given. ``init`` continues from a model saved
    by this function (fine-tuning; its training record is kept in the card).
    """
    import torch
    import torch.nn.functional as F

    from .sam import TINY_CONFIG, build_sam, decode_masks

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    size = TINY_CONFIG["image_size"]
    t0 = time.time()
    slices = collect_slices(cases if cases is not None else phantom_volumes(seeds, modalities), size)
    items = _organ_items(slices, min_pixels=30)
    log(f"{len(slices)} slices, {len(items)} organ prompts ({time.time() - t0:.0f} s to prepare)")
    sam = build_sam(**TINY_CONFIG)
    previous = None
    if init is not None:
        obj = torch.load(str(init), map_location="cpu", weights_only=True)
        sam.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in obj["state_dict"].items()})
        previous = obj.get("card", {}).get("training")
        log(f"continuing from {init}")
    sam.train()
    opt = torch.optim.AdamW(sam.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 30)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    t_train = time.time()
    running = None
    for step in range(steps):
        x, boxes, y = (torch.from_numpy(a) for a in _sample_batch(slices, items, batch, size, rng))
        emb = sam.image_encoder(x)
        sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        low = decode_masks(sam, emb, sparse, dense)
        logits = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
        loss = _loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step}/{steps} loss {running:.4f} lr {sched.get_last_lr()[0]:.2e} "
                f"({time.time() - t_train:.0f} s)")
    sam.eval()
    train_seconds = time.time() - t_train
    from .sam import SamSegmenter

    seg = SamSegmenter(sam, mode="medsam", name="default", device="cpu")
    scores = evaluate_segmenter(seg, eval_seeds, modalities) if eval_seeds else {}
    card = {
        "model": "tiny SAM (segment_anything classes), phantom-trained demo model",
        "config": TINY_CONFIG, "preprocessing": "medsam (3 channels, stretch to 256 px, min-max to [0, 1])",
        "parameters": int(sum(p.numel() for p in sam.parameters())),
        "training": {"data": "phantom" if cases is None else "user NIfTI pairs",
                     "seeds": list(seeds) if cases is None else None, "modalities": list(modalities),
                     "slices": len(slices), "organ_prompts": len(items), "steps": steps, "batch": batch,
                     "lr": lr, "seed": seed, "seconds": round(train_seconds, 1),
                     "torch_threads": torch.get_num_threads(), "previous": previous},
        "heldout": {"seeds": list(eval_seeds), "dice": scores,
                    "protocol": "mean Dice over slices where the organ has >= 200 px, box = ground-truth bounding box, raw slice"},
        "gflops_per_forward": round(seg.gflops, 4),
    }
    save_sam_weights(out, sam, TINY_CONFIG, "medsam", card)
    log(json.dumps(card["heldout"], indent=1))
    return card


def evaluate_segmenter(seg, seeds=EVAL_SEEDS, modalities=("ct", "mr"), organs=EVAL_ORGANS,
                       shape=(40, 256, 256), min_pixels: int = 200, every: int = 1) -> dict:
    """Mean Dice per modality and organ with the ground-truth bounding box as the prompt."""
    out: dict = {}
    for modality in modalities:
        per: dict = {name: [] for name in organs.values()}
        for slice2d, m, name in heldout_organ_slices(seeds, modality, organs, shape, min_pixels, every):
            per[name].append(dice(seg.segment(slice2d, box=mask_box(m)) > 0.5, m))
        out[modality] = mean_per_organ(per)
    return out
