"""napari sample data: the abdominal CT phantom (image and organ labels)."""

from __future__ import annotations

from ._reader import window_kwargs
from .io import layer_geometry
from .phantom import make_phantom

__all__ = ["make_phantom_sample", "make_mr_phantom_sample"]


def _sample(modality: str):
    vol, labels, names = make_phantom(shape=(48, 256, 256), modality=modality, seed=0)
    geometry = layer_geometry(vol)
    name = f"{modality.upper()} phantom"
    image_kwargs = {"name": name, "colormap": "gray", **geometry, **window_kwargs(vol, geometry)}
    label_kwargs = {"name": f"{name} labels", **layer_geometry(vol), "opacity": 0.4}
    label_kwargs["metadata"]["label_names"] = names
    label_kwargs["visible"] = False
    return [(vol.data, image_kwargs, "image"), (labels, label_kwargs, "labels")]


def make_phantom_sample():
    """Abdominal CT phantom (seed 0, 48 x 256 x 256) with FLARE22 organ labels."""
    return _sample("ct")


def make_mr_phantom_sample():
    """Abdominal T1-like MR phantom (seed 0) with organ labels."""
    return _sample("mr")
