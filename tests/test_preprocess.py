"""Tests of napari_xaiclip.preprocess against hand-worked values and direct library calls.

DESIGN.md section 2.1: background ``I < T_bg`` (Otsu by default), foreground
percentiles, linear stretch, OpenCV CLAHE, CLAHE on the foreground and the
min-max-rescaled original on the background, uint8 out, never a crash or NaN.
"""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from skimage.filters import threshold_otsu

from napari_xaiclip.preprocess import (
    CT_WINDOWS,
    PRESETS,
    InputGeometry,
    adaptive_enhance_parts,
    apply_preset,
    enhance,
    from_model_input,
    mr_normalize,
    rescale_to_uint8,
    to_model_input,
    window,
)

# --------------------------------------------------------------------------- helpers


def _minmax8(img) -> np.ndarray:
    """Independent min-max to 0..255 (round half up is enough: no ties in the test images)."""
    img = np.asarray(img, np.float64)
    lo, hi = img.min(), img.max()
    return np.floor((img - lo) / (hi - lo) * 255 + 0.5).astype(np.uint8)


def _exact_window(value: int, level: float, width: float) -> Fraction:
    lo = Fraction(level) - Fraction(width) / 2
    v = min(max(Fraction(value), lo), lo + Fraction(width))
    return (v - lo) * 255 / Fraction(width)


