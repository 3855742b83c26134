"""Explainers: one module per method, one entry point.

>>> from napari_xaiclip.explain import explain, iter_explain, METHODS   # doctest: +SKIP
>>> ex = explain("occlusion", seg, slice2d, box=box, roi=roi, seed=0)  # doctest: +SKIP

``roi=None`` explains the whole image (traditional); a boolean ROI restricts
the perturbations to it (XAI-CLIP). ``iter_explain`` yields
:class:`~napari_xaiclip.explain.base.Progress` items (done, total, partial
heatmap) and returns the :class:`~napari_xaiclip.explain.base.Explanation`;
stopping the iteration cancels the run at the next batch.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np

from .base import Context, Explanation, Progress, run_to_end
from .registry import MethodSpec, Param, get_method, method_names, methods, register, unregister
from .targets import TARGETS

__all__ = ["METHODS", "TARGETS", "Context", "Explanation", "MethodSpec", "Param", "Progress", "explain",
           "get_method", "iter_explain", "method_defaults", "method_names", "methods", "register", "unregister"]


def __getattr__(name: str):
    if name == "METHODS":  # read at call time, so methods registered later are listed too
        return method_names()
    raise AttributeError(name)


def method_defaults(method: str) -> dict:
    """Keyword parameters of a method with their defaults (for GUIs and reports)."""
    return get_method(method).defaults()


def iter_explain(method: str, segmenter, slice2d: np.ndarray, box=None, points=None, point_labels=None,
                 roi: np.ndarray | None = None, target: str = "dice", gt: np.ndarray | None = None,
                 score_map: np.ndarray | None = None, batch_size="auto", seed: int = 0,
                 **params) -> Generator[Progress, None, Explanation]:
    """Run an explainer step by step.

    Parameters
    ----------
    method : a registered method (:func:`method_names`).
    segmenter : a :class:`~napari_xaiclip.models.Segmenter` (or a spec for ``load_segmenter``).
    slice2d : (H, W) slice, any real dtype.
    box : (x0, y0, x1, y1) prompt in slice pixels; points/point_labels as (N, 2) x, y.
    roi : (H, W) bool ROI for ROI-guided mode, ``None`` for traditional.
    target : see :mod:`~napari_xaiclip.explain.targets`. Default: "dice".
    gt : (H, W) ground-truth mask (needed for target "gt-dice").
    score_map : (H, W) localizer map (for occlusion's ``top_k``).
    batch_size : perturbed inputs per forward, or "auto".
    seed : random masks and samples.
    params : the method's own parameters (see each method's docstring and its ``SPEC``);
        deprecated names are accepted with a FutureWarning.

    Raises
    ------
    ValueError
        Unknown method or parameter, bad shapes, empty ROI, a box outside the slice.
    """
    from ..models import load_segmenter

    spec = get_method(method)
    params = spec.check(params)
    seg = load_segmenter(segmenter) if isinstance(segmenter, str) else segmenter
    ctx = Context(seg, slice2d, box=box, points=points, point_labels=point_labels, roi=roi, target=target,
                  gt=gt, score_map=score_map, batch_size=batch_size, seed=seed)
    result = yield from spec.run(ctx, **params)
    result.params = {**result.params, "seed": int(seed), "batch_size": ctx.batch_size,
                     "box": None if ctx.box is None else [float(v) for v in ctx.box]}
    return result


def explain(method: str, segmenter, slice2d: np.ndarray, **kwargs) -> Explanation:
    """Run an explainer to the end and return its :class:`Explanation` (see :func:`iter_explain`)."""
    return run_to_end(iter_explain(method, segmenter, slice2d, **kwargs))
