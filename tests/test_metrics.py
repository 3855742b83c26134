"""napari_xaiclip.metrics against hand-worked cases and brute-force computations (DESIGN.md 2.5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.ndimage import gaussian_filter
from skimage.filters import threshold_otsu

from napari_xaiclip import metrics
from napari_xaiclip.explain import explain
from napari_xaiclip.explain.base import Context
from napari_xaiclip.metrics import (auc_roc, deletion_insertion, dice, heatmap_metrics, iou, pointing_game,
                                    randomization_check, randomize_segmenter, spearman, threshold_heatmap,
                                    topk_iou, topk_mask)

from toy_models import IdentityProbNet, LinearProbTarget, StructuredNet, TinyConvNet, make_segmenter

torch.set_num_threads(1)


# --------------------------------------------------------------------------- overlap


@pytest.mark.parametrize("a,b,d,j", [
    ([1, 1, 0, 0], [1, 0, 1, 0], 0.5, 1 / 3),
    ([1, 1, 1, 0], [1, 1, 1, 0], 1.0, 1.0),
    ([1, 0, 0, 0], [0, 1, 0, 0], 0.0, 0.0),
    ([0, 0, 0, 0], [0, 0, 0, 0], 1.0, 1.0),  # both empty: perfect agreement
    ([1, 1, 1, 1], [1, 0, 0, 0], 0.4, 0.25),
])
def test_dice_iou_hand_cases(a, b, d, j):
    assert dice(np.array(a), np.array(b)) == pytest.approx(d)
    assert iou(np.array(a), np.array(b)) == pytest.approx(j)
    assert dice(np.array(b), np.array(a)) == pytest.approx(d)


def test_dice_iou_relation_on_2d_masks():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.random((9, 7)) < 0.4, rng.random((9, 7)) < 0.6
        d, j = dice(a, b), iou(a, b)
        assert d == pytest.approx(2 * j / (1 + j))
        assert j == pytest.approx((a & b).sum() / (a | b).sum())


# --------------------------------------------------------------------------- AUC-ROC


def _auc_pairs(h, m):
    h, m = np.asarray(h, float).ravel(), np.asarray(m, bool).ravel()
    pos, neg = h[m], h[~m]
    wins = 0.0
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(6))
def test_auc_roc_equals_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(3, 8)), int(rng.integers(3, 8)))
    h = rng.integers(0, 4, shape).astype(float)  # few values: many ties
    m = rng.random(shape) < 0.4
    m.flat[0], m.flat[1] = True, False
    assert auc_roc(h, m) == pytest.approx(_auc_pairs(h, m), abs=1e-12)


def test_auc_roc_hand_cases():
    m = np.array([[1, 0], [1, 0]], bool)
    assert auc_roc(np.array([[0.9, 0.1], [0.8, 0.0]]), m) == 1.0
    assert auc_roc(np.array([[0.1, 0.9], [0.0, 0.8]]), m) == 0.0
    assert auc_roc(np.ones((2, 2)), m) == 0.5
    assert auc_roc(np.ones((2, 2)), np.zeros((2, 2), bool)) is None
    assert auc_roc(np.ones((2, 2)), np.ones((2, 2), bool)) is None


# --------------------------------------------------------------------------- pointing game, top-k, ranks


def test_pointing_game_hand_cases():
    h = np.array([[2.0, -1.0], [1.0, 1.0]])
    m = np.array([[1, 0], [0, 1]], bool)
    assert pointing_game(h, m) == pytest.approx(3 / 4)  # negative values carry no energy
    assert pointing_game(-np.ones((2, 2)), m) is None
    assert pointing_game(np.zeros((2, 2)), m) is None
    assert pointing_game(np.array([[1.0, 0.0], [0.0, 0.0]]), m) == 1.0


def test_topk_mask_hand_cases():
    v = np.array([[5.0, 3.0], [9.0, 1.0]])
    np.testing.assert_array_equal(topk_mask(v, 0.5), [[True, False], [True, False]])
    np.testing.assert_array_equal(topk_mask(v, 0.01), [[False, False], [True, False]])  # at least one pixel
    np.testing.assert_array_equal(topk_mask(v, 1.0), np.ones((2, 2), bool))
    within = np.array([[False, True], [False, True]])
    np.testing.assert_array_equal(topk_mask(v, 0.5, within), [[False, True], [False, False]])


def test_topk_iou_hand_case():
    a = np.array([4.0, 3.0, 2.0, 1.0, 0.0])
    b = np.array([4.0, 0.0, 2.0, 1.0, 3.0])
    # top 40 % = 2 pixels: {0, 1} vs {0, 4} -> IoU 1/3
    assert topk_iou(a, b, 0.4) == pytest.approx(1 / 3)
    assert topk_iou(a, a, 0.4) == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_spearman_equals_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((6, 5))
    b = a + rng.normal(0, 0.3, a.shape)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel()).statistic)
    within = rng.random(a.shape) < 0.5
    assert spearman(a, b, within) == pytest.approx(stats.spearmanr(a[within], b[within]).statistic)
    assert spearman(a, np.ones_like(a)) == 0.0
    assert spearman(a, -a) == pytest.approx(-1.0)


# --------------------------------------------------------------------------- thresholding


def test_threshold_heatmap_is_otsu_of_positive_part():
    rng = np.random.default_rng(1)
    h = np.concatenate([rng.normal(0.2, 0.02, 50), rng.normal(0.8, 0.02, 30), -rng.random(20)]).reshape(10, 10)
    pos = np.clip(h, 0, None)
    np.testing.assert_array_equal(threshold_heatmap(h), pos > threshold_otsu(pos))
    assert threshold_heatmap(h).sum() == 30


def test_threshold_heatmap_degenerate():
    assert not threshold_heatmap(-np.ones((3, 3))).any()
    assert not threshold_heatmap(np.zeros((3, 3))).any()
    np.testing.assert_array_equal(threshold_heatmap(np.full((3, 3), 2.0)), np.ones((3, 3), bool))
    two = np.array([[0.0, 0.5], [0.5, 0.0]])
    np.testing.assert_array_equal(threshold_heatmap(two), two > 0)
    nan = np.array([[np.nan, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(threshold_heatmap(nan), [[False, True], [False, False]])


def test_heatmap_metrics_combines_the_parts():
    rng = np.random.default_rng(2)
    h = rng.random((12, 12))
    base = h > 0.6
    gt = rng.random((12, 12)) < 0.3
    out = heatmap_metrics(h, base)
    thr = threshold_heatmap(h)
    assert out["dice_vs_baseline"] == dice(thr, base) and out["iou_vs_baseline"] == iou(thr, base)
    assert out["auc_vs_baseline"] == auc_roc(h, base) == 1.0
    assert out["pointing_game"] == pointing_game(h, base)
    assert out["dice_vs_gt"] is None and out["iou_vs_gt"] is None and out["auc_vs_gt"] is None
    out = heatmap_metrics(h, base, gt)
    assert out["dice_vs_gt"] == dice(thr, gt) and out["auc_vs_gt"] == auc_roc(h, gt)
    assert out["pointing_game"] == pointing_game(h, gt)


# --------------------------------------------------------------------------- deletion / insertion

S = 24


@pytest.fixture(scope="module")
def linear_ctx():
    """probs = input; target = sum(W x) / sum(W): importance of pixel j is W_j x_j, exactly."""
    rng = np.random.default_rng(3)
    sl = rng.uniform(0.2, 0.9, (S, S)).astype(np.float32)
    w = rng.uniform(0.0, 1.0, (S, S)).astype(np.float32)
    w /= w.sum()
    seg = make_segmenter(IdentityProbNet(), S)
    seg.gflops  # noqa: B018
    ctx = Context(seg, sl, target=LinearProbTarget(w))
    return ctx, sl.astype(np.float64), w.astype(np.float64)


def _curves(h, x, w, steps, canvas):
    order = np.argsort(-h.ravel(), kind="stable")
    cuts = np.round(np.linspace(0, h.size, steps + 1)).astype(int)
    dele, ins = [], []
    for c in cuts:
        top = np.zeros(h.size, bool)
        top[order[:c]] = True
        top = top.reshape(h.shape)
        dele.append((w * np.where(top, 0.0, x)).sum())
        ins.append((w * np.where(top, x, canvas)).sum())
    grid = np.linspace(0, 1, steps + 1)
    return np.trapezoid(dele, grid), np.trapezoid(ins, grid), np.array(dele), np.array(ins)


def test_deletion_insertion_exact_curves_and_cost(linear_ctx):
    ctx, x, w = linear_ctx
    steps = 10
    truth = w * x
    counter = ctx.seg.module
    counter.reset()
    before = ctx.n_forward
    out = deletion_insertion(ctx, truth, steps=steps)
    assert ctx.n_forward - before == 2 * (steps + 1)
    assert counter.images == 2 * (steps + 1)
    canvas = gaussian_filter(x, max(2.0, S / 32))
    d_auc, i_auc, d_curve, i_curve = _curves(truth, x, w, steps, canvas)
    np.testing.assert_allclose(out["deletion_curve"], d_curve, atol=1e-5)
    np.testing.assert_allclose(out["insertion_curve"], i_curve, atol=1e-5)
    assert out["deletion_auc"] == pytest.approx(d_auc, abs=1e-5)
    assert out["insertion_auc"] == pytest.approx(i_auc, abs=1e-5)
    assert out["deletion_curve"][0] == pytest.approx(ctx.base_score, abs=1e-6)
    assert out["deletion_curve"][-1] == pytest.approx(0.0, abs=1e-5)
    assert out["insertion_curve"][-1] == pytest.approx(ctx.base_score, abs=1e-6)


def test_deletion_auc_orders_good_and_bad_heatmaps(linear_ctx):
    ctx, x, w = linear_ctx
    truth = w * x
    good = deletion_insertion(ctx, truth, steps=12)
    bad = deletion_insertion(ctx, -truth, steps=12)
    rnd = deletion_insertion(ctx, np.random.default_rng(0).random(truth.shape), steps=12)
    assert good["deletion_auc"] < rnd["deletion_auc"] < bad["deletion_auc"]
    assert good["insertion_auc"] > bad["insertion_auc"]


def test_deletion_insertion_rejects_wrong_shape(linear_ctx):
    ctx, _, _ = linear_ctx
    with pytest.raises(ValueError, match=r"heatmap of shape \(5, 5\) is not at the model's 24x24"):
        deletion_insertion(ctx, np.zeros((5, 5)))


# --------------------------------------------------------------------------- randomisation check

SR = 32


def _occlusion_fn(sl):
    return lambda seg: explain("occlusion", seg, sl, window=4, stride=2, target="soft-dice")


def test_randomization_check_passes_for_occlusion_on_structured_model():
    sl = np.random.default_rng(5).uniform(0.2, 1.0, (SR, SR)).astype(np.float32)
    seg = make_segmenter(StructuredNet(SR), SR)
    res = randomization_check(_occlusion_fn(sl), seg)
    assert res["passed"] is True
    assert abs(res["spearman"]) < 0.5
    assert res["threshold"] == 0.5


def test_randomization_check_fails_for_explainer_that_ignores_the_model():
    sl = np.random.default_rng(5).uniform(0.2, 1.0, (SR, SR)).astype(np.float32)
    seg = make_segmenter(StructuredNet(SR), SR)
    res = randomization_check(lambda s: sl, seg)  # "explains" with the image itself
    assert res["passed"] is False
    assert res["spearman"] == pytest.approx(1.0)


def test_randomize_segmenter_reinitialises_a_copy():
    net = TinyConvNet(in_channels=1, seed=2)
    seg = make_segmenter(net, 16)
    w_before = {k: v.clone() for k, v in seg.module.state_dict().items()}
    rnd = randomize_segmenter(seg, seed=0)
    assert rnd is not seg and rnd.module is not seg.module
    for k, v in seg.module.state_dict().items():  # the original is untouched
        assert torch.equal(v, w_before[k])
    changed = [k for k, v in rnd.module.state_dict().items() if not torch.equal(v, w_before[k])]
    assert set(changed) == set(w_before)
    x = torch.rand(1, 1, 16, 16)
    assert not torch.allclose(seg.predict(x), rnd.predict(x))
    # same seed, same weights
    again = randomize_segmenter(seg, seed=0)
    for k, v in rnd.module.state_dict().items():
        assert torch.equal(v, again.module.state_dict()[k])


def test_module_all_is_complete():
    for name in metrics.__all__:
        assert callable(getattr(metrics, name))


RANDOMISATION_PARAMS = {
    "occlusion": dict(window=4, stride=2), "adaptive-occlusion": dict(window=4, stride=2),
    "rise": dict(n_samples=200, center=True), "lime": dict(n_samples=100), "ig": dict(n_steps=8, n_samples=2),
    "causal": dict(n_samples=4, threshold_dice=0.0), "segx": {},
}


@pytest.mark.parametrize("method", sorted(RANDOMISATION_PARAMS))
def test_every_method_passes_the_model_randomisation_check_on_a_cheap_model(method):
    """Adebayo et al.: re-initialising the weights must change the map. Grad-CAM needs a
    convolution (StructuredNet has none); the benchmark table covers it on the phantom model."""
    sl = np.random.default_rng(5).uniform(0.2, 1.0, (SR, SR)).astype(np.float32)
    seg = make_segmenter(StructuredNet(SR), SR)
    params = RANDOMISATION_PARAMS[method]
    res = randomization_check(lambda s: explain(method, s, sl, box=(4, 4, 28, 28), target="soft-dice", **params),
                              seg)
    assert res["passed"], res


def test_uncentred_rise_fails_the_randomisation_check_where_centred_rise_passes():
    """The paper's RISE sum carries the random masks' coverage pattern, which does not depend on
    the model: with scores that vary little it dominates (documented in docs/methods.md)."""
    sl = np.random.default_rng(5).uniform(0.2, 1.0, (SR, SR)).astype(np.float32)
    seg = make_segmenter(StructuredNet(SR), SR)

    def run(center):
        return randomization_check(lambda s: explain("rise", s, sl, box=(4, 4, 28, 28), target="soft-dice",
                                                     n_samples=200, center=center), seg)

    assert not run(False)["passed"] and run(True)["passed"]