def _bimodal(shape=(64, 64), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(0.0, 5.0, shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = (yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 < (min(shape) / 3) ** 2
    img[disc] += 200.0 + 30.0 * np.sin(xx[disc] / 5.0)
    return img


# --------------------------------------------------------------------------- window


def test_ct_window_presets_are_the_documented_ones():
    assert CT_WINDOWS == {"brain": (40.0, 80.0), "abdomen": (40.0, 400.0), "liver": (30.0, 150.0),
                          "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0)}


def test_window_abdomen_hand_worked():
    hu = np.array([[-1000.0, -160.0, -100.0, 0.0, 100.0, 240.0, 3000.0]])
    # lo = -160, 255/400 per HU: -100 -> 38.25, 0 -> 102, 100 -> 165.75
    assert window(hu, 40, 400).tolist() == [[0, 0, 38, 102, 166, 255, 255]]


def test_window_brain_hand_worked():
    hu = np.array([[-50.0, 0.0, 20.0, 60.0, 80.0, 90.0]])
    # lo = 0, 255/80 per HU: 20 -> 63.75, 60 -> 191.25
    assert window(hu, 40, 80).tolist() == [[0, 0, 64, 191, 255, 255]]


@pytest.mark.parametrize("name", sorted(CT_WINDOWS))
def test_window_matches_exact_arithmetic_away_from_ties(name):
    level, width = CT_WINDOWS[name]
    lo, hi = level - width / 2, level + width / 2
    values = np.unique(np.r_[np.linspace(lo - 200, hi + 200, 97).round(), lo, hi, -1024, 0, 3071]).astype(int)
    exact = [_exact_window(v, level, width) for v in values]
    keep = [e - int(e) != Fraction(1, 2) for e in exact]
    expected = [int(e + Fraction(1, 2)) // 1 for e in exact]  # round half up; ties excluded
    got = window(values[None, :].astype(np.float64), level, width)[0]
    assert got.dtype == np.uint8
    assert [g for g, k in zip(got.tolist(), keep) if k] == [e for e, k in zip(expected, keep) if k]
    assert got[values <= lo].max() == 0 and got[values >= hi].min() == 255



@pytest.mark.parametrize("name", [n
                                  for n in sorted(CT_WINDOWS)])
def test_window_level_maps_to_128(name):
    # (level - lo) * 255 / width = 127.5 exactly: 128 under half-up and half-to-even rounding alike
    level, width = CT_WINDOWS[name]
    assert window(np.array([[level]]), level, width)[0, 0] == 128


def test_window_nan_inf_and_3d():
    img = np.array([[[np.nan, np.inf, -np.inf, 240.0]], [[-160.0, np.nan, 0.0, 1e9]]])
    out = window(img, 40, 400)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out.tolist() == [[[0, 255, 0, 255]], [[0, 0, 102, 255]]]


@pytest.mark.parametrize("width", [0.0, -1.0, -400.0])
def test_window_bad_width(width):
    with pytest.raises(ValueError, match="width"):
        window(np.zeros((2, 2)), 40, width)


@pytest.mark.parametrize("width", [np.nan, np.inf])
def test_window_non_finite_width_rejected(width):
    with pytest.raises(ValueError, match="width"):
        window(np.zeros((2, 2)), 40, width)


# --------------------------------------------------------------------------- enhance: the pipeline


@pytest.fixture(scope="module")
def ramp():
    return np.arange(10000, dtype=np.float64).reshape(100, 100)


def test_enhance_ramp_percentiles_stretch_clahe_and_selection(ramp):
    t_bg = 2000.0
    parts = adaptive_enhance_parts(ramp, bg_threshold=t_bg)

    background = ramp < t_bg
    np.testing.assert_array_equal(parts["background"], background)
    assert float(parts["bg_threshold"]) == t_bg

    fg = ramp[~background]
    assert fg.min() == 2000 and fg.size == 8000
    p_low, p_high = np.percentile(fg, [5, 95])
    assert float(parts["p_low"]) == pytest.approx(p_low, abs=1e-9)
    assert float(parts["p_high"]) == pytest.approx(p_high, abs=1e-9)
    # hand-worked with numpy's linear interpolation: 2000 + 0.05 * 7999, 2000 + 0.95 * 7999
    assert float(parts["p_low"]) == pytest.approx(2399.95)
    assert float(parts["p_high"]) == pytest.approx(9599.05)

    # stretch: 0 at/below p_low, 255 at/above p_high, 255 (I - p_low) / (p_high - p_low) between
    e = 255.0 * (ramp - p_low) / (p_high - p_low)
    expected = np.where(ramp <= p_low, 0, np.where(ramp >= p_high, 255, np.floor(e + 0.5)))
    near_tie = np.abs(e - np.floor(e) - 0.5) < 1e-6
    stretched = parts["stretched"]
    assert stretched.dtype == np.uint8
    np.testing.assert_array_equal(stretched[~near_tie], expected[~near_tie])
    assert np.abs(stretched.astype(int) - expected).max() <= 1

    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(stretched)
    np.testing.assert_array_equal(parts["clahe"], clahe)
    original8 = _minmax8(ramp)
    np.testing.assert_array_equal(parts["original8"], original8)
    out = enhance(ramp, bg_threshold=t_bg)
    assert out.dtype == np.uint8 and out.shape == ramp.shape
    np.testing.assert_array_equal(out, np.where(background, original8, clahe))
    np.testing.assert_array_equal(out, parts["enhanced"])


def test_enhance_parameters_reach_percentiles_and_clahe(ramp):
    parts = adaptive_enhance_parts(ramp, bg_threshold=500.0, percentiles=(2, 98), clip_limit=4.0,
                                   tile_grid=(4, 2))
    fg = ramp[ramp >= 500.0]
    assert float(parts["p_low"]) == pytest.approx(np.percentile(fg, 2))
    assert float(parts["p_high"]) == pytest.approx(np.percentile(fg, 98))
    expected = cv2.createCLAHE(clipLimit=4.0, tileGridSize=(4, 2)).apply(parts["stretched"])
    np.testing.assert_array_equal(parts["clahe"], expected)
    # and they differ from the defaults, so the parameters really were used
    assert not np.array_equal(parts["clahe"], adaptive_enhance_parts(ramp, bg_threshold=500.0)["clahe"])


def test_enhance_default_threshold_is_otsu():
    img = _bimodal()
    parts = adaptive_enhance_parts(img)
    t = threshold_otsu(img)
    assert float(parts["bg_threshold"]) == pytest.approx(t)
    np.testing.assert_array_equal(parts["background"], img < t)
    np.testing.assert_array_equal(enhance(img), enhance(img, bg_threshold=t))
    # the disc is foreground, the noise background
    assert not parts["background"][32, 32] and parts["background"][0, 0]


def test_enhance_background_keeps_rescaled_original():
    img = _bimodal()
    out = enhance(img)
    bg = img < threshold_otsu(img)
    np.testing.assert_array_equal(out[bg], _minmax8(img)[bg])


# --------------------------------------------------------------------------- enhance: degenerate inputs


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (16, 16), (64, 64)])
@pytest.mark.parametrize("value", [0.0, 7.0, -1000.0])
def test_enhance_constant_slice_is_defined(shape, value):
    out = enhance(np.full(shape, value))
    assert out.dtype == np.uint8 and out.shape == shape
    assert np.unique(out).size == 1  # one grey level: a constant stays constant


@pytest.mark.parametrize("shape", [(5, 5), (16, 16), (100, 100)])
def test_enhance_constant_slice_is_black(shape):
    assert enhance(np.full(shape, 7.0)).max() == 0


def test_enhance_all_background_is_rescaled_original(ramp):
    parts = adaptive_enhance_parts(ramp, bg_threshold=1e6)
    assert parts["background"].all()
    assert float(parts["p_low"]) == float(parts["p_high"]) == 9999.0
    np.testing.assert_array_equal(enhance(ramp, bg_threshold=1e6), _minmax8(ramp))


def test_enhance_flat_foreground_is_a_step():
    img = np.zeros((32, 32))
    img[8:24, 8:24] = 100.0
    img[0, 0] = 300.0  # above the flat plateau
    parts = adaptive_enhance_parts(img, bg_threshold=50.0, percentiles=(5, 90))
    assert float(parts["p_low"]) == float(parts["p_high"]) == 100.0
    np.testing.assert_array_equal(parts["stretched"], np.where(img >= 100.0, 255, 0))  # white on black
    out = parts["enhanced"]
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[img < 50], _minmax8(img)[img < 50])


def test_enhance_nan_and_inf_count_as_min_and_max():
    img = _bimodal(seed=3)
    dirty = img.copy()
    dirty[0, :5] = np.nan
    dirty[1, :5] = -np.inf
    dirty[2, :5] = np.inf
    clean = img.copy()
    finite = np.isfinite(dirty)
    clean[0, :5] = clean[1, :5] = dirty[finite].min()
    clean[2, :5] = dirty[finite].max()
    out = enhance(dirty)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, enhance(clean))
    np.testing.assert_array_equal(rescale_to_uint8(dirty), rescale_to_uint8(clean))


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_enhance_all_non_finite(fill):
    out = enhance(np.full((12, 10), fill))
    assert out.dtype == np.uint8 and out.shape == (12, 10)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_enhance_dtypes_give_the_same_result(dtype):
    img = np.clip(np.round(_bimodal(seed=5)), 0, 255)  # representable in every dtype
    reference = enhance(img.astype(np.float64))
    out = enhance(img.astype(dtype))
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, reference)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (3, 2), (1, 50), (50, 1), (7, 300)])
def test_enhance_tiny_and_thin_images(shape):
    img = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    out = enhance(img)
    assert out.dtype == np.uint8 and out.shape == shape


