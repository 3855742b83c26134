"""Train the CLIP region localizer (``xaiclip train-localizer``) and evaluate localizers.

Data: labelled axial slices (phantom seeds or the user's NIfTI image/label
pairs, FLARE22-style). Loss: multi-class Dice + cross-entropy. The CLIP
encoders are frozen by default (the paper's setting); the tiny shipped model
trains them too, since it starts from random weights.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ..metrics import dice
from ..phantom import ORGAN_NAMES
from .data import (SliceSet, augment_intensity, collect_slices, heldout_organ_slices, mean_per_organ,
                   phantom_volumes, present)

__all__ = ["evaluate_localizer", "train_localizer"]

TRAIN_SEEDS = tuple(range(200, 216))
EVAL_SEEDS = (900, 901)
EVAL_ORGANS = {1: "liver", 3: "spleen", 2: "right kidney", 13: "left kidney"}


def _class_index(slices: SliceSet, classes: list[str], label_of: dict[str, int]) -> np.ndarray:
    """Label images -> class index images (0 = background, unknown labels too)."""
    lut = np.zeros(256, np.int64)
    for k, name in enumerate(classes):
        if k and name in label_of:
            lut[label_of[name]] = k
    return lut[slices.labels]


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(a)
    h, w = a.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = a[..., ys, xs]
    return out


def _sample(slices, targets, batch, mean, std, rng):
    xs, ys = [], []
    for i in rng.integers(0, len(slices), batch):
        img = present(slices.images[i], slices.modality[i], rng)
        lo, hi = float(img.min()), float(img.max())
        unit = augment_intensity((img - lo) / max(hi - lo, 1e-8), rng)
        tgt = targets[i]
        dy, dx = rng.integers(-12, 13, 2)  # no flips: left and right organs must stay apart
        unit, tgt = _shift(unit, dy, dx), _shift(tgt, dy, dx)
        xs.append((unit[None] - mean) / std)
        ys.append(tgt)
    return np.stack(xs).astype(np.float32), np.stack(ys)


def _loss(logits, target, k):
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target)
    p = logits.softmax(1)
    onehot = F.one_hot(target, k).permute(0, 3, 1, 2).float()
    inter = (p * onehot).sum((0, 2, 3))
    denom = p.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice_loss = 1 - ((2 * inter + 1) / (denom + 1)).mean()
    return ce + dice_loss


def train_localizer(out: str | Path, clip_spec: str = "xaiclip-tiny", classes=None, label_of=None,
                    cases=None, steps: int = 2000, batch: int = 16, lr: float = 1e-3,
                    freeze_clip: bool | None = None, seed: int = 0, seeds=TRAIN_SEEDS,
                    modalities=("ct", "mr"), layers=(1, 3, 5), n_ctx: int = 8, width: int = 64,
                    threads: int | None = None, eval_seeds=EVAL_SEEDS, log=print) -> dict:
    """Train a region localizer and save it to ``out``; returns the model card.

    Parameters
    ----------
    clip_spec : open_clip spec (see :func:`~napari_xaiclip.models.clip.create_clip`).
    classes : organ names (Background is added first). Default: the phantom's organs.
    label_of : organ name -> label value in the label files. Default: FLARE22 numbering.
    cases : iterable of cases from ``nifti_volumes``; default: phantom seeds ``seeds``.
    freeze_clip : keep the CLIP encoders fixed. Default: frozen, except for ``xaiclip-tiny``.
    """
    import torch

    from .clip import create_clip
    from .localizer import RegionLocalizerNet, TrainedLocalizer, save_trained_localizer

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    label_of = label_of or {v: k for k, v in ORGAN_NAMES.items()}
    organ_list = list(classes or [ORGAN_NAMES[k] for k in sorted(ORGAN_NAMES)])
    unknown = [c for c in organ_list if c not in label_of]
    if unknown:
        raise ValueError(f"no label value for classes {unknown}; give them as VALUE:NAME")
    all_classes = ["background"] + organ_list
    bundle = create_clip(clip_spec, device="cpu")
    tiny = clip_spec.startswith("xaiclip-tiny")
    freeze = (not tiny) if freeze_clip is None else freeze_clip
    net = RegionLocalizerNet(bundle.model, bundle.tokenizer, all_classes, layers, n_ctx, width)
    for p in net.clip.parameters():
        p.requires_grad_(not freeze)
    t0 = time.time()
    slices = collect_slices(cases if cases is not None else phantom_volumes(seeds, modalities), bundle.image_size)
    targets = _class_index(slices, all_classes, label_of)
    log(f"{len(slices)} slices, classes {all_classes} ({time.time() - t0:.0f} s to prepare)")
    mean = np.asarray(bundle.mean, np.float32)[:, None, None]
    std = np.asarray(bundle.std, np.float32)[:, None, None]
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 30)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    net.train()
    t_train, running = time.time(), None
    for step in range(steps):
        x, y = _sample(slices, targets, batch, mean, std, rng)
        loss = _loss(net(torch.from_numpy(x)), torch.from_numpy(y), len(all_classes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step}/{steps} loss {running:.4f} ({time.time() - t_train:.0f} s)")
    net.eval()
    train_seconds = time.time() - t_train
    loc = TrainedLocalizer(net, bundle, name=str(out))
    scores = evaluate_localizer(loc, eval_seeds) if eval_seeds and cases is None else {}
    clip_config = None
    if tiny:
        from .clip import CONFIG_DIR

        import json

        clip_config = json.loads((CONFIG_DIR / "xaiclip-tiny.json").read_text())
    card = {
        "model": "CLIP region localizer (adapters + CoOp prompts + MapMaker U-Net)"
                 + (", phantom-trained demo model on a tiny open_clip ViT" if tiny else ""),
        "clip": clip_spec, "clip_frozen": freeze, "classes": all_classes, "layers": list(layers),
        "n_ctx": n_ctx, "width": width,
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "trainable_parameters": int(sum(p.numel() for p in params)),
        "training": {"data": "phantom" if cases is None else "user NIfTI pairs",
                     "seeds": list(seeds) if cases is None else None, "modalities": list(modalities),
                     "slices": len(slices), "steps": steps, "batch": batch, "lr": lr, "seed": seed,
                     "seconds": round(train_seconds, 1), "torch_threads": torch.get_num_threads()},
        "heldout": {"seeds": list(eval_seeds), "roi_dice": scores,
                    "protocol": "Dice of roi_from_map(locate(slice, organ)) (sigma 2, threshold 0.5) against the "
                                "organ label, mean over CT slices where the organ has >= 200 px"},
    }
    save_trained_localizer(out, net, clip_spec, clip_config, include_clip=not freeze, card=card,
                           n_ctx=n_ctx, width=width)
    log(f"held-out ROI Dice: {scores}")
    return card


def evaluate_localizer(loc, seeds=EVAL_SEEDS, modality: str = "ct", organs=EVAL_ORGANS,
                       shape=(40, 256, 256), min_pixels: int = 200, every: int = 1) -> dict:
    """Mean ROI Dice per organ: ``roi_from_map(loc.locate(slice, organ))`` against the label."""
    from ..roi import roi_from_map

    per: dict = {name: [] for name in organs.values()}
    for slice2d, m, name in heldout_organ_slices(seeds, modality, organs, shape, min_pixels, every):
        per[name].append(dice(roi_from_map(loc.locate(slice2d, name)), m))
    return mean_per_organ(per)
