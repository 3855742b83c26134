"""ExplainSeg post-processing on synthetic relevance maps whose right mask is known."""

from __future__ import annotations

import doctest
import re
import sys

import numpy as np
import pytest
import torch

from napari_xaiclip.explain import postprocess
from napari_xaiclip.explain.postprocess import (densecrf_refine, encoder_feature_map, explainseg, fuse, minmax,
                                                morphology, ncut_mask, otsu_mask)
from napari_xaiclip.metrics import dice

from toy_models import TinyConvNet, make_segmenter

torch.set_num_threads(1)

N = 64
YY, XX = np.mgrid[:N, :N]


def _disc(cy=32, cx=32, r=14):
    return (YY - cy) ** 2 + (XX - cx) ** 2 <= r ** 2


def _noisy_disc(seed=0, sigma=0.2):
    return _disc().astype(float) + np.random.default_rng(seed).normal(0, sigma, (N, N))


def test_otsu_and_morphology_recover_a_noisy_disc():
    rel = _noisy_disc()
    raw = otsu_mask(rel)
    assert dice(raw, _disc()) < 0.995  # the noise leaves specks and pinholes
    out = morphology(raw)
    assert dice(out, _disc()) > 0.95
    assert out.dtype == bool and out.shape == (N, N)
    from scipy import ndimage as ndi

    assert ndi.label(out, structure=np.ones((3, 3)))[1] == 1  # one 8-connected component, specks gone


def test_component_touching_the_border_is_dropped():
    m = _disc(r=10)
    m[0:6, 20:30] = True  # a border artefact
    out = morphology(m, dilate=0, erode=0)
    assert not out[0:6].any()
    np.testing.assert_array_equal(out, _disc(r=10))
    kept = morphology(m, drop_border=False, dilate=0, erode=0)
    assert kept[0:6, 20:30].all()  # edge padding: the border object does not erode from the edge


def test_border_object_survives_closing_when_kept():
    m = np.zeros((N, N), bool)
    m[0:10, 0:10] = True
    out = morphology(m, drop_border=False, dilate=2, erode=2, min_size=1)
    np.testing.assert_array_equal(out, m)


def test_fill_holes_fills_a_ring():
    ring = _disc(r=14) & ~_disc(r=8)
    filled = morphology(ring, dilate=0, erode=0)
    np.testing.assert_array_equal(filled, _disc(r=14))
    assert not morphology(ring, dilate=0, erode=0, fill_holes=False)[32, 32]


def test_dilation_joins_fragments_and_min_size_drops_specks():
    m = _disc(r=12)
    m[:, 31:33] = False  # two halves, 2 px apart
    m[5:7, 5:7] = True   # a 4 px speck (not on the border)
    from scipy import ndimage as ndi

    assert ndi.label(m)[1] == 3
    out = morphology(m, dilate=2, erode=2, min_size=10)
    assert ndi.label(out)[1] == 1
    assert out[32, 31] and out[32, 32] and not out[5:7, 5:7].any()


def test_ncut_separates_two_flat_regions():
    rel = np.where(XX >= 40, 0.8, 0.2)
    image = np.where(XX >= 40, 200.0, 50.0)
    out = ncut_mask(image, rel, n_segments=50)
    np.testing.assert_array_equal(out, XX >= 40)
    # without an image the relevance itself gives the superpixels
    np.testing.assert_array_equal(ncut_mask(None, rel, n_segments=50), XX >= 40)


def test_ncut_keeps_the_relevant_square():
    rng = np.random.default_rng(1)
    sq = (YY >= 20) & (YY < 44) & (XX >= 16) & (XX < 40)
    image = np.where(sq, 0.7, 0.3) + rng.normal(0, 0.02, (N, N))
    rel = np.where(sq, 1.0, 0.1) + rng.normal(0, 0.02, (N, N))
    out = explainseg(rel, image, variant="xai-ncut")
    assert dice(out, sq) > 0.97


def test_fusion_multiplies_normalised_maps():
    r = np.array([[0.0, 1.0], [2.0, 4.0]])
    f = np.array([[5.0, 3.0], [1.0, 5.0]])
    np.testing.assert_allclose(fuse(r, f), (r / 4) * ((f - 1) / 4))
    # the feature map is resized to the relevance's shape
    big = fuse(np.ones((8, 8)) * np.arange(8), np.array([[0.0, 1.0], [0.0, 1.0]]))
    assert big.shape == (8, 8)
    assert big[:, 0].max() == 0 and big[0, -1] == pytest.approx(1.0)
    assert np.all(np.diff(big[0]) >= 0)
    # a constant feature map is neutral
    np.testing.assert_allclose(fuse(r, np.full((3, 3), 7.0)), r / 4)