@pytest.mark.parametrize("kwargs", [
    {"percentiles": (95, 5)}, {"percentiles": (-1, 50)}, {"percentiles": (5, 101)},
    {"percentiles": (50, 50)}, {"clip_limit": 0.0}, {"clip_limit": -1.0},
    {"tile_grid": (0, 8)}, {"tile_grid": (8,)}, {"tile_grid": (8, 8, 8)},
])
def test_enhance_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        enhance(np.ones((8, 8)), **kwargs)


@pytest.mark.parametrize("shape", [(8,), (2, 8, 8), ()])
def test_enhance_not_2d(shape):
    with pytest.raises(ValueError, match="2D"):
        enhance(np.ones(shape))


@pytest.mark.parametrize("img", [
    np.array([[1.0, np.nextafter(1.0, 2.0)]]),
    np.array([[1.0, 1.0 + 1e-14], [1.0, 1.0]]),
    np.array([[0.0, 5e-324]]),
], ids=["one-ulp", "1e-14", "subnormal"])
def test_enhance_nearly_constant_float64_does_not_crash(img):
    out = enhance(img)
    assert out.dtype == np.uint8 and out.shape == img.shape


def test_rescale_keeps_a_subnormal_and_a_near_overflow_range():
    from napari_xaiclip.preprocess import rescale_to_uint8

    with np.errstate(all="raise"):  # no overflow or invalid value on the way
        np.testing.assert_array_equal(rescale_to_uint8(np.array([[0.0, 5e-324]])), [[0, 255]])
        np.testing.assert_array_equal(rescale_to_uint8(np.array([[-1e308, 0.0, 1e308]])), [[0, 128, 255]])


def test_enhance_huge_finite_range_does_not_crash():
    img = np.array([[-1e308, 1e308], [0.0, 1.0]])
    out = enhance(img)
    assert out.dtype == np.uint8 and out.shape == img.shape


# Float values are float32-representable (cast to the target dtype): that covers the whole
# float32 range, NaN and +-Inf; the float64-only extremes have their own tests above.
_FLOATS = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.floats(-1e4, 1e4, width=32),
    st.sampled_from([np.nan, np.inf, -np.inf, 0.0]),
)


@st.composite
def _slices(draw):
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24))
    if np.issubdtype(dtype, np.integer):
        arr = draw(hnp.arrays(dtype, shape))
    else:
        arr = draw(hnp.arrays(np.float32, shape, elements=_FLOATS)).astype(dtype)
    threshold = draw(st.one_of(st.none(), st.floats(-1e4, 1e4)))
    return arr, threshold


