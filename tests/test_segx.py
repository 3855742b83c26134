"""SegX / SegU: SegU bounds and constructed values, SegX zero outside the mask, display = top 5 %
inside the mask, and the base explainer's cost and progress passed through."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from torch import nn

from napari_xaiclip.explain import explain, iter_explain
from napari_xaiclip.explain import segx as segx_mod
from napari_xaiclip.explain.segx import segu, top_percent_mask
from napari_xaiclip.metrics import pointing_game

from toy_models import TinyConvNet, make_segmenter

torch.set_num_threads(1)

S = 32
BOX = (8, 6, 24, 26)


BANK = np.full((3, 1, S, S), 0.2, np.float32)


class TwoBlockNet(nn.Module):
    """test_causal's toy: logit = 4 square - 4 + 4 mean(x[0:8, 0:8]) - 2 mean(x[24:32, 0:8])."""

    def __init__(self):
        super().__init__()
        sq = torch.zeros(S, S)
        sq[12:20, 12:20] = 1.0
        self.register_buffer("sq", sq)

    def forward(self, x):
        ka = x[:, 0, 0:8, 0:8].mean((-2, -1))[:, None, None]
        kb = x[:, 0, 24:32, 0:8].mean((-2, -1))[:, None, None]
        return (4 * self.sq - 4 + 4 * ka - 2 * kb)[:, None]


# --------------------------------------------------------------------------- SegU by hand


def test_segu_bounds_and_a_constructed_value():
    region = np.zeros((8, 8), bool)
    region[2:6, 2:6] = True
    inside = np.where(region, 1.0, 0.0)
    outside = np.where(region, 0.0, 2.0)
    assert segu(inside, region) == 0.0
    assert segu(outside, region) == 1.0
    # 75 % of the positive mass inside: 16 px x 3 inside, 48 px x 0.333.. outside -> 48 vs 16
    mixed = np.where(region, 3.0, 1.0 / 3.0)
    assert segu(mixed, region) == pytest.approx(0.25)
    # negative values and NaN do not count as mass
    signed = mixed.copy()
    signed[0, :] = -50.0
    signed[1, 0] = np.nan
    expected = 1 - 48 / (48 + (48 - 8 - 1) / 3)
    assert segu(signed, region) == pytest.approx(expected)
    # no positive mass at all: maximal uncertainty
    assert segu(-inside, region) == 1.0
    assert segu(np.zeros((8, 8)), region) == 1.0


def test_segu_values_lie_in_the_unit_interval():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h = rng.normal(size=(6, 7))
        r = rng.random((6, 7)) < 0.4
        v = segu(h, r)
        assert 0.0 <= v <= 1.0
        pg = pointing_game(h, r)
        assert v == pytest.approx(1.0 - pg if pg is not None else 1.0)


def test_segu_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"heatmap of shape \(4, 4\) does not match the region \(4, 5\)"):
        segu(np.zeros((4, 4)), np.zeros((4, 5), bool))


def test_top_percent_mask_counts():
    v = np.arange(100.0).reshape(10, 10)
    m = np.zeros((10, 10), bool)
    m[:, :4] = True  # 40 px
    top = top_percent_mask(v, m, 5.0)
    assert top.sum() == 2 and np.all(m[top])
    assert set(v[top]) == {93.0, 92.0}  # the two largest values inside the mask (rows 9, columns 2, 3)
    assert top_percent_mask(v, np.zeros_like(m), 5.0).sum() == 0
    assert top_percent_mask(v, m, 0.1).sum() == 1  # at least one pixel


def test_doctests():
    assert doctest.testmod(segx_mod, raise_on_error=False).failed == 0


# --------------------------------------------------------------------------- SegX through explain


@pytest.fixture(scope="module")
def conv():
    seg = make_segmenter(TinyConvNet(in_channels=2, seed=3), S, box="channel")
    seg.gflops  # noqa: B018
    sl = np.random.default_rng(0).uniform(0.2, 1.0, (S, S)).astype(np.float32)
    return seg, sl


