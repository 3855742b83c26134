"""RISE's opt-in convergence stop (``stop_iou``, ``check_every``).

Checks that can be done by hand: off, the map is the plain weighted mask sum bit for bit; on, a
run that stops after n masks is the plain run with n_samples = n (the masks come in the same
order); the stop compares two independent halves of the masks (even and odd draw index), each
rebuilt here by hand; bad values are refused by the registry.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_xaiclip.explain import explain, get_method
from napari_xaiclip.explain.base import Context
from napari_xaiclip.explain.rise import _Convergence, rise_masks

from toy_models import IdentityProbNet, LinearProbTarget, make_segmenter

torch.set_num_threads(1)

S = 32


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(1)
    sl = rng.uniform(0.3, 0.9, (S, S)).astype(np.float32)
    yy, xx = np.mgrid[:S, :S]
    w = np.exp(-((yy - 9) ** 2 + (xx - 22) ** 2) / (2 * 4.0 ** 2)).astype(np.float32)
    seg = make_segmenter(IdentityProbNet(), S)
    seg.gflops  # noqa: B018  (one forward, counted before any run)
    return seg, sl, w


def _plain_rise(seg, sl, target, n, batch, seed, cells, p1):
    """RISE written out: masks per batch from one generator, sum_i f_i M_i / (N p1) in float64."""
    ctx = Context(seg, sl, target=target, batch_size=batch, seed=seed)
    gen = ctx.generator()
    sal = torch.zeros(S, S, dtype=torch.float64)
    for start in range(0, n, batch):
        m = rise_masks(min(n, start + batch) - start, S, cells, p1, gen)
        sal += torch.einsum("b,bij->ij", ctx.score(ctx.x[None] * m[:, None]).double(), m.double())
    return (sal / (n * p1)).float().numpy()


def test_off_is_the_plain_weighted_sum_bit_for_bit(setup):
    seg, sl, w = setup
    target = LinearProbTarget(w)
    ex = explain("rise", seg, sl, target=target, n_samples=300, cells=5, p1=0.4, normalize=False,
                 batch_size=32, seed=7)
    assert np.array_equal(ex.model_heatmap, _plain_rise(seg, sl, target, 300, 32, 7, 5, 0.4))
    assert ex.params["stop_iou"] is None and ex.params["check_every"] == 200
    assert ex.info["n_samples_used"] == 300 and ex.info["stop_reason"] == "stop_iou off"
    assert ex.n_forward == 301


@pytest.mark.parametrize("roi", [False, True])
def test_a_stopped_run_is_the_plain_run_with_the_masks_used(setup, roi):
    seg, sl, w = setup
    region = None
    if roi:
        region = np.zeros(sl.shape, bool)
        region[2:20, 10:31] = True
    kw = dict(target=LinearProbTarget(w), cells=5, batch_size=25, seed=3, roi=region)
    counter = seg.module
    counter.reset()
    stopped = explain("rise", seg, sl, n_samples=5000, stop_iou=0.9, check_every=50, **kw)
    used = stopped.info["n_samples_used"]
    assert 50 <= used < 5000 and used % 50 == 0   # batches of 25 end on every checkpoint
    assert stopped.info["stop_reason"].startswith("converged")
    assert stopped.n_forward == used + 1 == counter.images   # only the passes made are counted
    ious = [iou for _, iou in stopped.info["checkpoints"]]
    assert [m for m, _ in stopped.info["checkpoints"]] == list(range(50, used + 1, 50))
    assert ious[-1] >= 0.9 and all(v < 0.9 for v in ious[:-1])   # the first checkpoint that agrees
    plain = explain("rise", seg, sl, n_samples=used, **kw)
    assert np.array_equal(stopped.heatmap, plain.heatmap)
    assert np.array_equal(stopped.maps["relevance"], plain.maps["relevance"])
    assert np.array_equal(stopped.model_heatmap, plain.model_heatmap)
    if roi:
        assert np.all(stopped.heatmap[~region] == 0)


def test_split_half_iou_by_hand(setup):
    """The IoU at each checkpoint is the top-20 % IoU of RISE maps of the even- and the odd-index masks."""
    seg, sl, w = setup
    target = LinearProbTarget(w)
    ex = explain("rise", seg, sl, target=target, n_samples=120, stop_iou=1.0, check_every=40, batch_size=20,
                 cells=5, seed=4)
    ctx = Context(seg, sl, target=target, batch_size=20, seed=4)
    gen = ctx.generator()
    masks = torch.cat([rise_masks(20, S, 5, 0.5, gen) for _ in range(6)]).double()
    scores = torch.cat([ctx.score(ctx.x[None] * masks[i:i + 20, None].float()).double() for i in range(0, 120, 20)])
    expected = []
    for done in (40, 80, 120):
        even = torch.einsum("b,bij->ij", scores[:done:2], masks[:done:2])
        odd = torch.einsum("b,bij->ij", scores[1:done:2], masks[1:done:2])
        k = int(np.ceil(0.2 * S * S))
        a = set(torch.topk(even.reshape(-1), k).indices.tolist())
        b = set(torch.topk(odd.reshape(-1), k).indices.tolist())
        expected.append([done, round(len(a & b) / len(a | b), 6)])
    assert ex.info["checkpoints"] == expected
    assert ex.info["n_samples_used"] == 120 and ex.info["stop_reason"].startswith("n_samples reached (120)")


def test_can_stop_at_the_first_checkpoint(setup):
    seg, sl, w = setup
    # any IoU passes a threshold of 1e-6: the halves are compared at the first checkpoint and agree
    ex = explain("rise", seg, sl, target=LinearProbTarget(w), n_samples=1000, stop_iou=1e-6, check_every=40,
                 batch_size=20)
    assert ex.info["n_samples_used"] == 40 and ex.n_forward == 41
    assert [m for m, _ in ex.info["checkpoints"]] == [40]


def test_checkpoints_at_the_batch_that_reaches_each_multiple(setup):
    seg, sl, w = setup
    # batches of 32 end at 32, 64, ...: the checks fall at 64 (>= 50), 128 (>= 100), 160 (>= 150), ...
    ex = explain("rise", seg, sl, target=LinearProbTarget(w), n_samples=200, stop_iou=1.0, check_every=50,
                 batch_size=32)
    assert [m for m, _ in ex.info["checkpoints"]][:3] == [64, 128, 160]
    assert ex.info["n_samples_used"] == 200 and ex.n_forward == 201


def test_too_few_masks_to_converge(setup):
    seg, sl, w = setup
    ex = explain("rise", seg, sl, target=LinearProbTarget(w), n_samples=100, stop_iou=1.0, check_every=40,
                 batch_size=20)
    assert ex.info["n_samples_used"] == 100 and ex.n_forward == 101
    assert ex.info["stop_reason"].startswith("n_samples reached (100)")
    assert len(ex.info["checkpoints"]) == 2


def test_convergence_rule_by_hand():
    region = torch.zeros(4, 5, dtype=torch.bool)
    region[:, :4] = True                          # 16 pixels: the top 20 % is 4 of them
    a = torch.arange(20, dtype=torch.float64).reshape(4, 5)
    a[:, 4] = 1000.0                              # outside the region: never in the top set
    b = a.clone()
    b[3, 3], b[0, 0] = -1.0, 100.0                # one of the 4 swapped: IoU 3 / 5
    rule = _Convergence(0.59, every=10, region=region)
    assert not rule.due(5) and rule.due(10)       # not a checkpoint yet, then one
    assert rule(10, a, b) and rule.history == [[10, 0.6]]
    assert "agree at top-20 % IoU 0.600 >= 0.59" in rule.reason(10, 100)
    strict = _Convergence(0.61, every=10, region=region)
    assert not strict(10, a, b) and not strict.due(15) and strict.due(20)
    assert strict(20, a, a) and strict.history == [[10, 0.6], [20, 1.0]]


@pytest.mark.parametrize("value", [0, 0.0, -0.5, 1.0001, 2])
def test_stop_iou_outside_unit_interval_refused(setup, value):
    spec = get_method("rise")
    with pytest.raises(ValueError, match=r"rise\.stop_iou must be"):
        spec.check({"stop_iou": value})
    seg, sl, _ = setup
    with pytest.raises(ValueError, match=r"rise\.stop_iou must be"):
        explain("rise", seg, sl, stop_iou=value)


def test_parameter_values_accepted():
    spec = get_method("rise")
    assert spec.check({"stop_iou": 1}) == {"stop_iou": 1.0}
    assert spec.check({"stop_iou": "auto"}) == {"stop_iou": None}
    assert spec.check({"stop_iou": None, "check_every": "50"}) == {"stop_iou": None, "check_every": 50}
    with pytest.raises(ValueError, match=r"rise\.check_every must be >= 1"):
        spec.check({"check_every": 0})
    assert spec.defaults()["stop_iou"] is None and spec.defaults()["check_every"] == 200
