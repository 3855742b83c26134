"""``xaiclip demo``: the main job headless, on the phantom with the default models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import save_volume
from .phantom import make_phantom
from .preprocess import enhance

__all__ = ["run_demo"]


def run_demo(out: Path, slice_index: int | None = None, fast: bool = False, seed: int = 0) -> dict:
    """Write the phantom, its labels and an enhanced slice into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vol, labels, names = make_phantom(seed=seed)
    z = int(np.argmax((labels == 1).sum((1, 2)))) if slice_index is None else int(slice_index)
    save_volume(out / "phantom_ct.nii.gz", vol.data, like=vol)
    save_volume(out / "phantom_labels.nii.gz", labels, like=vol)
    enhanced = np.zeros(vol.data.shape, np.uint8)
    enhanced[z] = enhance(vol.data[z])
    save_volume(out / "enhanced_slice.nii.gz", enhanced, like=vol)
    print(f"wrote {out}/phantom_ct.nii.gz, phantom_labels.nii.gz and enhanced_slice.nii.gz (slice {z})")
    return {"slice": z}