def test_fusion_variants_need_a_feature_map_and_use_it():
    rel = _disc().astype(float)
    rel[20:44, 4:10] = 1.0  # relevance also on a band where the features are silent
    feat = _disc(r=16).astype(float)
    xai = explainseg(rel, variant="xai-morph")
    assert xai[20:44, 4:10].all()  # relevance alone keeps the band
    out = explainseg(rel, variant="fusion-morph", feature_map=feat)
    assert not out[:, :10].any() and dice(out, _disc()) > 0.95
    out = explainseg(rel, image=rel, variant="fusion-ncut", feature_map=feat)
    assert not out[:, :10].any() and dice(out, _disc()) > 0.9
    with pytest.raises(ValueError, match=r"needs a feature map"):
        explainseg(rel, variant="fusion-ncut")
    with pytest.raises(ValueError, match=r"unknown ExplainSeg variant 'crf'"):
        explainseg(rel, variant="crf")


@pytest.mark.parametrize("variant", postprocess.VARIANTS)
def test_degenerate_relevance_gives_an_empty_mask(variant):
    feat = np.random.default_rng(0).random((N, N))
    for rel in (np.full((N, N), 0.3), np.full((N, N), np.nan), np.zeros((N, N))):
        out = explainseg(rel, image=np.random.default_rng(1).random((N, N)), variant=variant, feature_map=feat)
        assert out.dtype == bool and out.shape == (N, N) and not out.any()


def test_nan_pixels_are_never_selected():
    rel = _noisy_disc(sigma=0.05)
    rel[30:34, 30:34] = np.nan  # inside the disc
    rel[2, 2] = np.inf
    m = otsu_mask(rel)
    assert not m[30:34, 30:34].any() and not m[2, 2]
    assert dice(morphology(m), _disc()) > 0.95  # the hole is filled back by the morphology


def test_densecrf_without_pydensecrf_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    msg = "DenseCRF refinement needs the optional package pydensecrf (pip install pydensecrf)"
    with pytest.raises(ImportError, match=re.escape(msg)):
        densecrf_refine(np.zeros((8, 8)), np.zeros((8, 8)))


@pytest.mark.parametrize("call,pattern", [
    (lambda: otsu_mask(np.zeros((2, 3, 4))), r"expected a 2D relevance map, got shape \(2, 3, 4\)"),
    (lambda: morphology(np.zeros(5)), r"expected a 2D mask, got shape \(5,\)"),
    (lambda: morphology(np.zeros((4, 4)), dilate=-1), r"dilate and erode must be >= 0"),
    (lambda: ncut_mask(np.zeros((4, 4)), np.zeros((5, 5))), r"image of shape \(4, 4\) does not match"),
    (lambda: fuse(np.zeros((4, 4)), np.zeros(3)), r"expected a 2D feature map"),
])
def test_bad_input_raises(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_minmax_constant_and_nan():
    assert minmax(np.full(4, 2.0)).tolist() == [0.0] * 4
    assert minmax(np.array([np.nan, 1.0, 3.0])).tolist() == [0.0, 0.0, 1.0]


def test_encoder_feature_map_of_a_conv_net_is_its_hidden_layer():
    net = TinyConvNet(in_channels=2, seed=3)
    seg = make_segmenter(net, 32, box="channel", counting=False)
    sl = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    fmap = encoder_feature_map(seg, sl, box=(8, 6, 24, 26))
    x = torch.as_tensor(sl)[None, None]
    box = torch.zeros(1, 1, 32, 32)
    box[..., 6:26, 8:24] = 1.0
    with torch.no_grad():
        hidden = net.conv1(torch.cat([x, box], 1)).mean(1)[0].numpy()  # conv1: the last multi-channel conv
    np.testing.assert_allclose(fmap, minmax(hidden), atol=1e-5)
    assert not net.conv1._forward_hooks


def test_encoder_feature_map_of_a_tiny_sam():
    from napari_xaiclip.models.sam import SamSegmenter, build_sam

    with torch.random.fork_rng():
        torch.manual_seed(0)
        sam = build_sam(image_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,),
                        window_size=2, prompt_embed_dim=32, decoder_mlp_dim=64, decoder_heads=2, iou_hidden=32)
    seg = SamSegmenter(sam, mode="sam", device="cpu")  # keep_aspect: padding is cropped away
    sl = np.random.default_rng(0).random((40, 64)).astype(np.float32)
    fmap = encoder_feature_map(seg, sl)
    assert fmap.shape == (40, 64)
    assert fmap.min() == pytest.approx(0.0, abs=1e-6) and fmap.max() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        emb = sam.image_encoder(seg.preprocess(sl)[0][None]).mean(1)[0].numpy()  # (4, 4) tokens
    # the brightest token of the visible part (rows 0..2 of 4: 40/64 of the height) is the map's peak region
    ty, tx = np.unravel_index(np.argmax(emb[:3]), emb[:3].shape)
    py, px = np.unravel_index(np.argmax(fmap), fmap.shape)
    assert abs(py - (ty + 0.5) * 16) <= 16 and abs(px - (tx + 0.5) * 16) <= 16


def test_doctests():
    assert doctest.testmod(postprocess, raise_on_error=False).failed == 0
