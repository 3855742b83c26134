"""Component analysis on a tiny SAM: ablating component k replaces exactly that component's
output (zeros, or its mean over the filler slices), leaves every upstream component untouched,
and leaves no hook behind, errors included."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from napari_xaiclip.explain import components as comp_mod
from napari_xaiclip.explain.components import (ablate, component_effects, component_names, component_table,
                                               save_component_chart)
from napari_xaiclip.models.sam import SamSegmenter, build_sam

from toy_models import TinyConvNet, make_segmenter

torch.set_num_threads(1)

BOX = (10, 12, 50, 54)
NAMES = ["image_encoder.blocks.0.attn", "image_encoder.blocks.1.attn",
         "mask_decoder.transformer.layers.0", "mask_decoder.transformer.layers.1",
         "mask_decoder.transformer.final_attn_token_to_image", "mask_decoder.output_upscaling"]


@pytest.fixture(scope="module")
def seg():
    with torch.random.fork_rng():  # random weights, seeded without touching the global RNG
        torch.manual_seed(0)
        sam = build_sam(image_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,),
                        window_size=2, prompt_embed_dim=32, decoder_mlp_dim=64, decoder_heads=2, iou_hidden=32)
    return SamSegmenter(sam, mode="medsam", device="cpu")


@pytest.fixture(scope="module")
def sl():
    return np.random.default_rng(0).random((64, 64)).astype(np.float32)


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _no_hooks(net):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


class Recorder:
    """Test-side hooks recording each component's output on every forward (one entry per run)."""

    def __init__(self, net, names):
        self.seen = {n: [] for n in names}
        self.handles = {n: net.get_submodule(n).register_forward_hook(self._hook(n)) for n in names}

    def _hook(self, name):
        def hook(mod, args, out):
            self.seen[name].append([t.detach().clone() for t in _flat(out)])
        return hook

    def remove(self):
        for h in self.handles.values():
            h.remove()


def test_component_names(seg):
    assert component_names(seg) == NAMES
    with pytest.raises(ValueError, match=r"needs a SAM-family segmenter"):
        component_names(make_segmenter(TinyConvNet(), 32))


def test_zero_ablation_replaces_exactly_the_ablated_output(seg, sl):
    net = seg.module
    assert _no_hooks(net)
    rec = Recorder(net, NAMES)
    try:
        records = component_effects(seg, sl, box=BOX, mode="zero")
        for n in NAMES:  # only the test's own hook is left on each component
            assert list(net.get_submodule(n)._forward_hooks) == [rec.handles[n].id]
    finally:
        rec.remove()
    assert _no_hooks(net)
    for n in NAMES:
        assert len(rec.seen[n]) == 1 + len(NAMES)  # baseline, then one run per ablated component
    for k, name in enumerate(NAMES):
        run = 1 + k
        for t in rec.seen[name][run]:
            assert torch.count_nonzero(t) == 0  # the ablated output is zeros
        assert any(torch.count_nonzero(t) for t in rec.seen[name][0])  # and was not before
        for up in NAMES[:k]:  # upstream components: unchanged
            for a, b in zip(rec.seen[up][run], rec.seen[up][0]):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    # records: hand-checked values
    assert [r["component"] for r in records] == NAMES
    assert [r["kind"] for r in records] == ["encoder attention"] * 2 + ["decoder layer"] * 4
    for r in records:
        assert r["target_base"] == 1.0  # Dice of the baseline with itself
        assert r["ate_dice"] == pytest.approx(r["target_ablated"] - r["target_base"])
        assert r["ate"] == pytest.approx(100 * r["ate_dice"])
        assert r["n_forward"] == 1 + len(NAMES)
    # zero upscaled features: every logit is 0, probability 0.5, nothing above 0.5 -> Dice 0
    assert records[-1]["ate"] == pytest.approx(-100.0)


