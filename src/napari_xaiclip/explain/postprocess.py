"""ExplainSeg ("No Masks Needed"): masks from relevance maps (docs/methods.md).

Pure numpy / scikit-image (torch only in :func:`encoder_feature_map`). Every
mask function returns an (H, W) bool array; degenerate relevance (constant,
all NaN) gives an empty mask, and NaN pixels are never selected.

The four variants of the paper, dispatched by :func:`explainseg`:

==================  ==========================================================
``"xai-morph"``     Otsu threshold of the relevance, then :func:`morphology`
``"xai-ncut"``      normalized cut of superpixels weighted by the relevance
``"fusion-morph"``  relevance x feature map (:func:`fuse`), Otsu, morphology
``"fusion-ncut"``   relevance x feature map, normalized cut
==================  ==========================================================

>>> import numpy as np
>>> yy, xx = np.mgrid[:48, :48]
>>> rel = ((yy - 24) ** 2 + (xx - 24) ** 2 <= 100).astype(float)
>>> int(explainseg(rel, variant="xai-morph").sum()) == int(rel.sum())
True
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "VARIANTS",
    "densecrf_refine",
    "encoder_feature_map",
    "explainseg",
    "fuse",
    "minmax",
    "morphology",
    "ncut_mask",
    "otsu_mask",
    "otsu_threshold",
]

VARIANTS = ("xai-morph", "xai-ncut", "fusion-morph", "fusion-ncut")


def _relevance(relevance) -> tuple[np.ndarray, np.ndarray]:
    """(map with NaN/inf set to the finite minimum, finite mask); checks 2D."""
    r = np.asarray(relevance, np.float64)
    if r.ndim != 2:
        raise ValueError(f"expected a 2D relevance map, got shape {r.shape}")
    finite = np.isfinite(r)
    lo = float(r[finite].min()) if finite.any() else 0.0
    return np.where(finite, r, lo), finite


def minmax(values) -> np.ndarray:
    """Min-max normalise to [0, 1]; a constant (or all-NaN) map gives zeros, NaN gives 0.

    >>> minmax(np.array([2.0, 4.0, np.nan])).tolist()
    [0.0, 1.0, 0.0]
    """
    v = np.asarray(values, np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        return np.zeros(v.shape)
    lo, hi = float(v[finite].min()), float(v[finite].max())
    if hi <= lo:
        return np.zeros(v.shape)
    return np.where(finite, (v - lo) / (hi - lo), 0.0)


def otsu_threshold(values: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold as the *upper edge* of scikit-image's threshold bin, so that every value
    in that bin falls in the lower class (``threshold_otsu`` returns the bin centre, which puts
    values of its own bin on both sides).

    >>> otsu_threshold(np.array([0.0, 0.1, 0.0, 0.9, 1.0, 0.95])) > 0.1
    True
    """
    from skimage.filters import threshold_otsu

    v = np.asarray(values, np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    try:
        with np.errstate(all="ignore"):
            return float(threshold_otsu(v, nbins=nbins)) + (hi - lo) / (2 * nbins)
    except ValueError:  # a range too narrow for the histogram: split it in the middle
        return lo + (hi - lo) / 2


def otsu_mask(relevance: np.ndarray) -> np.ndarray:
    """Pixels above the Otsu threshold of the relevance (H, W); empty when it is constant.

    >>> otsu_mask(np.array([[0.0, 0.1, 0.0], [0.9, 1.0, 0.95]])).tolist()
    [[False, False, False], [True, True, True]]
    """
    r, finite = _relevance(relevance)
    vals = r[finite]
    if vals.size == 0 or vals.max() <= vals.min():
        return np.zeros(r.shape, bool)
    return finite & (r > otsu_threshold(vals))


def _disk(radius: int) -> np.ndarray:
    from skimage.morphology import disk

    return disk(int(radius)).astype(bool)


def morphology(mask: np.ndarray, drop_border: bool = True, dilate: int = 2, erode: int = 2,
               fill_holes: bool = True, min_size: int | None = None) -> np.ndarray:
    """Clean a mask (H, W): label 8-connected components, drop those touching the image border
    (artefacts of the explanation's edges), dilate by ``dilate`` px to join fragments, erode by
    ``erode`` px, fill holes and drop components smaller than ``min_size`` px.

    Parameters
    ----------
    mask : (H, W) bool (anything cast to bool).
    drop_border : drop components touching the border. Default: True.
    dilate, erode : disk radii in pixels (0 skips the step). Defaults: 2, 2.
    fill_holes : Default: True.
    min_size : smallest component kept, in pixels. Default: max(8, H * W // 1000).

    The image is padded by edge replication during dilation and erosion, so objects
    touching the border do not erode from it.

    >>> m = np.zeros((9, 9), bool); m[2:7, 2:7] = True; m[4, 4] = False; m[0, 0] = True
    >>> out = morphology(m, dilate=0, erode=0, min_size=1)
    >>> bool(out[4, 4]), bool(out[0, 0]), int(out.sum())
    (True, False, 25)
    """
    from scipy import ndimage as ndi

    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {m.shape}")
    if dilate < 0 or erode < 0:
        raise ValueError(f"dilate and erode must be >= 0, got {dilate} and {erode}")
    min_size = max(8, m.size // 1000) if min_size is None else int(min_size)
    if drop_border and m.any():
        labels, _ = ndi.label(m, structure=np.ones((3, 3)))
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        m = m & ~np.isin(labels, edge[edge > 0])
    pad = max(dilate, erode)
    if pad:
        p = np.pad(m, pad, mode="edge")
        if dilate:
            p = ndi.binary_dilation(p, _disk(dilate))
        if erode:
            p = ndi.binary_erosion(p, _disk(erode), border_value=1)
        m = p[pad:-pad, pad:-pad]
    if fill_holes:
        m = ndi.binary_fill_holes(m)
    if min_size > 1 and m.any():
        labels, n = ndi.label(m, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_size
        keep[0] = False
        m = keep[labels]
    return m.astype(bool)


def ncut_mask(image: np.ndarray | None, relevance: np.ndarray, n_segments: int = 200,
              compactness: float = 0.1, thresh: float = 0.001, sigma: float = 0.05,
              seed: int = 0) -> np.ndarray:
    """Normalized-cut mask: SLIC superpixels of ``image``, a region adjacency graph whose edge
    weights are the similarity ``exp(-d**2 / sigma)`` of the superpixels' mean min-max normalised
    relevance (``skimage.graph.rag_mean_color``), ``skimage.graph.cut_normalized``, then the cut
    segments whose mean relevance exceeds the (pixel-weighted) Otsu threshold of segment means.

    Parameters
    ----------
    image : (H, W) slice for the superpixels; ``None`` uses the relevance itself.
    relevance : (H, W) float.
    n_segments, compactness : SLIC's, on the min-max normalised image. Defaults: 200, 0.1.
    thresh : cut_normalized's stopping threshold. Default: 0.001.
    sigma : similarity width on relevance in [0, 1]. Default: 0.05.
    seed : cut_normalized's random start. Default: 0.

    When the cut leaves a single segment, the superpixels' own means are thresholded.
    """
    from skimage import graph, segmentation

    r, finite = _relevance(relevance)
    img = r if image is None else np.asarray(image, np.float64)
    if img.shape != r.shape:
        raise ValueError(f"image of shape {img.shape} does not match the relevance {r.shape}")
    rn = minmax(np.where(finite, r, np.nan))
    if rn.max() <= 0:
        return np.zeros(r.shape, bool)
    sp = segmentation.slic(minmax(img), n_segments=int(n_segments), compactness=float(compactness),
                           channel_axis=None, start_label=0)
    labels = sp
    if sp.max() > 0:
        rag = graph.rag_mean_color(rn[..., None], sp, mode="similarity", sigma=float(sigma))
        labels = graph.cut_normalized(sp, rag, thresh=float(thresh), rng=seed)
        if len(np.unique(labels)) < 2:
            labels = sp
    _, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    means = np.bincount(inv.ravel(), rn.ravel()) / np.bincount(inv.ravel())
    per_pixel = means[inv]
    if per_pixel.max() <= per_pixel.min():
        return np.zeros(r.shape, bool)
    return (per_pixel > otsu_threshold(per_pixel)) & finite


def densecrf_refine(image: np.ndarray, relevance: np.ndarray, n_iter: int = 5, sxy_gaussian: float = 3,
                    compat_gaussian: float = 3, sxy_bilateral: float = 20, srgb: float = 10,
                    compat_bilateral: float = 5) -> np.ndarray:
    """DenseCRF refinement of a relevance map with the slice as the appearance term.

    The min-max normalised relevance is the foreground probability of the unary term;
    the pairwise terms are a Gaussian smoothness kernel and a bilateral kernel on the
    slice (min-max to 0..255, grey as RGB). Returns the MAP labelling as a mask.

    Raises
    ------
    ImportError
        The optional package pydensecrf is not installed.
    """
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise ImportError("DenseCRF refinement needs the optional package pydensecrf "
                          "(pip install pydensecrf)") from None
    r, finite = _relevance(relevance)
    img = np.asarray(image, np.float64)
    if img.shape != r.shape:
        raise ValueError(f"image of shape {img.shape} does not match the relevance {r.shape}")
    h, w = r.shape
    p = np.clip(minmax(np.where(finite, r, np.nan)), 1e-5, 1 - 1e-5)
    unary = -np.log(np.stack([1 - p, p])).reshape(2, -1).astype(np.float32)
    rgb = np.ascontiguousarray(np.repeat((minmax(img) * 255).astype(np.uint8)[..., None], 3, axis=2))
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=sxy_gaussian, compat=compat_gaussian)
    crf.addPairwiseBilateral(sxy=sxy_bilateral, srgb=srgb, rgbim=rgb, compat=compat_bilateral)
    q = np.asarray(crf.inference(int(n_iter))).reshape(2, h, w)
    return (q[1] > q[0]) & finite


def fuse(relevance: np.ndarray, feature_map: np.ndarray) -> np.ndarray:
    """Fusion: min-max normalised relevance x min-max normalised feature map (bilinearly resized
    to the relevance's shape). (H, W) float in [0, 1]. A constant feature map carries no
    information and leaves the normalised relevance unchanged (it counts as all ones).

    >>> fuse(np.array([[0.0, 2.0], [4.0, 4.0]]), np.array([[1.0, 1.0], [0.0, 3.0]])).round(4).tolist()
    [[0.0, 0.1667], [0.0, 1.0]]
    """
    r, finite = _relevance(relevance)
    f = np.asarray(feature_map, np.float64)
    if f.ndim != 2:
        raise ValueError(f"expected a 2D feature map, got shape {f.shape}")
    ff = f[np.isfinite(f)]
    f = minmax(f) if ff.size and ff.max() > ff.min() else np.ones(f.shape)
    if f.shape != r.shape:
        from skimage.transform import resize

        f = resize(f, r.shape, order=1, mode="edge", anti_aliasing=f.shape[0] > r.shape[0], preserve_range=True)
    return minmax(np.where(finite, r, np.nan)) * f


def encoder_feature_map(segmenter, slice2d: np.ndarray, box=None) -> np.ndarray:
    """The segmenter's encoder features for a slice as an (H, W) map in [0, 1].

    SAM family (``segmenter.module.image_encoder``): the image embedding. Other
    segmenters: the activation of the last ``Conv2d`` with more than one output
    channel (the last ``Conv2d`` if all have one), captured by a forward hook
    during one forward with ``box`` as prompt. Averaged over channels, min-max
    normalised, bilinearly upsampled to the model input and mapped back to the
    slice with ``preprocess.from_model_input``.

    Raises
    ------
    ValueError
        A segmenter without a network, or one without convolutions or image encoder.
    """
    import torch
    import torch.nn.functional as F

    from ..models.base import eval_mode
    from ..preprocess import from_model_input

    net = getattr(segmenter, "module", None)
    if net is None:
        raise ValueError("encoder features need the segmenter's network (segmenter.module)")
    x, geometry = segmenter.preprocess(np.asarray(slice2d))
    with eval_mode(net), torch.inference_mode():
        encoder = getattr(net, "image_encoder", None)
        if encoder is not None:
            feats = encoder(x[None])
        else:
            convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
            if not convs:
                raise ValueError(f"{type(net).__name__} has no image encoder nor Conv2d layer to take features from")
            wide = [m for m in convs if m.out_channels > 1]
            layer = (wide or convs)[-1]
            seen = {}
            handle = layer.register_forward_hook(lambda mod, args, out: seen.__setitem__("out", out))
            try:
                segmenter.logits(x[None], segmenter.encode_prompt(box, geometry=geometry))
            finally:
                handle.remove()
            feats = seen["out"]
    fmap = feats.float().mean(1, keepdim=True)
    s = int(segmenter.input_size)
    up = F.interpolate(fmap, size=(s, s), mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
    return minmax(from_model_input(minmax(up).astype(np.float32), geometry)).astype(np.float32)


def explainseg(relevance: np.ndarray, image: np.ndarray | None = None, variant: str = "xai-morph",
               feature_map: np.ndarray | None = None, morph_params: dict | None = None,
               ncut_params: dict | None = None) -> np.ndarray:
    """An ExplainSeg mask (H, W) bool from a relevance map.

    Parameters
    ----------
    relevance : (H, W) float, high = relevant.
    image : (H, W) slice for the superpixels of the NCut variants. Default: the relevance.
    variant : "xai-morph", "xai-ncut", "fusion-morph" or "fusion-ncut". Default: "xai-morph".
    feature_map : (h, w) encoder feature map, needed by the fusion variants
        (see :func:`encoder_feature_map`).
    morph_params, ncut_params : keyword arguments of :func:`morphology` / :func:`ncut_mask`.

    Raises
    ------
    ValueError
        Unknown variant, a fusion variant without feature map, mismatched shapes.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown ExplainSeg variant {variant!r}; choose from {VARIANTS}")
    rel = np.asarray(relevance, np.float64)
    if variant.startswith("fusion"):
        if feature_map is None:
            raise ValueError(f"variant {variant!r} needs a feature map (see encoder_feature_map)")
        rel = fuse(rel, feature_map)
    if variant.endswith("morph"):
        return morphology(otsu_mask(rel), **(morph_params or {}))
    return ncut_mask(image, rel, **(ncut_params or {}))
