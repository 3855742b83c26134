"""Occlusion, ROI-guided occlusion and adaptive occlusion against independent computations.

Truths used here (DESIGN.md 2.3, 6):
* full-image occlusion equals Captum's ``Occlusion`` on the same model, target,
  window, stride and baseline, whatever the batch size;
* guided occlusion evaluates exactly the windows that intersect the ROI
  (counted by a brute-force loop), costs n_patch + 1 forward passes (counted
  inside the network), and equals full occlusion wherever every covering
  window intersects the ROI;
* adaptive occlusion costs fewer passes than dense ROI occlusion and matches it
  where it refines to the finest level.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from napari_xaiclip.explain import explain, iter_explain
from napari_xaiclip.explain.base import Context
from napari_xaiclip.metrics import topk_iou

from toy_models import (GlobalLinearNet, LocalRegionNet, TinyConvNet, box_channel, make_segmenter,
                        soft_dice)

torch.set_num_threads(1)

S = 32
BOX = (8, 6, 24, 26)


# --------------------------------------------------------------------------- helpers


def _slice(seed=0, lo=0.2, hi=1.0, size=S):
    return np.random.default_rng(seed).uniform(lo, hi, (size, size)).astype(np.float32)


def _window_grid(size, patch, stride):
    """Window starts by a plain loop: step by ``stride`` until a window reaches the edge."""
    starts, y = [], 0
    while True:
        starts.append(y)
        if y + patch >= size:
            break
        y += stride
    return [(y, min(y + patch, size), x, min(x + patch, size)) for y in starts for x in starts]


def _independent_target(name, base_mask):
    """Targets written from their definitions (targets.py docstring), not imported."""
    m = base_mask.float()
    if name == "soft-dice":
        return lambda p: soft_dice(p, base_mask)
    if name == "roi-prob":  # no ROI: the region is the baseline mask
        return lambda p: (p * m).sum((-2, -1)) / m.sum()
    if name == "dice":
        def hard(p):
            pred = (p > 0.5).float()
            total = pred.sum((-2, -1)) + m.sum()
            return torch.where(total > 0, 2 * (pred * m).sum((-2, -1)) / total.clamp_min(1e-8),
                               torch.ones_like(total))
        return hard
    raise KeyError(name)


@pytest.fixture(scope="module")
def conv_setup():
    """A tiny conv net taking the box as a second channel, on a 32 x 32 slice (model input == slice)."""
    seg = make_segmenter(TinyConvNet(in_channels=2, seed=3), S, box="channel")
    sl = _slice(0)
    x = torch.as_tensor(sl)[None, None]
    net_in = torch.cat([x, box_channel(BOX, S)], 1)
    with torch.no_grad():
        base_mask = torch.sigmoid(seg.module.inner(net_in))[0, 0] > 0.5
    assert 0 < int(base_mask.sum()) < S * S, "toy model must give a non-trivial baseline mask"
    return seg, sl, base_mask


def _captum(seg, sl, target_fn, patch, stride, baseline=0.0, ppe=1):
    from captum.attr import Occlusion

    ctx = Context(seg, sl, box=BOX)
    assert torch.equal(ctx.x[0], torch.as_tensor(sl)), "normalize='none' at input size must pass the slice through"

    def forward(x):
        return target_fn(torch.sigmoid(seg.logits(x, ctx.prompt).float()))

    with torch.no_grad():
        attr = Occlusion(forward).attribute(ctx.x[None].clone(), sliding_window_shapes=(1, patch, patch),
                                            strides=(1, stride, stride), baselines=baseline,
                                            perturbations_per_eval=ppe)
    return attr[0, 0].double().numpy()


# --------------------------------------------------------------------------- full occlusion vs Captum

PATCH_STRIDE = [(4, 2), (6, 4), (7, 3), (8, 8), (5, 5), (32, 1)]


@pytest.mark.parametrize("target", ["soft-dice", "roi-prob", "dice"])
@pytest.mark.parametrize("patch,stride", PATCH_STRIDE)
def test_occlusion_equals_captum(conv_setup, patch, stride, target):
    seg, sl, base_mask = conv_setup
    ctx = Context(seg, sl, box=BOX)
    assert torch.equal(ctx.base_mask, base_mask)
    expected = _captum(seg, sl, _independent_target(target, base_mask), patch, stride)
    n_side = math.ceil((S - patch) / stride) + 1
    maps = []
    for bs in (1, 3, 64):
        ex = explain("occlusion", seg, sl, box=BOX, roi=None, window=patch, stride=stride, fill="zero",
                     batch_size=bs, target=target)
        assert ex.mode == "traditional"
        assert ex.n_patch == ex.n_patch_full == n_side ** 2
        assert ex.rho == 1.0
        assert ex.model_heatmap.shape == (S, S)
        np.testing.assert_allclose(ex.model_heatmap, expected, atol=1e-5, rtol=0,
                                   err_msg=f"batch size {bs}")
        maps.append(ex.model_heatmap)
    # no batch-size dependence
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-6)
    np.testing.assert_allclose(maps[0], maps[2], atol=1e-6)
    if target != "dice":
        assert np.abs(expected).max() > 1e-3, "the comparison must not be between two zero maps"


@pytest.mark.parametrize("fill", ["mean", "blur"])
def test_occlusion_fills_equal_captum_baselines(conv_setup, fill):
    seg, sl, base_mask = conv_setup
    patch, stride = 6, 4
    if fill == "mean":
        baseline = float(sl.mean())
    else:  # blur sigma = patch / 4 (occlusion's choice), scipy's default reflect mode
        baseline = torch.as_tensor(gaussian_filter(sl.astype(np.float32), patch / 4))[None, None]
    expected = _captum(seg, sl, _independent_target("soft-dice", base_mask), patch, stride, baseline)
    ex = explain("occlusion", seg, sl, box=BOX, window=patch, stride=stride, fill=fill, batch_size=5,
                 target="soft-dice")
    np.testing.assert_allclose(ex.model_heatmap, expected, atol=1e-5)


def test_occlusion_default_patch_and_stride():
    # defaults: patch = S/16, stride = patch/2 -> at S = 64: patch 4, stride 2, 31 x 31 windows
    seg = make_segmenter(TinyConvNet(in_channels=1, seed=1), 64)
    ex = explain("occlusion", seg, _slice(1, size=64), box=(10, 10, 50, 50), target="soft-dice")
    assert ex.params["window"] == 4 and ex.params["stride"] == 2
    assert ex.n_patch_full == 31 ** 2


def test_occlusion_progress_ends_with_final_map(conv_setup):
    seg, sl, _ = conv_setup
    gen = iter_explain("occlusion", seg, sl, box=BOX, window=8, stride=4, batch_size=10, target="soft-dice")
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as stop:
            ex = stop.value
            break
    n = 7 * 7
    dones = [p.done for p in items]
    assert dones == sorted(dones) and dones[-1] == n and all(p.total == n for p in items)
    assert len(items) == 1 + math.ceil(n / 10)  # one start item, then one per batch
    np.testing.assert_allclose(items[-1].heatmap, ex.model_heatmap, atol=1e-7)


# --------------------------------------------------------------------------- guided occlusion


def _roi():
    yy, xx = np.mgrid[:S, :S]
    roi = (yy - 12) ** 2 + (xx - 19) ** 2 <= 25
    roi[26:28, 4:6] = True  # a second, small component
    return roi


@pytest.fixture(scope="module")
def linear_setup():
    """A network where every occluded window lowers the target (strictly positive attributions)."""
    seg = make_segmenter(GlobalLinearNet(S, seed=0), S)
    seg.gflops  # the cached cost measurement runs one forward: do it before counting  # noqa: B018
    return seg, _slice(2)


@pytest.mark.parametrize("patch,stride", [(4, 2), (6, 4), (7, 3), (5, 5)])
def test_guided_occlusion_windows_costs_and_values(linear_setup, patch, stride):
    seg, sl = linear_setup
    roi = _roi()
    counter = seg.module
    counter.reset()
    full = explain("occlusion", seg, sl, roi=None, window=patch, stride=stride, target="roi-prob", batch_size=7)
    assert counter.images == full.n_forward == full.n_patch_full + 1
    assert np.all(full.model_heatmap > 0)

    counter.reset()
    guided = explain("occlusion", seg, sl, roi=roi, window=patch, stride=stride, target="roi-prob", batch_size=7)
    windows = _window_grid(S, patch, stride)
    hit = [w for w in windows if roi[w[0]:w[1], w[2]:w[3]].any()]
    side = math.ceil((S - patch) / stride) + 1
    assert guided.mode == "roi"
    assert guided.n_patch_full == side ** 2 == len(windows)
    assert guided.n_patch == len(hit)
    assert guided.rho == pytest.approx(len(hit) / len(windows))
    assert guided.n_forward == len(hit) + 1
    assert counter.images == guided.n_forward
    assert guided.gflops == pytest.approx(seg.gflops * guided.n_forward)

    # pixels by coverage, by brute force
    covered_by_hit = np.zeros((S, S), bool)
    only_hit = np.ones((S, S), bool)
    for w in windows:
        sel = np.zeros((S, S), bool)
        sel[w[0]:w[1], w[2]:w[3]] = True
        if w in hit:
            covered_by_hit |= sel
        else:
            only_hit &= ~sel
    only_hit &= covered_by_hit
    assert only_hit.any()
    # values: with a target that does not depend on the ROI (soft Dice against the
    # baseline mask; "roi-prob" means a different region in each mode)
    full_sd = explain("occlusion", seg, sl, roi=None, window=patch, stride=stride, target="soft-dice")
    guided_sd = explain("occlusion", seg, sl, roi=roi, window=patch, stride=stride, target="soft-dice")
    np.testing.assert_allclose(guided_sd.model_heatmap[only_hit & roi], full_sd.model_heatmap[only_hit & roi],
                               atol=1e-6)
    assert np.all(guided_sd.model_heatmap[~(covered_by_hit & roi)] == 0)
    # strictly positive attributions: the support is the union of evaluated windows, inside the ROI
    np.testing.assert_array_equal(guided.model_heatmap != 0, covered_by_hit & roi)
    np.testing.assert_array_equal(guided_sd.model_heatmap != 0, covered_by_hit & roi)
    # the slice heatmap is kept inside the ROI
    assert np.all(guided.heatmap[~roi] == 0)
    assert np.any(guided.heatmap[roi] != 0)


@pytest.mark.parametrize("top_k", [50, 10, 100])
def test_guided_occlusion_top_k(linear_setup, top_k):
    seg, sl = linear_setup
    roi = _roi()
    patch, stride = 6, 4
    score = np.random.default_rng(5).random((S, S)).astype(np.float32)
    counter = seg.module
    counter.reset()
    ex = explain("occlusion", seg, sl, roi=roi, score_map=score, window=patch, stride=stride, top_percent=top_k,
                 target="roi-prob")
    windows = _window_grid(S, patch, stride)
    hit = [w for w in windows if roi[w[0]:w[1], w[2]:w[3]].any()]
    means = np.array([score[w[0]:w[1], w[2]:w[3]].mean() for w in hit])
    keep = math.ceil(len(hit) * top_k / 100)
    chosen = [hit[i] for i in np.argsort(-means)[:keep]]
    union = np.zeros((S, S), bool)
    for w in chosen:
        union[w[0]:w[1], w[2]:w[3]] = True
    assert ex.n_patch == keep
    assert ex.n_forward == keep + 1 == counter.images
    assert ex.rho == pytest.approx(keep / len(windows))
    np.testing.assert_array_equal(ex.model_heatmap != 0, union & roi)


def test_guided_occlusion_roi_prob_target_uses_the_roi(linear_setup):
    # target "roi-prob" in ROI mode is the mean probability inside the ROI
    seg, sl = linear_setup
    roi = _roi()
    ctx = Context(seg, sl, roi=roi, target="roi-prob")
    with torch.no_grad():
        p = torch.sigmoid(seg.module.inner(torch.as_tensor(sl)[None, None]))[0, 0]
    assert ctx.base_score == pytest.approx(float(p[torch.as_tensor(roi)].mean()), abs=1e-6)


# --------------------------------------------------------------------------- adaptive occlusion

REGION = (14, 24, 6, 16)  # y0, y1, x0, x1: the only input pixels the toy model reads


@pytest.fixture(scope="module")
def local_setup():
    sl = _slice(4)
    y0, y1, x0, x1 = REGION
    net = LocalRegionNet(S, region=REGION, gain=0.1, offset=float(sl[y0:y1, x0:x1].sum()))
    seg = make_segmenter(net, S)
    seg.gflops  # noqa: B018
    roi = np.zeros((S, S), bool)
    roi[2:30, 2:30] = True
    return seg, sl, roi


def test_adaptive_occlusion_cheaper_and_agrees_with_dense(local_setup):
    seg, sl, roi = local_setup
    counter = seg.module
    counter.reset()
    dense = explain("occlusion", seg, sl, roi=roi, window=4, stride=2, target="roi-prob", batch_size=16)
    assert counter.images == dense.n_forward
    counter.reset()
    ada = explain("adaptive-occlusion", seg, sl, roi=roi, window=4, stride=2, levels=2, refine_fraction=0.25,
                  target="roi-prob", batch_size=16)
    assert counter.images == ada.n_forward == ada.n_patch + 1
    assert ada.n_forward < dense.n_forward
    assert ada.n_patch_full == dense.n_patch_full == 15 * 15
    levels = ada.info["levels"]
    assert [lv["window"] for lv in levels] == [16, 8, 4][:len(levels)]
    assert sum(lv["evaluated"] for lv in levels) == ada.n_patch
    # the finest level covers the region the model reads: equal to dense there
    y0, y1, x0, x1 = REGION
    np.testing.assert_allclose(ada.model_heatmap[y0:y1, x0:x1], dense.model_heatmap[y0:y1, x0:x1], atol=1e-6)
    # top pixels agree (dense's non-zero support is 19 % of the image, so these sets are well defined)
    assert topk_iou(ada.model_heatmap, dense.model_heatmap, 0.05) >= 0.8
    assert topk_iou(ada.model_heatmap, dense.model_heatmap, 0.1) >= 0.8
    assert np.all(ada.heatmap[~roi] == 0)


@pytest.mark.parametrize("region,frac", [((18, 24, 8, 14), 0.05), ((12, 24, 6, 18), 0.2)])
def test_adaptive_occlusion_top_pixels_match_dense_default_threshold(region, frac):
    sl = _slice(4)
    y0, y1, x0, x1 = region
    seg = make_segmenter(LocalRegionNet(S, region=region, gain=0.1, offset=float(sl[y0:y1, x0:x1].sum())), S)
    roi = np.zeros((S, S), bool)
    roi[2:30, 2:30] = True
    dense = explain("occlusion", seg, sl, roi=roi, window=4, stride=2, target="roi-prob")
    ada = explain("adaptive-occlusion", seg, sl, roi=roi, window=4, stride=2, target="roi-prob")
    assert ada.n_forward < dense.n_forward
    assert (dense.model_heatmap != 0).mean() > frac  # the top set is well defined (no ties at zero)
    # (region (18, 24, 8, 14), top 5 %: IoU 0.645; region (12, 24, 6, 18), top 20 %: IoU 0.565)
    assert topk_iou(ada.model_heatmap, dense.model_heatmap, frac) >= 0.8


def test_adaptive_occlusion_zero_levels_is_dense(local_setup):
    seg, sl, roi = local_setup
    dense = explain("occlusion", seg, sl, roi=roi, window=4, stride=2, target="roi-prob")
    ada = explain("adaptive-occlusion", seg, sl, roi=roi, window=4, stride=2, levels=0, target="roi-prob")
    assert ada.n_forward == dense.n_forward
    np.testing.assert_allclose(ada.model_heatmap, dense.model_heatmap, atol=1e-6)
