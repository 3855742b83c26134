"""First display of a scan (modality, region, window) and heatmap colours that stay readable."""

from __future__ import annotations

import numpy as np
import pytest

from napari_xaiclip.display import (guess_body_region, guess_modality, heatmap_colormap, heatmap_limits,
                                    heatmap_style, initial_window, is_signed)
from napari_xaiclip.io import Volume, display_affine


def _vol(data, spacing=(2.0, 0.8, 0.8), description=""):
    return Volume(np.asarray(data, np.float32), display_affine(spacing), description=description)


def _head_ct(stripped: bool):
    """A 275 x 275 px head at 0.8 mm (220 mm): brain ~30 HU inside a 1500 HU skull ring, air around."""
    n = 275
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    r = np.hypot(yy, xx)
    plane = np.full((n, n), -30.0 if stripped else -1000.0)
    plane[r < 120] = 1500.0  # skull
    plane[r < 105] = 30.0  # brain
    plane[(r < 20)] = 8.0  # ventricle
    return _vol(np.stack([plane.round()] * 5), spacing=(5.0, 0.8, 0.8))


def _abdomen_ct():
    n = 256
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    plane = np.full((n, n), -1000.0)
    body = (yy / 100) ** 2 + (xx / 120) ** 2 < 1
    plane[body] = 40.0
    plane[(yy - 60) ** 2 + xx ** 2 < 15 ** 2] = 700.0  # a vertebra, no ring
    return _vol(np.stack([plane] * 4), spacing=(5.0, 1.4, 1.4))


@pytest.mark.parametrize("description,expected", [
    ("DICOM CT abdomen", "CT"), ("DICOM MR t1", "MR"), ("DICOM PT", "other"),
    ("xaiclip synthetic phantom ct seed 0", "CT"), ("xaiclip synthetic phantom mr seed 0", "MR"),
    ("Philips CT 120 kV", "CT"), ("T1 MPRAGE", "MR"),
])
def test_modality_from_the_header_before_the_intensities(description, expected):
    vol = _vol(np.random.default_rng(0).uniform(0, 800, (3, 8, 8)), description=description)
    modality, why = guess_modality(vol)
    assert modality == expected and why


def test_modality_from_intensities():
    assert guess_modality(_abdomen_ct())[0] == "CT"
    assert "HU" in guess_modality(_abdomen_ct())[1]
    assert guess_modality(_head_ct(stripped=True))[0] == "CT"  # min -30: no air, still HU
    mr = _vol(np.random.default_rng(1).uniform(0, 800, (4, 32, 32)))
    assert guess_modality(mr)[0] == "other"


def test_head_ct_opens_in_the_brain_window_and_abdomen_in_the_abdomen_window():
    for stripped in (False, True):
        limits, label = initial_window(_head_ct(stripped))
        assert limits == (0.0, 80.0) and "brain window W80 L40" in label, label
        assert guess_body_region(_head_ct(stripped))[0] == "head"
    limits, label = initial_window(_abdomen_ct())
    assert limits == (-160.0, 240.0) and "abdomen" in label
    assert guess_body_region(_abdomen_ct())[0] == "body"
    named = _vol(_abdomen_ct().data, description="DICOM CT HEAD routine")
    assert guess_body_region(named)[0] == "head"


def test_mr_window_is_the_percentiles_of_non_zero_voxels():
    data = np.zeros((2, 50, 50))
    data[:, 10:40, 10:40] = np.linspace(100, 1100, 900).reshape(30, 30)
    limits, label = initial_window(_vol(data, description="DICOM MR"))
    v = data[data != 0]
    np.testing.assert_allclose(limits, np.percentile(v, [0.5, 99.5]))
    assert label.startswith("MR (DICOM Modality MR)")


# --------------------------------------------------------------------------- heatmaps


def test_heatmap_colours_are_transparent_at_the_low_end_and_opaque_at_the_top():
    cmap = heatmap_colormap(signed=False)
    assert cmap["controls"][0] == 0 and cmap["controls"][-1] == 1
    assert cmap["colors"][0, 3] == 0 and cmap["colors"][1, 3] == 0  # the lowest 10 % show the scan
    assert cmap["colors"][-1, 3] >= 0.9
    div = heatmap_colormap(signed=True)
    middle = np.interp(0.5, div["controls"], div["colors"][:, 3])
    assert middle == 0 and div["colors"][0, 3] >= 0.9 and div["colors"][-1, 3] >= 0.9


def test_limits_come_from_the_map_and_signed_maps_are_symmetric():
    h = np.zeros((20, 20))
    h[5:10, 5:10] = np.linspace(0.1, 3.0, 25).reshape(5, 5)
    lo, hi = heatmap_limits(h)
    assert lo == 0 and hi == pytest.approx(np.percentile(h[h > 0], 99.5))
    signed = h.copy()
    signed[12:15, 12:15] = -2.0
    assert is_signed(signed) and not is_signed(h)
    lo, hi = heatmap_limits(signed)
    assert lo == -hi and hi > 0
    style = heatmap_style(signed)
    assert style["signed"] and style["blending"] == "translucent" and style["colormap"]["name"] == "xaiclip diverging"
    assert heatmap_limits(np.zeros((4, 4))) == (0.0, 1.0)


def _composite(background: float, value: float, style: dict) -> np.ndarray:
    """What napari's translucent blending shows: colour over the grey background by the colour's alpha."""
    cmap = style["colormap"]
    lo, hi = style["contrast_limits"]
    t = np.clip((value - lo) / (hi - lo), 0, 1)
    rgba = np.array([np.interp(t, cmap["controls"], cmap["colors"][:, c]) for c in range(4)])
    alpha = rgba[3] * style["opacity"]
    return alpha * rgba[:3] + (1 - alpha) * np.full(3, background)


def test_important_pixels_stay_visible_over_bright_tissue_where_additive_inferno_saturates():
    from matplotlib import colormaps

    heat = np.linspace(0, 1, 100)
    style = heatmap_style(heat)
    bright = 0.9  # a bright T1 region, as displayed
    shown = _composite(bright, 1.0, style)
    assert np.max(np.abs(shown - bright)) > 0.3  # clearly different from the tissue under it
    assert np.allclose(_composite(bright, 0.02, style), bright)  # unimportant pixels show the scan
    # the old display: additive inferno at opacity 0.8 over the same tissue is white
    old = np.clip(bright + 0.8 * np.asarray(colormaps["inferno"](1.0)[:3]), 0, 1)
    assert np.all(old > 0.95)
