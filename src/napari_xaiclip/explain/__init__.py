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

from .base import Context, Explanation, Progress
from .targets import TARGETS

__all__ = ["METHODS", "TARGETS", "Context", "Explanation", "Progress", "explain", "iter_explain", "method_defaults"]


def _methods() -> dict:
    from .adaptive import adaptive_occlusion
    from .causal import causal
    from .gradients import gradcam, integrated_gradients
    from .lime import lime
    from .occlusion import occlusion
    from .rise import rise
    from .segx import segx

    return {
        "occlusion": occlusion,
        "adaptive-occlusion": adaptive_occlusion,
        "rise": rise,
        "lime": lime,
        "ig": integrated_gradients,
        "gradcam": gradcam,
        "causal": causal,
        "segx": segx,
    }


#: Method names accepted by :func:`explain`.
METHODS = ("occlusion", "adaptive-occlusion", "rise", "lime", "ig", "gradcam", "causal", "segx")


def method_defaults(method: str) -> dict:
    """Keyword parameters of a method with their defaults (for GUIs and reports)."""
    import inspect

    fn = _get(method)
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if k != "ctx" and p.default is not inspect.Parameter.empty}


def _get(method: str):
    table = _methods()
    if method not in table:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(sorted(table))}")
    return table[method]


def iter_explain(method: str, segmenter, slice2d: np.ndarray, box=None, points=None, point_labels=None,
                 roi: np.ndarray | None = None, target: str = "dice", gt: np.ndarray | None = None,
                 score_map: np.ndarray | None = None, batch_size="auto", seed: int = 0,
                 **params) -> Generator[Progress, None, Explanation]:
    """Run an explainer step by step.

    Parameters
    ----------
    method : one of :data:`METHODS`.
    segmenter : a :class:`~napari_xaiclip.models.Segmenter` (or a spec for ``load_segmenter``).
    slice2d : (H, W) slice, any real dtype.
    box : (x0, y0, x1, y1) prompt in slice pixels; points/point_labels as (N, 2) x, y.
    roi : (H, W) bool ROI for ROI-guided mode, ``None`` for traditional.
    target : see :mod:`~napari_xaiclip.explain.targets`. Default: "dice".
    gt : (H, W) ground-truth mask (needed for target "gt-dice").
    score_map : (H, W) localizer map (for occlusion's ``top_k``).
    batch_size : perturbed inputs per forward, or "auto".
    seed : random masks and samples.
    params : the method's own parameters (see each method's docstring).

    Raises
    ------
    ValueError
        Unknown method or parameter, bad shapes, empty ROI, a box outside the slice.
    """
    from ..models import load_segmenter

    fn = _get(method)
    allowed = method_defaults(method)
    unknown = set(params) - set(allowed)
    if unknown:
        raise ValueError(f"unknown parameters for {method}: {sorted(unknown)}; known: {sorted(allowed)}")
    seg = load_segmenter(segmenter) if isinstance(segmenter, str) else segmenter
    ctx = Context(seg, slice2d, box=box, points=points, point_labels=point_labels, roi=roi, target=target,
                  gt=gt, score_map=score_map, batch_size=batch_size, seed=seed)
    result = yield from fn(ctx, **params)
    result.params = {**result.params, "seed": int(seed), "batch_size": ctx.batch_size,
                     "box": None if ctx.box is None else [float(v) for v in ctx.box]}
    return result


def explain(method: str, segmenter, slice2d: np.ndarray, **kwargs) -> Explanation:
    """Run an explainer to the end and return its :class:`Explanation` (see :func:`iter_explain`)."""
    gen = iter_explain(method, segmenter, slice2d, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