def test_mean_ablation_uses_the_mean_over_fillers(seg, sl):
    net = seg.module
    fillers = [np.random.default_rng(s).random((48, 48)).astype(np.float32) for s in (1, 2, 3)]
    rec = Recorder(net, NAMES)
    try:
        records = component_effects(seg, sl, box=BOX, mode="mean", filler_slices=fillers)
    finally:
        rec.remove()
    assert _no_hooks(net)
    assert [len(rec.seen[n]) for n in NAMES] == [2 + len(NAMES)] * len(NAMES)  # baseline, fillers, ablations
    for k, name in enumerate(NAMES):
        run = 2 + k
        for ablated, filler_out, base in zip(rec.seen[name][run], rec.seen[name][1], rec.seen[name][0]):
            # filler batch of 3: leading dimension 3 * m (m windows per image for windowed attention)
            m = filler_out.shape[0] // 3
            mean = filler_out.reshape(3, m, *filler_out.shape[1:]).mean(0)
            assert ablated.shape == base.shape
            torch.testing.assert_close(ablated, mean.repeat(base.shape[0] // m, *[1] * (base.ndim - 1)))
        for up in NAMES[:k]:
            for a, b in zip(rec.seen[up][run], rec.seen[up][0]):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(r["mode"] == "mean" and r["n_forward"] == 1 + 3 + len(NAMES) for r in records)


def test_the_windowed_block_really_is_windowed(seg, sl):
    # block 0 uses 2 x 2 windows on the 4 x 4 token grid: its attention sees 4 windows per image
    rec = Recorder(seg.module, NAMES[:1])
    try:
        component_effects(seg, sl, box=BOX, components=NAMES[:1])
    finally:
        rec.remove()
    assert rec.seen[NAMES[0]][0][0].shape[0] == 4


def test_hooks_are_removed_on_error(seg, sl, monkeypatch):
    net = seg.module
    with pytest.raises(RuntimeError, match="boom"):
        with ablate(net, NAMES[0]):
            assert len(net.get_submodule(NAMES[0])._forward_hooks) == 1
            raise RuntimeError("boom")
    assert _no_hooks(net)
    calls = {"n": 0}
    real = seg.logits

    def failing(images, prompt):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("forward failed")
        return real(images, prompt)

    monkeypatch.setattr(seg, "logits", failing)
    with pytest.raises(RuntimeError, match="forward failed"):
        component_effects(seg, sl, box=BOX, mode="zero")
    assert calls["n"] == 3
    assert _no_hooks(net)
    assert not net.training


def test_components_subset_and_gt_target(seg, sl):
    gt = np.zeros((64, 64), bool)
    gt[12:54, 10:50] = True
    records = component_effects(seg, sl, box=BOX, components=NAMES[-1:], target="gt-dice", gt=gt)
    assert len(records) == 1 and records[0]["target"] == "gt-dice"
    assert records[0]["target_ablated"] == 0.0  # an empty mask against a non-empty ground truth


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(mode="noise"), r"mode must be 'zero' or 'mean'"),
    (dict(mode="mean"), r"needs filler_slices"),
    (dict(components=["image_encoder.blocks.9.attn"]), r"no component 'image_encoder.blocks.9.attn'"),
    (dict(target="dise"), r"unknown target 'dise'"),
    (dict(target="gt-dice", gt=np.ones((5, 5), bool)), r"ground truth of shape \(5, 5\)"),
])
def test_bad_input_raises(seg, sl, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        component_effects(seg, sl, box=BOX, **kwargs)
    assert _no_hooks(seg.module)


def test_chart_is_written_atomically(tmp_path):
    records = [{"component": n, "kind": comp_mod.component_kind(n), "ate": a, "mode": "zero", "target": "dice"}
               for n, a in zip(NAMES, [-10.0, 2.5, 0.0, -50.0, -1.0, -100.0])]
    out = tmp_path / "charts" / "components.png"
    save_component_chart(records, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["components.png"]
    with pytest.raises(ValueError, match="no component records"):
        save_component_chart([], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()
    table = component_table(records)
    assert table.splitlines()[0].startswith("component") and "-100.00" in table


def test_doctests():
    assert doctest.testmod(comp_mod, raise_on_error=False).failed == 0
