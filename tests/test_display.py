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


# --------------------------------------------------------------------------- more headers and intensities


def test_nifti_description_and_hu_minimum(tmp_path):
    import nibabel as nib

    from napari_xaiclip.io import load_volume

    img = nib.Nifti1Image(np.full((8, 8, 4), 40, np.int16), np.diag([0.8, 0.8, 2.0, 1.0]))
    img.header["descrip"] = b"head ct, soft tissue kernel"
    nib.save(img, tmp_path / "scan.nii.gz")
    modality, why = guess_modality(load_volume(tmp_path / "scan.nii.gz"))
    assert modality == "CT" and "description" in why
    air = np.full((4, 16, 16), 40.0)
    air[:, :2] = -1024.0
    assert guess_modality(_vol(air)) == ("CT", "intensities look like HU (minimum -1024)")


def test_bright_mr_with_zero_background_and_dark_csf_is_not_taken_for_ct():
    """Zero padding and dark CSF fall in the soft-tissue HU range, but MR has no negative voxels
    and a continuum of tissue values where a CT has a gap between soft tissue and bone."""
    rng = np.random.default_rng(2)
    n = 128
    yy, xx = np.mgrid[:n, :n] - n / 2
    plane = np.zeros((n, n))
    plane[np.hypot(yy, xx) < 50] = rng.normal(700, 150, np.count_nonzero(np.hypot(yy, xx) < 50)).round()
    plane[np.hypot(yy, xx) < 12] = 80.0  # CSF
    vol = _vol(np.stack([np.clip(plane, 0, None)] * 6), spacing=(2.0, 1.0, 1.0))
    assert guess_modality(vol)[0] == "other"
    limits, label = initial_window(vol)
    v = vol.data[vol.data != 0]
    np.testing.assert_allclose(limits, np.percentile(v, [0.5, 99.5]), rtol=1e-6)
    assert label.startswith("not CT")


def test_mr_like_volume_without_header_gets_percentiles():
    data = np.random.default_rng(3).uniform(0, 800, (4, 40, 40)).round()
    data[:, :5] = 0  # background
    limits, label = initial_window(_vol(data))
    np.testing.assert_allclose(limits, np.percentile(data[data != 0], [0.5, 99.5]))
    assert "percentile" in label


def test_skull_stripped_head_ct_label_says_why():
    vol = _head_ct(stripped=True)
    assert vol.data.min() == -30
    limits, label = initial_window(vol)
    assert limits == (0.0, 80.0)
    assert label.startswith("CT (intensities look like HU without air") and "head" in label and "W80 L40" in label


def test_description_naming_the_body_wins_over_a_small_field_of_view():
    assert guess_body_region(_vol(_head_ct(False).data, spacing=(5.0, 0.8, 0.8),
                                  description="DICOM CT CHEST"))[0] == "body"


def test_reader_and_sample_data_put_the_window_and_its_reason_in_the_metadata(tmp_path):
    import nibabel as nib

    from napari_xaiclip._reader import read_volume
    from napari_xaiclip._sample_data import make_mr_phantom_sample, make_phantom_sample

    data = _head_ct(stripped=False).data.transpose(2, 1, 0)  # slices last, as NIfTI stores them
    nib.save(nib.Nifti1Image(data.astype(np.int16), np.diag([0.8, 0.8, 5.0, 1.0])), tmp_path / "head.nii.gz")
    (_, kwargs, kind), = read_volume(str(tmp_path / "head.nii.gz"))
    assert kind == "image" and kwargs["contrast_limits"] == (0.0, 80.0)
    assert "xaiclip_geometry" in kwargs["metadata"]  # merged, not replaced
    assert "brain window W80 L40" in kwargs["metadata"]["xaiclip_window"]
    ct = make_phantom_sample()[0][1]
    assert ct["contrast_limits"] == (-160.0, 240.0) and "abdomen window" in ct["metadata"]["xaiclip_window"]
    mr = make_mr_phantom_sample()[0][1]
    assert mr["metadata"]["xaiclip_window"].startswith("MR (phantom") and mr["contrast_limits"][0] >= 0


# --------------------------------------------------------------------------- layer style, figures


def test_layer_style_is_add_image_kwargs_napari_can_take():
    from napari.utils.colormaps import Colormap

    from napari_xaiclip.display import heatmap_layer_style

    heat = np.zeros((30, 30), np.float32)
    heat[10:20, 10:20] = np.linspace(0, 5, 100).reshape(10, 10)
    style = heatmap_layer_style(heat)
    assert set(style) == {"blending", "opacity", "contrast_limits", "colormap"}
    assert style["blending"] == "translucent" and style["contrast_limits"][0] == 0
    cmap = Colormap(**style["colormap"])
    assert cmap.map(np.array([0.0]))[0, 3] == 0 and cmap.map(np.array([1.0]))[0, 3] >= 0.9
    signed = heatmap_layer_style(heat - 2.5)  # the sign is not assumed: symmetric, transparent at 0
    lo, hi = signed["contrast_limits"]
    assert lo == -hi and Colormap(**signed["colormap"]).map(np.array([0.5]))[0, 3] == 0
    assert heatmap_layer_style(heat, signed=True)["colormap"]["name"] == "xaiclip diverging"


def test_figures_use_the_brain_window_in_a_skull_and_draw_box_and_colour_bar():
    from napari_xaiclip.reports import display_slice, render_panels

    plane = _head_ct(stripped=False).data[2]
    shown = display_slice(plane)
    assert shown[137, 137 + 60] == pytest.approx(30 / 80)  # brain at 30 HU in W80 L40
    heat = np.zeros_like(plane)
    heat[100:150, 100:150] = 1.0
    heat[160:180, 160:180] = -0.5
    png = render_panels(plane, [{"title": "signed", "heatmap": heat}], box=(90, 90, 190, 190))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    without = render_panels(plane, [{"title": "signed", "heatmap": heat}])
    assert png != without  # the box is drawn
    no_heat = render_panels(plane, [{"title": "plain", "heatmap": None}])
    assert _png_width(without) > _png_width(no_heat) + 20  # the colour bar


def _png_width(png: bytes) -> int:
    return int.from_bytes(png[16:20], "big")


@pytest.mark.gui
def test_opening_a_head_ct_in_napari_shows_the_brain_window(make_napari_viewer, tmp_path):
    import nibabel as nib

    data = _head_ct(stripped=True).data.transpose(2, 1, 0).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 5.0, 1.0])), tmp_path / "head.nii.gz")
    viewer = make_napari_viewer()
    layer, = viewer.open(str(tmp_path / "head.nii.gz"), plugin="napari-xaiclip")
    assert tuple(layer.contrast_limits) == (0.0, 80.0)
    assert "brain window W80 L40" in layer.metadata["xaiclip_window"] and "xaiclip_geometry" in layer.metadata
