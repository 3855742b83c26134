"""Integrated gradients against Captum called directly, the IG completeness axiom,
ROI mode, and Grad-CAM on a tiny conv net (DESIGN.md 2.3, 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_xaiclip.explain import explain
from napari_xaiclip.explain.base import Context

from toy_models import TinyConvNet, box_channel, make_segmenter, soft_dice

torch.set_num_threads(1)

S = 32
BOX = (8, 6, 24, 26)


@pytest.fixture(scope="module")
def setup():
    seg = make_segmenter(TinyConvNet(in_channels=2, seed=3), S, box="channel")
    seg.gflops  # cached cost measurement (one forward): before any counting  # noqa: B018
    sl = np.random.default_rng(0).uniform(0.2, 1.0, (S, S)).astype(np.float32)
    with torch.no_grad():
        net_in = torch.cat([torch.as_tensor(sl)[None, None], box_channel(BOX, S)], 1)
        base_mask = torch.sigmoid(seg.module.inner(net_in))[0, 0] > 0.5
    assert base_mask.any()
    return seg, sl, base_mask


def _forward(seg, prompt, base_mask, target):
    def f(x):
        logits = seg.logits(x, prompt).float()
        if target == "soft-dice":
            return soft_dice(torch.sigmoid(logits), base_mask)
        return (logits * base_mask.float()).sum((-2, -1))  # logit-sum
    return f


@pytest.mark.parametrize("target", ["soft-dice", "logit-sum"])
@pytest.mark.parametrize("n_steps,bs", [(16, 8), (20, 64), (7, 3)])
def test_ig_equals_captum(setup, target, n_steps, bs):
    from captum.attr import IntegratedGradients

    seg, sl, base_mask = setup
    counter = seg.module
    counter.reset()
    ex = explain("ig", seg, sl, box=BOX, n_samples=0, n_steps=n_steps, batch_size=bs, target="soft-dice"
                 if target == "soft-dice" else "logit-sum")
    assert counter.images == ex.n_forward == n_steps + 1
    ctx = Context(seg, sl, box=BOX)
    x = ctx.x[None].clone()
    ig = IntegratedGradients(_forward(seg, ctx.prompt, base_mask, target))
    attr = ig.attribute(x, baselines=torch.zeros_like(x), n_steps=n_steps, internal_batch_size=bs)
    expected = attr[0].sum(0).detach().numpy()
    assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(ex.model_heatmap, expected, atol=1e-5 * max(1.0, np.abs(expected).max()))
    assert ex.target == target


def test_ig_completeness(setup):
    # sum of attributions = f(x) - f(baseline) (Sundararajan et al.), computed without Captum
    seg, sl, base_mask = setup
    ex = explain("ig", seg, sl, box=BOX, n_samples=0, n_steps=64, target="soft-dice")
    ctx = Context(seg, sl, box=BOX)
    f = _forward(seg, ctx.prompt, base_mask, "soft-dice")
    with torch.no_grad():
        delta = float(f(ctx.x[None]) - f(torch.zeros_like(ctx.x[None])))
    assert abs(delta) > 1e-3
    assert ex.model_heatmap.sum() == pytest.approx(delta, rel=0.02, abs=1e-4)


def test_ig_noise_tunnel_equals_captum_with_the_same_seed(setup):
    from captum.attr import IntegratedGradients, NoiseTunnel

    seg, sl, base_mask = setup
    ex = explain("ig", seg, sl, box=BOX, n_samples=3, stdevs=0.1, n_steps=8, batch_size=8, target="soft-dice",
                 seed=1234)  # the explainer seeds NoiseTunnel's noise with the call's seed
    ctx = Context(seg, sl, box=BOX)
    x = ctx.x[None].clone()
    nt = NoiseTunnel(IntegratedGradients(_forward(seg, ctx.prompt, base_mask, "soft-dice")))
    torch.manual_seed(1234)
    attr = nt.attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.1, baselines=torch.zeros_like(x),
                        n_steps=8, internal_batch_size=8)
    expected = attr[0].sum(0).detach().numpy()
    np.testing.assert_allclose(ex.model_heatmap, expected, atol=1e-5 * max(1.0, np.abs(expected).max()))
    assert ex.n_forward == 1 + 3 * 8
    assert np.isfinite(ex.heatmap).all() and ex.heatmap.shape == sl.shape


def test_ig_noise_tunnel_reproducible_for_a_seed(setup):
    seg, sl, _ = setup
    a = explain("ig", seg, sl, box=BOX, n_samples=2, n_steps=4, seed=7)
    b = explain("ig", seg, sl, box=BOX, n_samples=2, n_steps=4, seed=7)
    np.testing.assert_array_equal(a.heatmap, b.heatmap)


def test_ig_roi_mode_zero_outside(setup):
    seg, sl, base_mask = setup
    roi = np.zeros((S, S), bool)
    roi[10:22, 12:20] = True
    ex = explain("ig", seg, sl, box=BOX, roi=roi, n_samples=0, n_steps=32, target="soft-dice")
    assert ex.mode == "roi"
    # the path only moves inside the ROI: attributions are exactly zero outside it, at model resolution too
    assert np.all(ex.model_heatmap[~roi] == 0)
    assert np.all(ex.heatmap[~roi] == 0)
    assert np.abs(ex.heatmap[roi]).max() > 1e-5
    # completeness along that path: f(x) - f(x with the ROI set to the baseline 0)
    ctx = Context(seg, sl, box=BOX)
    f = _forward(seg, ctx.prompt, base_mask, "soft-dice")
    start = ctx.x[None].clone()
    start[..., torch.as_tensor(roi)] = 0.0
    with torch.no_grad():
        delta = float(f(ctx.x[None]) - f(start))
    assert ex.model_heatmap.sum() == pytest.approx(delta, rel=0.03, abs=1e-4)


def test_ig_default_target_is_soft_dice(setup):
    seg, sl, _ = setup
    ex = explain("ig", seg, sl, box=BOX, n_samples=0, n_steps=4)  # context target "dice" is not differentiable
    assert ex.target == "soft-dice"


@pytest.mark.parametrize("method", ["ig", "gradcam"])
def test_gradient_explanation_reports_the_target_it_explained(setup, method):
    seg, sl, _ = setup
    extra = dict(n_steps=4, n_samples=0) if method == "ig" else {}
    ex = explain(method, seg, sl, box=BOX, target="dice", **extra)
    assert ex.target == "soft-dice"  # what was actually differentiated
    assert ex.summary()["target"] == "soft-dice"


@pytest.mark.parametrize("layer", ["inner.conv1", "inner.conv2", None])
def test_gradcam_runs_on_named_layer(setup, layer):
    seg, sl, _ = setup
    counter = seg.module
    counter.reset()
    ex = explain("gradcam", seg, sl, box=BOX, layer=layer)
    assert ex.params["layer"] == (layer or "inner.conv2")  # default: the last convolution
    assert ex.heatmap.shape == sl.shape
    assert np.isfinite(ex.heatmap).all()
    assert ex.heatmap.min() >= 0  # relu=True keeps positive evidence only
    assert ex.n_forward == 2 == counter.images


def test_gradcam_matches_captum_layer_gradcam(setup):
    from captum.attr import LayerAttribution, LayerGradCam

    seg, sl, base_mask = setup
    ex = explain("gradcam", seg, sl, box=BOX, layer="inner.conv1", relu=False)
    ctx = Context(seg, sl, box=BOX)
    cam = LayerGradCam(_forward(seg, ctx.prompt, base_mask, "soft-dice"), seg.module.inner.conv1)
    attr = cam.attribute(ctx.x[None].clone(), relu_attributions=False)
    up = LayerAttribution.interpolate(attr, (S, S), interpolate_mode="bilinear")[0, 0].detach().numpy()
    assert np.abs(up).max() > 0
    np.testing.assert_allclose(ex.model_heatmap, up, atol=1e-6 * max(1.0, np.abs(up).max()))
