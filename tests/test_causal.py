"""PdCR causal ATE against a toy model whose dependence on single blocks is known by hand.

The toy network looks at two 8 x 8 blocks outside its output region only:

    logit(y, x) = 4 * square(y, x) - 4 + 4 * kA - 2 * kB

with ``square`` the centre square [12:20, 12:20] (the target region), ``kA``
the mean input in block A = [0:8, 0:8] and ``kB`` that in block B = [24:32, 0:8].
On the slice, A and B hold 1.0 and everything else 0.1, so the baseline mask
is the square (inside logit 2, outside -2). Filling a block with a constant
tile of value v gives, by hand:

* A -> inside logit 4v - 2: for v = 0.2 the mask vanishes (Dice 0, delta -1);
* B -> inside 4 - 2v, outside -2v: the mask stays (Dice delta 0), the mean
  foreground probability inside the mask rises to sigmoid(4 - 2v);
* any other block: nothing changes (delta exactly 0, screened out).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_xaiclip.explain import explain, iter_explain
from napari_xaiclip.explain import causal as causal_mod
from napari_xaiclip.explain.causal import _paint, block_grid, default_block

from toy_models import make_segmenter

torch.set_num_threads(1)

S, B = 32, 8
BLOCK_A, BLOCK_B = (0, 0), (3, 0)  # (row, column) on the 4 x 4 block grid


class TwoBlockNet(nn.Module):
    def __init__(self):
        super().__init__()
        sq = torch.zeros(S, S)
        sq[12:20, 12:20] = 1.0
        self.register_buffer("sq", sq)

    def forward(self, x):
        ka = x[:, 0, 0:8, 0:8].mean((-2, -1))[:, None, None]
        kb = x[:, 0, 24:32, 0:8].mean((-2, -1))[:, None, None]
        return (4 * self.sq - 4 + 4 * ka - 2 * kb)[:, None]


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


@pytest.fixture()
def seg():
    s = make_segmenter(TwoBlockNet(), S)
    s.gflops  # measured once (one forward) before any counting  # noqa: B018
    s.module.reset()
    return s


@pytest.fixture(scope="module")
def sl():
    a = np.full((S, S), 0.1, np.float32)
    a[0:8, 0:8] = 1.0
    a[24:32, 0:8] = 1.0
    return a


BANK = np.full((3, 1, S, S), 0.2, np.float32)


def _block_values(model_map):
    """(4, 4) per-block values; asserts each block is constant."""
    blocks = model_map.reshape(S // B, B, S // B, B).transpose(0, 2, 1, 3).reshape(S // B, S // B, -1)
    assert np.all(blocks.max(-1) == blocks.min(-1))
    return blocks[..., 0]


def test_default_block_and_grid():
    assert [default_block(s) for s in (32, 64, 256, 1024)] == [1, 2, 8, 32]
    boxes = block_grid(20, 8)
    assert boxes.tolist() == [[0, 8, 0, 8], [0, 8, 8, 16], [0, 8, 16, 20], [8, 16, 0, 8], [8, 16, 8, 16],
                              [8, 16, 16, 20], [16, 20, 0, 8], [16, 20, 8, 16], [16, 20, 16, 20]]


def test_paint_places_tiles_and_clips_at_the_edge():
    x = torch.zeros(2, 20, 20)
    pool = torch.arange(2 * 2 * 64, dtype=torch.float32).reshape(2, 2, 8, 8)
    out = _paint(x, pool, torch.tensor([[8, 0], [16, 16]]), torch.tensor([1, 0]))
    assert out.shape == (2, 2, 20, 20)
    assert torch.equal(out[0, :, 8:16, 0:8], pool[1])
    assert torch.equal(out[1, :, 16:20, 16:20], pool[0, :, :4, :4])  # clipped edge block
    untouched = torch.ones(2, 20, 20, dtype=torch.bool)
    untouched[0, 8:16, 0:8] = False
    untouched[1, 16:20, 16:20] = False
    assert torch.all(out[:, 0][untouched] == 0) and torch.all(out[:, 1][untouched] == 0)


def test_exactly_the_supporting_block_gets_an_ate(seg, sl):
    ex = explain("causal", seg, sl, window=B, n_samples=10, n_screen=3, filler_bank=BANK, batch_size=7)
    assert ex.method == "causal" and ex.mode == "traditional"
    vals = _block_values(ex.model_heatmap)
    expected = np.zeros((4, 4))
    expected[BLOCK_A] = 100.0  # Dice 1 -> 0 for every filler: 100 points of support (positive = supports)
    np.testing.assert_allclose(vals, expected, atol=1e-4)
    # 16 blocks, 4 touch the target square: 12 candidates, all screened, one fully evaluated
    assert (ex.n_patch, ex.n_patch_full, ex.rho) == (12, 12, 1.0)
    info = ex.info
    assert info["blocks"] == {"supporting": 1, "hindering": 0, "zero": 0, "skipped": 11}
    assert info["n_screened"] == 12 and info["n_full_evaluated"] == 1
    hist = info["histogram"]
    assert len(hist["counts"]) == 10 and sum(hist["counts"]) == 1 and len(hist["edges"]) == 11
    assert hist["edges"][0] <= 100.0 <= hist["edges"][-1]
    assert info["nonzero_blocks"] == [[0, 0, 100.0]]
    assert info["bank"]["source"] == "given"
    # forwards: baseline + 12 x 3 screening + 1 x (10 - 3) full, counted by the network too
    assert ex.n_forward == 1 + 12 * 3 + 7 == seg.module.images


def test_batch_size_does_not_change_the_map(seg, sl):
    maps = [explain("causal", seg, sl, window=B, n_samples=5, filler_bank=BANK, batch_size=bs).model_heatmap
            for bs in (1, 4, 64)]
    np.testing.assert_array_equal(maps[0], maps[1])
    np.testing.assert_array_equal(maps[0], maps[2])


def test_signs_with_a_probability_target(seg, sl):
    # target "roi-prob" (mean foreground probability inside the baseline mask): B hindered the mask
    ex = explain("causal", seg, sl, window=B, n_samples=6, filler_bank=BANK, target="roi-prob")
    vals = _block_values(ex.model_heatmap)
    base = _sig(2.0)
    expected = np.zeros((4, 4))
    expected[BLOCK_A] = -100 * (_sig(4 * 0.2 - 2) - base)  # support = -ATE
    expected[BLOCK_B] = -100 * (_sig(4 - 2 * 0.2) - base)
    np.testing.assert_allclose(vals, expected, atol=1e-3)
    assert ex.info["blocks"] == {"supporting": 1, "hindering": 1, "zero": 0, "skipped": 10}
    # raise the threshold above B's effect (0.0926): B is screened out
    ex = explain("causal", seg, sl, window=B, n_samples=6, filler_bank=BANK, target="roi-prob", threshold_dice=0.1)
    assert ex.info["blocks"] == {"supporting": 1, "hindering": 0, "zero": 0, "skipped": 11}
    assert _block_values(ex.model_heatmap)[BLOCK_B] == 0


def test_screening_and_the_ate_threshold(seg, sl, monkeypatch):
    # tiles: first 0.0 (the only screening filler), then three of 1.0 (no effect at all)
    def pool(ctx, images, forbidden, block, n, warnings):
        values = torch.tensor([0.0, 1.0, 1.0, 1.0])[:n]
        return values[:, None, None, None].expand(n, 1, block, block).clone()

    monkeypatch.setattr(causal_mod, "_tile_pool", pool)
    ex = explain("causal", seg, sl, window=B, n_samples=4, n_screen=1, threshold_dice=0.05, filler_bank=BANK,
                 target="roi-prob")
    base = _sig(2.0)
    ate_a = (_sig(-2.0) - base) / 4  # -0.19: kept
    ate_b = (_sig(4.0) - base) / 4   # +0.025 < 0.05: passed screening (0.10), then set to 0
    assert abs(ate_b) < 0.05 < abs(_sig(4.0) - base)
    vals = _block_values(ex.model_heatmap)
    assert vals[BLOCK_A] == pytest.approx(-100 * ate_a, abs=1e-3)
    assert vals[BLOCK_B] == 0
    assert ex.info["blocks"] == {"supporting": 1, "hindering": 0, "zero": 1, "skipped": 10}
    assert ex.info["n_full_evaluated"] == 2
    assert ex.n_forward == 1 + 12 * 1 + 2 * 3


def test_roi_mode_evaluates_blocks_touching_the_roi(seg, sl):
    roi = np.zeros((S, S), bool)
    roi[:, 0:12] = True  # block columns 0 and 1; (1, 1) and (2, 1) touch the target square
    ex = explain("causal", seg, sl, roi=roi, window=B, n_samples=5, filler_bank=BANK)
    assert ex.mode == "roi"
    assert (ex.n_patch, ex.n_patch_full, ex.rho) == (6, 12, 0.5)
    assert ex.info["n_screened"] == 6
    assert ex.n_forward == 1 + 6 * 3 + 1 * 2
    assert np.all(ex.heatmap[~roi] == 0)
    np.testing.assert_allclose(ex.heatmap[0:8, 0:8], 100.0, atol=1e-4)


def test_bank_from_slices_at_any_resolution(seg, sl):
    ref = explain("causal", seg, sl, window=B, n_samples=5, filler_bank=BANK).model_heatmap
    small = [np.full((16, 16), 0.2, np.float32)] * 2
    for kw in (dict(filler_bank=small), dict(bank_slices=small), dict(bank_slices=np.stack(small))):
        ex = explain("causal", seg, sl, window=B, n_samples=5, **kw)
        np.testing.assert_allclose(ex.model_heatmap, ref, atol=1e-4)
        assert ex.info["bank"]["source"] == "given"


def test_self_bank_avoids_the_target_region(seg, sl):
    ex = explain("causal", seg, sl, window=B, n_samples=20)
    assert ex.info["bank"] == {"source": "self", "images": 4, "tiles": 20}
    vals = _block_values(ex.model_heatmap)
    assert vals[BLOCK_A] > 50  # most tiles of the slice are background (0.1): A supports
    others = vals.copy()
    others[BLOCK_A] = 0
    assert np.all(others == 0)


def test_progress_is_yielded_per_batch(seg, sl):
    gen = iter_explain("causal", seg, sl, window=B, n_samples=5, filler_bank=BANK, batch_size=12)
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as stop:
            ex = stop.value
            break
    stages = [p.stage for p in items]
    assert stages.count("causal screening") == 1 + 3  # start + 36 screening items in batches of 12
    assert items[-1].done == items[-1].total == 12 * 3 + 2
    assert ex.params["window"] == B and ex.params["filler_bank"] == "3 images"


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(window=0), r"causal.window must be >= 1"),
    (dict(window=33), r"window must be between 1 and the input size 32"),
    (dict(n_screen=0), r"causal.n_screen must be >= 1"),
    (dict(n_samples=2, n_screen=3), r"n_screen <= n_samples"),
    (dict(threshold_dice=-0.1), r"causal.threshold_dice must be >= 0"),
    (dict(filler_bank=np.zeros((2, 3, S, S))), r"filler_bank of shape \(2, 3, 32, 32\)"),
    (dict(filler_bank=[np.zeros((2, 3, 4, 5))]), r"filler_bank\[0\] has shape \(2, 3, 4, 5\)"),
], ids=["block-0", "block-too-big", "screen-0", "screen-gt-fillers", "threshold", "bank-shape", "bank-item"])
def test_bad_parameters_raise(seg, sl, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        explain("causal", seg, sl, **kwargs)