@settings(max_examples=80, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(_slices())
def test_enhance_property_uint8_of_input_shape(case):
    arr, threshold = case
    out = enhance(arr, bg_threshold=threshold)
    assert out.dtype == np.uint8
    assert out.shape == arr.shape


# --------------------------------------------------------------------------- rescale, MR, presets


def test_rescale_to_uint8():
    img = np.array([[-10.0, 0.0], [10.0, 30.0]])
    # (x + 10) * 255 / 40: 0, 63.75, 127.5 (tie, half to even -> 128), 255
    assert rescale_to_uint8(img).tolist() == [[0, 64], [128, 255]]
    assert rescale_to_uint8(np.full((3, 3), 5.0)).tolist() == [[0] * 3] * 3


def test_mr_normalize_percentiles_of_positive_voxels():
    rng = np.random.default_rng(1)
    img = np.zeros((40, 40))
    img[5:35, 5:35] = rng.gamma(4.0, 100.0, (30, 30))
    img[0, 0] = -50.0  # negative: not part of the statistics, clipped to 0
    img[0, 1] = np.nan
    lo, hi = np.percentile(img[5:35, 5:35], [0.5, 99.5])
    e = (np.clip(np.nan_to_num(img), lo, hi) - lo) * 255 / (hi - lo)
    out = mr_normalize(img)
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - e).max() <= 0.5 + 1e-9
    assert out[0, 0] == 0 and out[0, 1] == 0 and out[2, 2] == 0
    lo2, hi2 = np.percentile(img[5:35, 5:35], [10, 90])
    out2 = mr_normalize(img, (10, 90))
    e2 = (np.clip(np.nan_to_num(img), lo2, hi2) - lo2) * 255 / (hi2 - lo2)
    assert np.abs(out2.astype(int) - e2).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("img", [np.zeros((4, 4)), np.full((4, 4), -3.0), np.full((4, 4), np.nan)])
def test_mr_normalize_no_positive_voxels(img):
    out = mr_normalize(img)
    assert out.dtype == np.uint8 and not out.any()


def test_presets_list():
    assert set(PRESETS) == {f"ct-{k}" for k in CT_WINDOWS} | {"mr", "adaptive", "none"}


@pytest.mark.parametrize("preset", PRESETS)
def test_apply_preset_every_name(preset):
    img2 = _bimodal(seed=2) * 3 - 100
    vol = np.stack([img2, img2 * 0.5 + 10, img2[::-1]])
    for image in (img2, vol):
        out = apply_preset(image, preset)
        assert out.shape == image.shape
        if preset == "none":
            assert out.dtype == np.float32
            np.testing.assert_array_equal(out, image.astype(np.float32))
        elif preset.startswith("ct-"):
            level, width = CT_WINDOWS[preset[3:]]
            np.testing.assert_array_equal(out, window(image, level, width))
        elif preset == "mr":
            np.testing.assert_array_equal(out, mr_normalize(image))
        else:
            expected = enhance(image) if image.ndim == 2 else np.stack([enhance(s) for s in image])
            np.testing.assert_array_equal(out, expected)
        if preset != "none":
            assert out.dtype == np.uint8


def test_apply_preset_overrides():
    img = _bimodal()
    np.testing.assert_array_equal(apply_preset(img, "ct-abdomen", level=100, width=50), window(img, 100, 50))
    np.testing.assert_array_equal(apply_preset(img, "adaptive", clip_limit=3.0, bg_threshold=10.0),
                                  enhance(img, clip_limit=3.0, bg_threshold=10.0))
    np.testing.assert_array_equal(apply_preset(img, "mr", percentiles=(1, 99)), mr_normalize(img, (1, 99)))


@pytest.mark.parametrize("preset", ["ct-heart", "CT-abdomen", "abdomen", "", "clahe"])
def test_apply_preset_unknown(preset):
    with pytest.raises(ValueError, match="unknown"):
        apply_preset(np.zeros((4, 4)), preset)


# --------------------------------------------------------------------------- model input


