"""ROI-mode behaviour of LIME, integrated gradients and occlusion, checked against
hand-worked examples and definitions:

* LIME's segment-mean fill of a superpixel is the mean of that superpixel's own
  pixels; pixels outside the ROI enter no superpixel's mean;
* multi-scale LIME normalises each scale over the ROI's pixels, so every scale
  spans [0, 1] inside the ROI and the outside stays 0;
* ROI-mode integrated gradients (with SmoothGrad noise) equal Captum's
  NoiseTunnel(IntegratedGradients) on the forward that holds every pixel outside
  the ROI at the input, and are exactly 0 outside the ROI at both resolutions;
* ROI-mode occlusion's model-resolution map (what deletion/insertion rank) is 0
  outside the ROI and, inside, the average over the evaluated windows.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import napari_xaiclip.explain.lime as lime_mod
from napari_xaiclip.explain import explain, iter_explain
from napari_xaiclip.explain.base import Context

from toy_models import IdentityProbNet, LinearProbTarget, TinyConvNet, make_segmenter, soft_dice

torch.set_num_threads(1)

# --------------------------------------------------------------------------- LIME: segment-mean fill


def test_segment_fill_ignores_pixels_outside_the_roi():
    # superpixel 0 = {8, 12} (mean 10), superpixel 1 = {20, 20}, everything else outside at 100
    x = torch.full((1, 4, 4), 100.0)
    labels = torch.full((4, 4), -1, dtype=torch.long)
    x[0, 0, 0], x[0, 0, 1] = 8.0, 12.0
    labels[0, 0] = labels[0, 1] = 0
    x[0, 2, 2] = x[0, 3, 3] = 20.0
    labels[2, 2] = labels[3, 3] = 1
    fill = lime_mod._segment_fill(SimpleNamespace(x=x), labels, 2)
    assert fill.shape == x.shape
    np.testing.assert_allclose(fill[0][labels == 0].numpy(), [10.0, 10.0])
    np.testing.assert_allclose(fill[0][labels == 1].numpy(), [20.0, 20.0])


S_LIME = 48


def _regions():
    r = np.zeros((S_LIME, S_LIME), int)
    r[16:, :16] = 1
    r[16:32, 16:] = 2
    r[32:, 16:32] = 3
    r[32:, 32:] = 4
    return r


VALUES = np.array([0.15, 0.55, 0.35, 0.9, 0.75], np.float32)
WEIGHTS = np.array([1.0, -2.0, 0.5, 3.0, -1.0])


@pytest.fixture(scope="module")
def lime_setup():
    regions = _regions()
    sl = VALUES[regions]
    sizes = np.bincount(regions.ravel())
    wmap = (WEIGHTS / sizes)[regions].astype(np.float32)  # target: sum_k w_k * mean(probs in region k)
    seg = make_segmenter(IdentityProbNet(), S_LIME)
    seg.gflops  # noqa: B018
    return seg, sl, regions, wmap


def test_roi_lime_segment_mean_on_flat_superpixels_changes_nothing(lime_setup):
    # every superpixel is flat, so replacing it by its own mean leaves the image unchanged:
    # every sample scores the same and every surrogate weight is 0
    seg, sl, regions, wmap = lime_setup
    roi = (regions == 0) | (regions == 2)
    ex = explain("lime", seg, sl, roi=roi, target=LinearProbTarget(wmap), fill="segment-mean", n_samples=200,
                 alpha=1e-3)
    assert ex.n_patch == 2
    assert np.abs(ex.model_heatmap).max() < 1e-5
    assert np.abs(ex.heatmap).max() < 1e-5


# --------------------------------------------------------------------------- LIME: multi-scale combination


def test_multiscale_lime_normalises_each_scale_over_the_roi(lime_setup, monkeypatch):
    # two scales with hand-made maps; inside the ROI: P = (1, -2), Q = (3, -1), R = (2, -2)
    # -> per scale over the ROI: P = (0, 0), Q = (1, 1), R = (0.5, 0) -> means 0, 1, 0.25; outside 0
    seg, sl, regions, wmap = lime_setup
    roi = np.zeros((S_LIME, S_LIME), bool)
    roi[4:12, 4:28] = True
    p, q, r = np.zeros_like(roi), np.zeros_like(roi), np.zeros_like(roi)
    p[4:12, 4:12], q[4:12, 12:20], r[4:12, 20:28] = True, True, True
    maps = {50: 1.0 * p + 3.0 * q + 2.0 * r, 100: -2.0 * p - 1.0 * q - 2.0 * r}

    def fake_scale(ctx, labels_np, n_samples, fill, kernel_width, alpha, gen, offset, total, stage):
        yield ctx.progress(offset + n_samples, total, None, stage)
        return maps[int(stage.split()[-1])], int(labels_np.max()) + 1

    monkeypatch.setattr(lime_mod, "_one_scale", fake_scale)
    ex = explain("lime", seg, sl, roi=roi, target=LinearProbTarget(wmap), multiscale=True, scales=(50, 100),
                 n_samples=2)
    expected = 0.0 * p + 1.0 * q + 0.25 * r
    np.testing.assert_allclose(ex.model_heatmap, expected, atol=1e-7)
    np.testing.assert_allclose(ex.heatmap, expected, atol=1e-7)


# --------------------------------------------------------------------------- integrated gradients, ROI mode

S = 32
BOX = (8, 6, 24, 26)


@pytest.fixture(scope="module")
def conv_seg():
    seg = make_segmenter(TinyConvNet(in_channels=2, seed=3), S, box="channel")
    seg.gflops  # noqa: B018
    return seg


def _roi(size):
    roi = np.zeros((size, size), bool)
    roi[size * 10 // 32:size * 22 // 32, size * 12 // 32:size * 20 // 32] = True
    return roi


@pytest.mark.parametrize("size", [32, 48])  # slice at the model's resolution, and larger
def test_roi_ig_equals_captum_on_the_masked_forward(conv_seg, size):
    from captum.attr import IntegratedGradients, NoiseTunnel

    seg = conv_seg
    sl = np.random.default_rng(0).uniform(0.2, 1.0, (size, size)).astype(np.float32)
    box = tuple(v * size / 32 for v in BOX)
    roi = _roi(size)
    n, steps, std, seed = 4, 8, 0.3, 11
    ex = None
    partial = []
    gen = iter_explain("ig", seg, sl, box=box, roi=roi, n_samples=n, stdevs=std, n_steps=steps,
                       target="soft-dice", seed=seed)
    while True:
        try:
            partial.append(next(gen).heatmap)
        except StopIteration as stop:
            ex = stop.value
            break

    ctx = Context(seg, sl, box=box, roi=roi)
    m = ctx.roi_model[None, None].float()
    x = ctx.x[None].clone()
    base_mask = ctx.base_mask

    def masked(z):  # the model always sees the input outside the ROI
        probs = torch.sigmoid(seg.logits(x * (1 - m) + m * z, ctx.prompt).float())
        return soft_dice(probs, base_mask)

    torch.manual_seed(seed)
    attr = NoiseTunnel(IntegratedGradients(masked)).attribute(
        x, nt_type="smoothgrad", nt_samples=n, stdevs=std, baselines=torch.zeros_like(x), n_steps=steps)
    expected = attr[0].sum(0).detach().numpy()
    outside = ~ctx.roi_model.numpy()
    assert np.abs(expected[~outside]).max() > 1e-5
    assert np.all(ex.model_heatmap[outside] == 0)
    assert np.all(ex.heatmap[~roi] == 0)
    np.testing.assert_allclose(ex.model_heatmap, expected, atol=1e-5 * np.abs(expected).max())
    for h in partial:
        assert h is None or np.all(h[outside] == 0)


# --------------------------------------------------------------------------- occlusion, ROI mode


def test_roi_occlusion_model_map_is_zero_outside_the_roi(conv_seg):
    # by definition: each window touching the ROI, zero-filled, scored with soft Dice against the
    # baseline mask; a pixel's value is the mean attribution of the evaluated windows covering it
    seg = conv_seg
    sl = np.random.default_rng(1).uniform(0.2, 1.0, (S, S)).astype(np.float32)
    roi = _roi(S)
    patch, stride = 8, 4
    ex = explain("occlusion", seg, sl, box=BOX, roi=roi, window=patch, stride=stride, target="soft-dice")

    ctx = Context(seg, sl, box=BOX)

    def f(img):
        return float(soft_dice(torch.sigmoid(seg.logits(img, ctx.prompt).float()), ctx.base_mask)[0])

    with torch.no_grad():
        base = f(ctx.x[None])
        total, count = np.zeros((S, S)), np.zeros((S, S))
        for y in range(0, S - patch + 1, stride):
            for x0 in range(0, S - patch + 1, stride):
                if not roi[y:y + patch, x0:x0 + patch].any():
                    continue
                img = ctx.x[None].clone()
                img[..., y:y + patch, x0:x0 + patch] = 0.0
                total[y:y + patch, x0:x0 + patch] += base - f(img)
                count[y:y + patch, x0:x0 + patch] += 1
    expected = np.where(roi, total / np.maximum(count, 1), 0.0)
    assert np.abs(expected).max() > 1e-4
    assert np.all(ex.model_heatmap[~roi] == 0)
    np.testing.assert_allclose(ex.model_heatmap, expected, atol=1e-6)
    assert np.all(ex.heatmap[~roi] == 0)


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("method,params", [
    ("occlusion", {"window": 8, "stride": 8}), ("adaptive-occlusion", {"window": 8, "stride": 8}),
    ("rise", {"n_samples": 16}), ("lime", {"n_samples": 16}), ("ig", {"n_steps": 4, "n_samples": 2}),
    ("gradcam", {}), ("causal", {"n_samples": 2, "n_screen": 1, "threshold_dice": 0.0}),
])
def test_every_roi_mode_map_is_zero_outside_the_roi_at_both_resolutions(method, params):
    from napari_xaiclip.roi import roi_to_model

    rng = np.random.default_rng(3)
    sl = rng.random((32, 32)).astype(np.float32)
    sl[8:20, 8:20] += 1.0
    roi = np.zeros((32, 32), bool)
    roi[5:19, 11:27] = True  # not aligned with any window or block grid
    seg = make_segmenter(TinyConvNet(in_channels=2, seed=3), 32, box="channel")
    ex = explain(method, seg, sl, box=(6, 6, 22, 22), roi=roi, seed=0, **params)
    outside_model = ~roi_to_model(roi, 32, seg.keep_aspect).astype(bool)
    assert np.all(ex.model_heatmap[outside_model] == 0), method
    assert np.all(ex.heatmap[~roi] == 0), method