def test_segx_map_is_the_explanation_inside_the_mask(conv):
    seg, sl = conv
    base = explain("occlusion", seg, sl, box=BOX, window=8)
    ex = explain("segx", seg, sl, box=BOX, base="occlusion", base_params={"window": 8}, top_percent=5.0)
    mask = ex.baseline_mask
    assert 0 < mask.sum() < S * S
    np.testing.assert_allclose(ex.maps["base"], base.model_heatmap, atol=1e-6)
    np.testing.assert_allclose(ex.maps["segx"], np.where(mask, base.model_heatmap, 0.0), atol=1e-6)
    assert np.all(ex.heatmap[~mask] == 0) and np.all(ex.maps["segx"][~mask] == 0)
    # display: the top 5 % of the mask's pixels, ranked independently here
    k = max(1, int(round(0.05 * mask.sum())))
    order = np.argsort(-np.where(mask, ex.maps["segx"], -np.inf).ravel(), kind="stable")[:k]
    expected = np.zeros(S * S, bool)
    expected[order] = True
    expected = expected.reshape(S, S)
    np.testing.assert_allclose(ex.maps["display"], np.where(expected, ex.maps["segx"], 0.0), atol=1e-6)
    kept = ex.maps["segx"][expected]
    rest = ex.maps["segx"][mask & ~expected]
    assert kept.min() >= rest.max()
    # SegU of the base map against the baseline mask; cost is the base explainer's
    assert ex.info["segu"] == pytest.approx(1.0 - pointing_game(base.model_heatmap, mask))
    assert ex.info["base"] == "occlusion" and ex.info["segu_region"] == "baseline mask"
    assert ex.n_forward == base.n_forward
    assert (ex.n_patch, ex.n_patch_full) == (base.n_patch, base.n_patch_full)
    assert ex.gflops == pytest.approx(base.gflops)
    assert ex.params["base"] == "occlusion" and ex.params["base_params"]["window"] == 8


def test_segx_forwards_the_base_progress(conv):
    seg, sl = conv
    gen = iter_explain("segx", seg, sl, box=BOX, base="occlusion", base_params={"window": 8}, batch_size=10)
    stages = []
    while True:
        try:
            stages.append(next(gen).stage)
        except StopIteration as stop:
            ex = stop.value
            break
    n_windows = 7 * 7  # patch 8, stride 4 on 32 px
    assert stages.count("occlusion") == 1 + -(-n_windows // 10)
    assert stages[-1] == "segx"
    assert ex.method == "segx"


def test_causal_is_refused_as_base_because_its_segx_map_would_be_zero():
    seg = make_segmenter(TwoBlockNet(), S)
    sl = np.full((S, S), 0.1, np.float32)
    params = {"window": 8, "n_samples": 4, "filler_bank": BANK}
    with pytest.raises(ValueError, match="segx.base must be one of .*causal scores only blocks outside the segmentation"):
        explain("segx", seg, sl, base="causal", base_params=params)


def test_a_causal_map_is_positive_where_the_block_supports_the_segmentation():
    """One sign for every method: block A's replacement costs the whole Dice, so it supports (+100)."""
    seg = make_segmenter(TwoBlockNet(), S)
    sl = np.full((S, S), 0.1, np.float32)
    sl[0:8, 0:8] = 1.0
    sl[24:32, 0:8] = 1.0
    ex = explain("causal", seg, sl, window=8, n_samples=4, filler_bank=BANK)
    np.testing.assert_allclose(ex.model_heatmap[0:8, 0:8], 100.0, atol=1e-4)
    assert ex.model_heatmap.max() == pytest.approx(100.0, abs=1e-4)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(base="segx"), r"segx.base must be one of .*'segx': segx cannot build on itself"),
    (dict(base="shap"), r"segx.base must be one of occlusion, adaptive-occlusion, rise, lime, ig, gradcam, got 'shap'$"),
    (dict(base_params={"patches": 3}), r"unknown parameter 'patches' for occlusion"),
    (dict(top_percent=0), r"segx.top_percent must be >= 1e-09"),
    (dict(top_percent=101), r"segx.top_percent must be <= 100"),
])
def test_bad_parameters_raise(conv, kwargs, pattern):
    seg, sl = conv
    with pytest.raises(ValueError, match=pattern):
        explain("segx", seg, sl, box=BOX, **kwargs)
