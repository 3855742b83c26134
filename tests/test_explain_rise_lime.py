"""RISE and LIME on toy models whose answers are known in closed form.

The toy segmenter returns its input as probabilities (``IdentityProbNet``) and
the target is linear in them, f(x') = sum(W * x'), so:

* RISE: with masks M (grid g, cell c, bilinear upsampling, uniform shift),
  E[M_i M_j] = p1^2 + p1 (1 - p1) A(r_i, r_j) A(c_i, c_j), where
  A(r, r') = mean over shifts s of sum_a K[s + r, a] K[s + r', a] and K is the
  1D bilinear (align_corners=False) interpolation matrix. The expected saliency
  E[f M_i] / p1 is then p1 * sum(C) + (1 - p1) * (A C A^T)_i with C = W * x.
* LIME with fill "zero" on flat superpixels: f(z) = sum_k w_k mu_k z_k exactly,
  so the surrogate's coefficients are w_k * mu_k (mu_k the region's mean).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import napari_xaiclip.explain.lime as lime_mod
import napari_xaiclip.explain.rise as rise_mod
from napari_xaiclip.explain import explain
from napari_xaiclip.explain.lime import restrict_to_roi, superpixels, weighted_ridge
from napari_xaiclip.explain.rise import rise_masks

from toy_models import IdentityProbNet, LinearProbTarget, make_segmenter

torch.set_num_threads(1)


# --------------------------------------------------------------------------- RISE: analytic expectation


def _interp_matrix(n: int, m: int) -> np.ndarray:
    """(m, n) 1D bilinear interpolation, align_corners=False, source index clamped at 0 (PyTorch's rule)."""
    k = np.zeros((m, n))
    for u in range(m):
        src = max((u + 0.5) * n / m - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n - 1)
        i1 = min(i0 + 1, n - 1)
        frac = src - i0
        k[u, i0] += 1 - frac
        k[u, i1] += frac
    return k


def _shift_averaged_overlap(size: int, grid: int) -> np.ndarray:
    cell = math.ceil(size / grid)
    k = _interp_matrix(grid, (grid + 1) * cell)
    a = np.zeros((size, size))
    for s in range(cell):
        ks = k[s:s + size]
        a += ks @ ks.T
    return a / cell


def _rise_expected(c: np.ndarray, grid: int, p1: float) -> np.ndarray:
    a = _shift_averaged_overlap(c.shape[0], grid)
    return p1 * c.sum() + (1 - p1) * a @ c @ a.T


def test_interp_matrix_matches_torch():
    # the analytic expectation rests on this matrix: check it against F.interpolate once
    import torch.nn.functional as F

    n, m = 7, 40
    eye = torch.eye(n * n, dtype=torch.float64).reshape(n * n, 1, n, n)
    up = F.interpolate(eye, size=(m, m), mode="bilinear", align_corners=False)[:, 0].numpy()
    k = _interp_matrix(n, m)
    np.testing.assert_allclose(up, np.einsum("ua,vb->abuv", k, k).reshape(n * n, m, m), atol=1e-12)


def test_rise_masks_first_and_second_moments():
    # E[M] = p1 everywhere; E[M_i M_j] as derived above (Monte Carlo, 4000 masks)
    size, grid, p1 = 24, 5, 0.5
    g = torch.Generator().manual_seed(11)
    m = rise_masks(4000, size, grid, p1, generator=g).double().numpy().reshape(4000, -1)
    assert m.min() >= 0 and m.max() <= 1 + 1e-6  # bilinear weights sum to 1 up to float rounding
    assert abs(m.mean() - p1) < 0.01
    a = _shift_averaged_overlap(size, grid)
    second = p1 ** 2 + p1 * (1 - p1) * np.einsum("ik,jl->ijkl", a, a).reshape(size * size, size * size)
    est = m.T @ m / len(m)
    assert np.abs(est - second).max() < 0.03


S_RISE = 32


@pytest.fixture(scope="module")
def rise_setup():
    rng = np.random.default_rng(1)
    sl = rng.uniform(0.3, 0.9, (S_RISE, S_RISE)).astype(np.float32)
    yy, xx = np.mgrid[:S_RISE, :S_RISE]
    w = np.exp(-((yy - 9) ** 2 + (xx - 22) ** 2) / (2 * 4.0 ** 2)).astype(np.float32)
    seg = make_segmenter(IdentityProbNet(), S_RISE)
    seg.gflops  # cached cost measurement, one forward: before any counting  # noqa: B018
    return seg, sl, w


def test_rise_recovers_linear_saliency(rise_setup):
    seg, sl, w = rise_setup
    n, grid, p1 = 2000, 7, 0.5
    ex = explain("rise", seg, sl, target=LinearProbTarget(w), n_samples=n, cells=grid, p1=p1, normalize=False,
                 batch_size=64)
    expected = _rise_expected(w * sl, grid, p1)
    got = ex.model_heatmap.astype(np.float64)
    corr = np.corrcoef(got.ravel(), expected.ravel())[0, 1]
    assert corr > 0.9
    # the level is right too, not only the shape (mean within 3 %)
    assert got.mean() == pytest.approx(expected.mean(), rel=0.03)
    # the peak is where the weights are
    py, px = np.unravel_index(np.argmax(got), got.shape)
    assert abs(py - 9) <= 4 and abs(px - 22) <= 4


def test_rise_is_the_weighted_mask_sum(rise_setup, monkeypatch):
    # saliency = sum_i f_i M_i / (N p1), with f computed here from the recorded masks
    seg, sl, w = rise_setup
    seen = []
    real = rise_mod.rise_masks

    def recording(n, *args, **kwargs):
        m = real(n, *args, **kwargs)
        seen.append(m.clone())
        return m

    monkeypatch.setattr(rise_mod, "rise_masks", recording)
    n, p1 = 250, 0.4
    ex = explain("rise", seg, sl, target=LinearProbTarget(w), n_samples=n, cells=5, p1=p1, normalize=False,
                 batch_size=64)
    masks = torch.cat(seen).double().numpy()
    assert masks.shape == (n, S_RISE, S_RISE)
    f = np.einsum("nij,ij->n", masks, (w * sl).astype(np.float64))
    expected = np.einsum("n,nij->ij", f, masks) / (n * p1)
    np.testing.assert_allclose(ex.model_heatmap, expected, rtol=1e-4, atol=1e-5)
    # relevance: mean probability inside the baseline mask (probs = x, so the mask is x > 0.5)
    base = (sl > 0.5).astype(np.float64)
    f_rel = np.einsum("nij,ij->n", masks, sl * base / base.sum())
    expected_rel = np.einsum("n,nij->ij", f_rel, masks) / (n * p1)
    np.testing.assert_allclose(ex.maps["relevance"], expected_rel, rtol=1e-4, atol=1e-6)


def test_centred_rise_subtracts_the_mean_score(rise_setup, monkeypatch):
    # center=True: sum_i (f_i - mean f) M_i / (N p1); the mask-coverage pattern drops out
    seg, sl, w = rise_setup
    seen = []
    real = rise_mod.rise_masks
    monkeypatch.setattr(rise_mod, "rise_masks", lambda n, *a, **k: seen.append(real(n, *a, **k)) or seen[-1])
    n, p1 = 200, 0.5
    ex = explain("rise", seg, sl, target=LinearProbTarget(w), n_samples=n, cells=5, p1=p1, normalize=False,
                 center=True, batch_size=48)
    masks = torch.cat(seen).double().numpy()
    f = np.einsum("nij,ij->n", masks, (w * sl).astype(np.float64))
    expected = np.einsum("n,nij->ij", f - f.mean(), masks) / (n * p1)
    np.testing.assert_allclose(ex.model_heatmap, expected, rtol=1e-4, atol=1e-5)
    assert ex.params["center"] is True


def test_rise_masks_are_made_per_batch(rise_setup, monkeypatch):
    seg, sl, w = rise_setup
    sizes = []
    real = rise_mod.rise_masks

    def recording(n, *args, **kwargs):
        sizes.append(int(n))
        return real(n, *args, **kwargs)

    monkeypatch.setattr(rise_mod, "rise_masks", recording)
    counter = seg.module
    counter.reset()
    ex = explain("rise", seg, sl, n_samples=300, batch_size=32)
    assert max(sizes) <= 32
    assert sum(sizes) == 300
    assert ex.n_forward == 301 == counter.images


@pytest.mark.parametrize("normalise", [True, False])
def test_rise_roi_constrained(rise_setup, normalise):
    seg, sl, w = rise_setup
    roi = np.zeros(sl.shape, bool)
    roi[4:20, 12:30] = True
    x = torch.as_tensor(sl)
    outside_change = []
    hook = seg.module.register_forward_pre_hook(
        lambda m, inp: outside_change.append(float((inp[0][:, 0] - x).abs()[:, ~torch.as_tensor(roi)].max())))
    try:
        ex = explain("rise", seg, sl, roi=roi, target=LinearProbTarget(w), n_samples=200, batch_size=50,
                     normalize=normalise)
    finally:
        hook.remove()
    assert ex.mode == "roi"
    assert max(outside_change) == 0.0  # the multiplier is exactly 1 outside the ROI
    for m in (ex.heatmap, ex.maps["fidelity"], ex.maps["relevance"]):
        assert np.all(m[~roi] == 0)
        assert np.any(m[roi] != 0)
    if normalise:
        assert np.all(ex.model_heatmap[~roi] == 0)
        for m in (ex.heatmap, ex.maps["fidelity"], ex.maps["relevance"]):
            assert m[roi].min() == pytest.approx(0.0, abs=1e-6) and m[roi].max() == pytest.approx(1.0, abs=1e-6)


def test_rise_normalised_maps_in_unit_range(rise_setup):
    seg, sl, w = rise_setup
    ex = explain("rise", seg, sl, target=LinearProbTarget(w), n_samples=200, batch_size=64)
    assert set(ex.maps) >= {"fidelity", "relevance"}
    np.testing.assert_array_equal(ex.maps["fidelity"], ex.heatmap)
    for m in (ex.heatmap, ex.maps["fidelity"], ex.maps["relevance"]):
        assert m.shape == sl.shape and np.isfinite(m).all()
        assert m.min() >= -1e-6 and m.max() <= 1 + 1e-6
        assert m.min() == pytest.approx(0.0, abs=1e-6) and m.max() == pytest.approx(1.0, abs=1e-6)


def test_rise_same_seed_same_map_and_batch_size_independent(rise_setup):
    seg, sl, w = rise_setup
    a = explain("rise", seg, sl, n_samples=100, batch_size=64, seed=3)
    b = explain("rise", seg, sl, n_samples=100, batch_size=64, seed=3)
    c = explain("rise", seg, sl, n_samples=100, batch_size=64, seed=4)
    np.testing.assert_array_equal(a.heatmap, b.heatmap)
    assert not np.array_equal(a.heatmap, c.heatmap)


# --------------------------------------------------------------------------- LIME

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
    # the target: sum_k w_k * mean(probs in region k)
    sizes = np.bincount(regions.ravel())
    wmap = (WEIGHTS / sizes)[regions].astype(np.float32)
    seg = make_segmenter(IdentityProbNet(), S_LIME)
    seg.gflops  # noqa: B018
    return seg, sl, regions, wmap


def test_felzenszwalb_finds_the_flat_regions(lime_setup):
    _, sl, regions, _ = lime_setup
    grey = (sl - sl.min()) / (sl.max() - sl.min())
    labels = superpixels(grey)  # defaults: scale 100, sigma 0.5, min_size 50
    assert labels.max() + 1 == 5
    for k in range(5):
        assert len(np.unique(labels[regions == k])) == 1
    assert len({int(np.unique(labels[regions == k])[0]) for k in range(5)}) == 5


def _label_of(labels, regions, k):
    return int(np.unique(labels[regions == k])[0])


def test_lime_recovers_linear_superpixel_weights(lime_setup):
    seg, sl, regions, wmap = lime_setup
    counter = seg.module
    counter.reset()
    ex = explain("lime", seg, sl, target=LinearProbTarget(wmap), fill="zero", n_samples=400, alpha=1e-3,
                 batch_size=64)
    assert ex.n_patch == ex.n_patch_full == 5 and ex.rho == 1.0
    assert ex.n_forward == 401 == counter.images
    expected = WEIGHTS * VALUES
    for k in range(5):
        vals = ex.model_heatmap[regions == k]
        assert np.ptp(vals) == 0  # one value per superpixel
        assert vals[0] == pytest.approx(expected[k], abs=2e-3), f"region {k}"
    np.testing.assert_allclose(ex.heatmap, ex.model_heatmap, atol=1e-6)


def test_lime_samples_weights_and_scores(lime_setup, monkeypatch):
    # what reaches the surrogate: the all-on anchor, the kernel sqrt(exp(-d^2 / width^2)) on the
    # cosine distance to the all-on vector, and the exact linear scores
    seg, sl, regions, wmap = lime_setup
    captured = {}
    real = lime_mod.weighted_ridge

    def recording(z, y, w, alpha=1.0):
        captured.update(z=z.copy(), y=y.copy(), w=w.copy(), alpha=alpha)
        return real(z, y, w, alpha)

    monkeypatch.setattr(lime_mod, "weighted_ridge", recording)
    explain("lime", seg, sl, target=LinearProbTarget(wmap), fill="zero", n_samples=60, alpha=0.5,
            kernel_width=0.3)
    z, y, w = captured["z"], captured["y"], captured["w"]
    assert z.shape == (60, 5) and captured["alpha"] == 0.5
    assert np.all(z[0] == 1)
    on = z.sum(1)
    cos = np.where(on > 0, on / (np.sqrt(on) * np.sqrt(5) + 1e-300), 0.0)
    np.testing.assert_allclose(w, np.sqrt(np.exp(-((1 - cos) ** 2) / 0.3 ** 2)), rtol=1e-9)
    grey = (sl - sl.min()) / (sl.max() - sl.min())
    labels = superpixels(grey)
    contrib = np.zeros(5)
    for k in range(5):
        contrib[_label_of(labels, regions, k)] = WEIGHTS[k] * VALUES[k]
    np.testing.assert_allclose(y, z @ contrib, atol=1e-4)


def test_lime_roi_mode(lime_setup):
    seg, sl, regions, wmap = lime_setup
    roi = (regions == 0) | (regions == 2)
    roi[32:, 32:40] = True  # half of region 4
    counter = seg.module
    counter.reset()
    ex = explain("lime", seg, sl, roi=roi, target=LinearProbTarget(wmap), fill="zero", n_samples=300,
                 alpha=1e-3)
    assert ex.mode == "roi"
    assert ex.n_patch == 3 and ex.n_patch_full == 5
    assert ex.rho == pytest.approx(3 / 5)
    assert ex.n_forward == 301 == counter.images
    assert np.all(ex.heatmap[~roi] == 0)
    # whole regions inside: w_k mu_k; the cut region: w_4 * (its ROI part's sum) / |region 4|
    for k in (0, 2):
        np.testing.assert_allclose(ex.heatmap[regions == k], WEIGHTS[k] * VALUES[k], atol=2e-3)
    part = roi & (regions == 4)
    expected4 = WEIGHTS[4] * sl[part].sum() / (regions == 4).sum()
    np.testing.assert_allclose(ex.heatmap[part], expected4, atol=2e-3)


def test_restrict_to_roi_renumbers():
    labels = np.array([[0, 0, 3, 3], [5, 5, 3, 7]])
    roi = np.array([[True, False, True, True], [False, False, True, True]])
    out = restrict_to_roi(labels, roi)
    np.testing.assert_array_equal(out, [[0, -1, 1, 1], [-1, -1, 1, 2]])


# --------------------------------------------------------------------------- weighted ridge


def _independent_ridge(z, y, w, alpha):
    zm = (w[:, None] * z).sum(0) / w.sum()
    ym = (w * y).sum() / w.sum()
    sw = np.sqrt(w)[:, None]
    a = sw * (z - zm)
    b = np.sqrt(w) * (y - ym)
    if alpha > 0:  # ridge as least squares on rows augmented with sqrt(alpha) * I
        a = np.vstack([a, np.sqrt(alpha) * np.eye(z.shape[1])])
        b = np.concatenate([b, np.zeros(z.shape[1])])
    coef = np.linalg.lstsq(a, b, rcond=None)[0]
    return coef, ym - zm @ coef


@pytest.mark.parametrize("alpha", [0.0, 0.7, 5.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_ridge_matches_least_squares(alpha, seed):
    rng = np.random.default_rng(seed)
    z = (rng.random((40, 6)) < 0.5).astype(float)
    y = rng.normal(size=40)
    w = rng.uniform(0.1, 2.0, 40)
    coef, icpt = weighted_ridge(z, y, w, alpha)
    coef_ref, icpt_ref = _independent_ridge(z, y, w, alpha)
    np.testing.assert_allclose(coef, coef_ref, atol=1e-9)
    assert icpt == pytest.approx(icpt_ref, abs=1e-9)


def test_weighted_ridge_exact_on_noise_free_data():
    rng = np.random.default_rng(3)
    z = (rng.random((30, 4)) < 0.5).astype(float)
    beta = np.array([1.5, -2.0, 0.0, 0.25])
    y = z @ beta + 0.7
    coef, icpt = weighted_ridge(z, y, rng.uniform(0.5, 1.5, 30), alpha=0.0)
    np.testing.assert_allclose(coef, beta, atol=1e-10)
    assert icpt == pytest.approx(0.7, abs=1e-10)