def test_to_model_input_medsam_stretches_to_square():
    img = np.arange(128 * 256, dtype=np.float64).reshape(128, 256)
    out, geo = to_model_input(img, 64)
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert geo == InputGeometry((128, 256), 64, (64, 64))
    # shrinking by exact factors (2 rows, 4 columns): area interpolation is the block mean
    blocks = img.reshape(64, 2, 64, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(out, blocks, rtol=1e-6)


def test_to_model_input_sam_keeps_aspect_and_pads_bottom_right():
    img = np.ones((100, 200)) * 5.0
    out, geo = to_model_input(img, 64, keep_aspect=True)
    assert geo.resized == (32, 64)
    assert out.shape == (64, 64)
    np.testing.assert_allclose(out[:32, :], 5.0, rtol=1e-6)  # float32 area sums: not bit-exact
    assert np.all(out[32:, :] == 0.0)

    tall, geo2 = to_model_input(np.ones((200, 100)), 64, keep_aspect=True)
    assert geo2.resized == (64, 32)
    np.testing.assert_allclose(tall[:, :32], 1.0, rtol=1e-6)
    assert np.all(tall[:, 32:] == 0.0)

    img2 = np.arange(128 * 256, dtype=np.float64).reshape(128, 256)
    out3, geo3 = to_model_input(img2, 64, keep_aspect=True)
    assert geo3.resized == (32, 64)
    np.testing.assert_allclose(out3[:32], img2.reshape(32, 4, 64, 4).mean(axis=(1, 3)), rtol=1e-6)


@pytest.mark.parametrize("keep_aspect", [False, True])
@pytest.mark.parametrize("shape, size", [((100, 200), 256), ((120, 90), 64), ((256, 256), 128)])
def test_model_input_round_trip_smooth_image(keep_aspect, shape, size):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.sin(xx / 23.0) * np.cos(yy / 17.0) + 0.001 * xx
    small, geo = to_model_input(img, size, keep_aspect=keep_aspect)
    back = from_model_input(small, geo)
    assert back.shape == shape and back.dtype == np.float32
    # smooth image: the round trip recovers it up to interpolation error
    assert np.abs(back - img)[2:-2, 2:-2].max() < 0.05
    assert np.abs(back - img).mean() < 0.01


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, bool])
@pytest.mark.parametrize("keep_aspect", [False, True])
def test_nearest_keeps_label_values(dtype, keep_aspect):
    rng = np.random.default_rng(0)
    values = np.array([0, 1, 3, 7, 13, 255]) if dtype is not bool else np.array([0, 1])
    labels = rng.choice(values, size=(37, 53)).astype(dtype)
    out, geo = to_model_input(labels, 64, keep_aspect=keep_aspect, nearest=True)
    assert out.dtype == labels.dtype and out.shape == (64, 64)
    assert set(np.unique(out).tolist()) <= set(np.unique(labels).tolist())
    back = from_model_input(out, geo, nearest=True)
    assert back.dtype == labels.dtype and back.shape == labels.shape
    assert set(np.unique(back).tolist()) <= set(np.unique(labels).tolist())


def test_nearest_exact_for_integer_factors():
    labels = np.random.default_rng(1).integers(0, 14, (32, 32)).astype(np.uint8)
    up, geo = to_model_input(labels, 64, nearest=True)
    np.testing.assert_array_equal(up, np.repeat(np.repeat(labels, 2, 0), 2, 1))
    np.testing.assert_array_equal(from_model_input(up, geo, nearest=True), labels)  # exact round trip
    down, _ = to_model_input(np.repeat(np.repeat(labels, 2, 0), 2, 1), 32, nearest=True)
    np.testing.assert_array_equal(down, labels)


def test_box_and_points_to_model_hand_worked():
    _, geo = to_model_input(np.zeros((100, 200)), 64, keep_aspect=True)
    assert geo.scale == (0.32, 0.32)
    np.testing.assert_allclose(geo.box_to_model((10, 20, 110, 80)), [3.2, 6.4, 35.2, 25.6])
    np.testing.assert_allclose(geo.points_to_model([[50, 25], [200, 100]]), [[16.0, 8.0], [64.0, 32.0]])

    _, geo = to_model_input(np.zeros((100, 200)), 64)
    assert geo.scale == (0.64, 0.32)
    # x scales by 64/200 = 0.32, y by 64/100 = 0.64
    np.testing.assert_allclose(geo.box_to_model((10, 20, 110, 80)), [3.2, 12.8, 35.2, 51.2])
    np.testing.assert_allclose(geo.points_to_model([[50, 25]]), [[16.0, 16.0]])


def test_model_input_errors():
    with pytest.raises(ValueError, match="2D"):
        to_model_input(np.zeros((2, 3, 4)), 64)
    with pytest.raises(ValueError, match="empty"):
        to_model_input(np.zeros((0, 5)), 64)
    _, geo = to_model_input(np.zeros((10, 20)), 32)
    with pytest.raises(ValueError, match="32x32"):
        from_model_input(np.zeros((16, 16)), geo)
