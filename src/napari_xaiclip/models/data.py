"""Training and evaluation slices for the project's models: phantom volumes or
the user's NIfTI image/label pairs, resized to the model input, with the
augmentations both trainers share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..phantom import ORGAN_NAMES, make_phantom
from ..preprocess import CT_WINDOWS, enhance, mr_normalize, to_model_input, window

__all__ = ["SliceSet", "augment_intensity", "collect_slices", "heldout_organ_slices", "jitter_box",
           "mask_box", "mean_per_organ", "nifti_volumes", "phantom_volumes", "present"]


@dataclass
class SliceSet:
    """Slices at model size: ``images`` (N, S, S) float32, ``labels`` (N, S, S) uint8,
    ``modality`` (N,) "ct"/"mr", ``source`` (N,) case name, and the label names."""

    images: np.ndarray
    labels: np.ndarray
    modality: np.ndarray
    source: np.ndarray
    names: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)


def phantom_volumes(seeds, modalities=("ct", "mr"), shape=(40, 256, 256)):
    """Yield (name, image (z, y, x), labels, names, modality) for phantom seeds."""
    for seed in seeds:
        for modality in modalities:
            vol, labels, names = make_phantom(shape=shape, modality=modality, seed=int(seed))
            yield f"phantom-{modality}-{seed}", vol.data, labels, names, modality


def nifti_volumes(images, labels, modality="ct", names=None):
    """Yield cases from NIfTI image/label file pairs (FLARE22-style numbering by default)."""
    from ..io import load_volume
    from ..labels import load_label_volume

    if len(images) != len(labels):
        raise ValueError(f"{len(images)} image files but {len(labels)} label files")
    for img_path, lab_path in zip(images, labels):
        img = load_volume(img_path)
        lab = load_label_volume(lab_path, img)
        if lab.max(initial=0) > 255:
            raise ValueError(f"{lab_path}: label {int(lab.max())} is above 255, more than training handles")
        yield str(img_path), img.data, lab.astype(np.uint8), names or ORGAN_NAMES, modality


def collect_slices(cases, size: int = 256, min_pixels: int = 1, every: int = 1) -> SliceSet:
    """Axial slices holding at least one labelled organ of ``min_pixels``, resized to ``size``."""
    images, labels, modality, source = [], [], [], []
    names = {}
    for name, vol, lab, case_names, mod in cases:
        names.update(case_names)
        for z in range(0, vol.shape[0], every):
            counts = np.bincount(lab[z].ravel(), minlength=2)[1:]
            if counts.size == 0 or counts.max() < min_pixels:
                continue
            img, _ = to_model_input(vol[z], size)
            seg, _ = to_model_input(lab[z], size, nearest=True)
            images.append(img.astype(np.float32))
            labels.append(seg.astype(np.uint8))
            modality.append(mod)
            source.append(name)
    if not images:
        raise ValueError("no labelled slices found in the training data")
    return SliceSet(np.stack(images), np.stack(labels), np.array(modality), np.array(source), names)


def present(image: np.ndarray, modality: str, rng: np.random.Generator) -> np.ndarray:
    """The slice as a user might hand it over: raw, windowed, enhanced (CT) or raw/normalised (MR)."""
    if modality == "ct":
        choice = rng.integers(0, 4)
        if choice == 0:
            return image
        if choice == 1:
            return window(image, *CT_WINDOWS["abdomen"]).astype(np.float32)
        if choice == 2:
            level, width = CT_WINDOWS["liver"] if rng.random() < 0.5 else (rng.uniform(0, 80), rng.uniform(250, 600))
            return window(image, level, width).astype(np.float32)
        return enhance(image).astype(np.float32)
    return image if rng.random() < 0.5 else mr_normalize(image).astype(np.float32)


def augment_intensity(unit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gamma, contrast and noise on an image in [0, 1]."""
    out = np.clip(unit, 0, 1) ** rng.uniform(0.7, 1.4)
    out = out * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
    if rng.random() < 0.3:
        out = out + rng.normal(0, rng.uniform(0.005, 0.03), out.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight bounding box (x0, y0, x1, y1) of a mask, x1/y1 exclusive; ``None`` if empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


def jitter_box(box: np.ndarray, size: int, rng: np.random.Generator, amount: float = 0.1,
               pixels: float = 4.0) -> np.ndarray:
    """Move each side by up to ``amount`` of the box size plus ``pixels``, like a user's drawn box."""
    w, h = box[2] - box[0], box[3] - box[1]
    scale = np.array([w, h, w, h]) * amount + pixels
    out = box + rng.uniform(-1, 1, 4) * scale
    out = np.clip(out, 0, size)
    out[2] = max(out[2], out[0] + 2)
    out[3] = max(out[3], out[1] + 2)
    return out


def heldout_organ_slices(seeds, modality: str, organs: dict, shape=(40, 256, 256), min_pixels: int = 200,
                         every: int = 1):
    """Yield ``(slice2d, organ_mask, organ_name)`` for every held-out phantom slice where the organ
    has at least ``min_pixels`` pixels (the evaluation protocol of the model cards)."""
    for s in seeds:
        vol, labels, _ = make_phantom(shape=shape, modality=modality, seed=int(s))
        for z in range(0, shape[0], every):
            for lab, name in organs.items():
                m = labels[z] == lab
                if m.sum() >= min_pixels:
                    yield vol.data[z], m, name


def mean_per_organ(scores: dict) -> dict:
    """``{organ: [scores]}`` -> rounded means, with the slice counts under ``"n_slices"``."""
    out = {k: (round(float(np.mean(v)), 4) if v else None) for k, v in scores.items()}
    out["n_slices"] = {k: len(v) for k, v in scores.items()}
    return out
