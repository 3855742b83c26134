"""SegX maps and the SegU uncertainty score over any base explainer (docs/methods.md).

* **SegX** = explanation x baseline segmentation mask (zero outside the mask).
* **display** = the top ``top_percent`` % of the mask's pixels by SegX value, the
  other pixels 0.
* **SegU** = 1 - (positive explanation mass inside the clinically relevant region
  / total positive mass), in [0, 1]: 0 when the explanation lies entirely in the
  region, 1 when it lies entirely outside (or has no positive mass). The region is
  the ROI when one is given, else the baseline mask.

Every base map is oriented positive = supports the segmentation. ``"causal"``
is refused as a base: it only scores blocks outside the baseline mask, so its
SegX map (explanation x mask) would be zero everywhere.
"""

from __future__ import annotations

import numpy as np

from .base import Context, finish
from .registry import MethodSpec, Param, get_method, methods

__all__ = ["SPEC", "segu", "segx", "segx_bases", "top_percent_mask"]


def segx_bases() -> tuple[str, ...]:
    """The registered explainers SegX can build on."""
    return tuple(name for name, spec in methods().items() if spec.segx_base)


def _why_not_base(name) -> str:
    spec = methods().get(name)
    return f"{name} {spec.segx_refusal}" if spec is not None and spec.segx_refusal else ""


def segu(heatmap: np.ndarray, region: np.ndarray) -> float:
    """SegU = 1 - (positive mass of ``heatmap`` inside ``region``) / (total positive mass).

    Parameters
    ----------
    heatmap : (H, W) float; NaN counts as 0, negative values are ignored.
    region : (H, W) bool, the clinically relevant region.

    Returns
    -------
    float in [0, 1]; 1.0 when the map has no positive mass (it points nowhere).

    Raises
    ------
    ValueError
        Shapes differ.

    >>> h = np.zeros((4, 4)); h[0, 0] = 3.0; h[3, 3] = 1.0
    >>> r = np.zeros((4, 4), bool); r[:2, :2] = True
    >>> segu(h, r)
    0.25
    >>> segu(h, np.ones((4, 4), bool)), segu(h, np.zeros((4, 4), bool)), segu(np.zeros((4, 4)), r)
    (0.0, 1.0, 1.0)
    """
    h = np.clip(np.nan_to_num(np.asarray(heatmap, np.float64), nan=0.0, posinf=0.0, neginf=0.0), 0, None)
    r = np.asarray(region, bool)
    if h.shape != r.shape:
        raise ValueError(f"heatmap of shape {h.shape} does not match the region {r.shape}")
    total = h.sum()
    if total <= 0:
        return 1.0
    return float(np.clip(1.0 - h[r].sum() / total, 0.0, 1.0))


def top_percent_mask(values: np.ndarray, mask: np.ndarray, percent: float) -> np.ndarray:
    """The ``percent`` % highest-valued pixels inside ``mask`` (at least one when the mask is not empty).

    >>> v = np.arange(16.0).reshape(4, 4); m = np.zeros((4, 4), bool); m[2:] = True
    >>> np.argwhere(top_percent_mask(v, m, 25.0)).tolist()
    [[3, 2], [3, 3]]
    """
    v = np.nan_to_num(np.asarray(values, np.float64), nan=-np.inf)
    idx = np.flatnonzero(np.asarray(mask, bool))
    out = np.zeros(v.size, bool)
    if idx.size:
        k = min(idx.size, max(1, int(round(percent / 100.0 * idx.size))))
        out[idx[np.argsort(-v.ravel()[idx], kind="stable")[:k]]] = True
    return out.reshape(v.shape)


def segx(ctx: Context, base: str = "occlusion", base_params: dict | None = None, top_percent: float = 5.0):
    """SegX / SegU over a base explainer (generator; returns an Explanation).

    Parameters
    ----------
    base : name of the base explainer, one of :func:`segx_bases` (not "segx" or "causal"). Default: "occlusion".
    base_params : the base explainer's own parameters. Default: its defaults.
    top_percent : share of the mask's pixels kept in the display map. Default: 5.0.

    The heatmap is the SegX map; ``maps`` holds "segx", "display" and "base" (the
    base explainer's map); ``info["segu"]`` is SegU, ``info["base"]`` the base
    method, ``info["base_info"]`` its own info. Forward passes, cost and the
    patch counts are the base explainer's (it runs in the same context).

    Raises
    ------
    ValueError
        Unknown, recursive or causal base, unknown base parameters, top_percent outside (0, 100].
    """
    SPEC.param("base").check(base, "segx")
    spec = get_method(base)
    inner = yield from spec.run(ctx, **spec.check(base_params))
    base_map = np.nan_to_num(np.asarray(inner.model_heatmap, np.float64))
    expl = base_map
    mask = ctx.base_mask.cpu().numpy()
    seg_map = np.where(mask, expl, 0.0)
    display = np.where(top_percent_mask(seg_map, mask, float(top_percent)), seg_map, 0.0)
    region = ctx.roi_model.cpu().numpy() if ctx.roi_model is not None else mask
    score = segu(expl, region)
    gflops_one = float(ctx.seg.gflops)
    extra = inner.gflops - gflops_one * ctx.n_forward
    backward = int(round(extra / (2 * gflops_one))) if gflops_one > 0 and extra > 0 else 0
    params = {"base": base, "base_params": inner.params, "top_percent": float(top_percent)}
    info = {"segu": score, "base": base, "segu_region": "roi" if ctx.roi_model is not None else "baseline mask",
            "base_info": inner.info}
    yield ctx.progress(1, 1, seg_map.astype(np.float32), "segx")
    return finish(ctx, "segx", params, seg_map.astype(np.float32), n_patch=inner.n_patch,
                  n_patch_full=inner.n_patch_full, info=info, backward_passes=backward,
                  maps_model={"segx": seg_map, "display": display, "base": base_map})


SPEC = MethodSpec(
    "segx", segx,
    (Param("base", str, "occlusion", "the explainer SegX builds on", choices=segx_bases, why_not=_why_not_base),
     Param("base_params", object, None, "the base explainer's own parameters", gui=False),
     Param("top_percent", float, 5.0, "share of the mask's pixels kept in the display map", low=1e-9, high=100)),
    summary="SegX: a base explanation restricted to the segmentation, with the SegU uncertainty score.",
    cost="the base explainer's", segx_base=False, segx_refusal="cannot build on itself")
