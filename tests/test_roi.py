"""Tests of napari_xaiclip.roi on constructed maps with known answers (DESIGN.md section 2.2)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import threshold_otsu

from napari_xaiclip.metrics import dice
from napari_xaiclip.roi import (
    clean_roi,
    roi_area,
    roi_bbox,
    roi_from_box,
    roi_from_labels,
    roi_from_map,
    roi_from_threshold,
    roi_to_model,
)


def _disc(shape=(64, 64), centre=(30, 34), radius=12.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def _disc_r(radius, centre=(30, 34), shape=(64, 64)):
    return _disc(shape, centre, radius)


# --------------------------------------------------------------------------- roi_from_map


def test_roi_from_map_disc_is_recovered():
    disc = _disc()
    roi = roi_from_map(disc.astype(float))
    assert roi.dtype == bool and roi.shape == disc.shape
    assert dice(roi, disc) > 0.95
    # smoothing moves the 0.5 level by at most a pixel or two on a radius-12 disc
    assert np.all(roi[_disc_r(10.0)])
    assert not np.any(roi[~_disc_r(14.0)])


def test_roi_from_map_keeps_a_pixel_exactly_at_the_threshold():
    """The documented contract is ``>=``: values equal to the threshold are in the ROI."""
    score = np.array([[0.25, 0.5, 0.75], [0.5, 0.5, 0.0]])
    np.testing.assert_array_equal(roi_from_map(score, sigma=0, threshold=0.5),
                                  [[False, True, True], [True, True, False]])
    np.testing.assert_array_equal(roi_from_map(score, sigma=0, threshold=0.75),
                                  [[False, False, True], [False, False, False]])


def test_roi_from_map_without_smoothing_is_the_threshold():
    rng = np.random.default_rng(0)
    score = rng.random((20, 30))
    np.testing.assert_array_equal(roi_from_map(score, sigma=0), score >= 0.5)
    np.testing.assert_array_equal(roi_from_map(score, sigma=0, threshold=0.8), score >= 0.8)


@pytest.mark.parametrize("scale, offset", [(10.0, 5.0), (2.0, -1.0), (-3.0, 0.0), (1000.0, -500.0)])
def test_roi_from_map_outside_unit_is_minmax_normalised(scale, offset):
    disc = _disc().astype(float)
    score = disc * scale + offset
    normalised = (score - score.min()) / (score.max() - score.min())
    np.testing.assert_array_equal(roi_from_map(score), roi_from_map(normalised))
    if scale > 0:
        np.testing.assert_array_equal(roi_from_map(score), roi_from_map(disc))


def test_roi_from_map_auto_keeps_probabilities_minmax_rescales():
    weak = _disc().astype(float) * 0.4  # in [0, 1]: a probability, max 0.4 < 0.5
    assert not roi_from_map(weak).any()
    assert not roi_from_map(weak, normalize="auto").any()
    np.testing.assert_array_equal(roi_from_map(weak, normalize="minmax"), roi_from_map(_disc().astype(float)))
    # "none": raw values thresholded, even outside [0, 1]
    assert roi_from_map(_disc() * 10.0 + 5.0, normalize="none").all()


@pytest.mark.parametrize("value", [0.0, 3.0, -7.0, 1e6])
def test_roi_from_map_constant_map_outside_unit_or_zero_is_empty(value):
    roi = roi_from_map(np.full((16, 16), value))
    assert roi.dtype == bool and not roi.any()


@pytest.mark.parametrize("value", [0.0, 0.3, 0.7, 1.0, 5.0])
def test_roi_from_map_constant_map_minmax_is_empty(value):
    assert not roi_from_map(np.full((16, 16), value), normalize="minmax").any()


def test_roi_from_map_nan_counts_as_zero():
    disc = _disc().astype(float)
    dirty = disc.copy()
    dirty[:5, :5] = np.nan  # far from the disc
    np.testing.assert_array_equal(roi_from_map(dirty), roi_from_map(disc))
    dirty2 = disc.copy()
    dirty2[30, 34] = np.nan  # one hole inside the disc, smoothed over
    roi = roi_from_map(dirty2)
    assert roi[30, 34] and dice(roi, disc) > 0.95
    assert not roi_from_map(np.full((8, 8), np.nan)).any()


def test_roi_from_map_clean_up_options_are_applied():
    score = _disc().astype(float)
    score[2:6, 2:6] = 1.0  # a small separate blob
    roi = roi_from_map(score, sigma=0)
    assert roi[3, 3]
    roi_largest = roi_from_map(score, sigma=0, largest_component=True)
    np.testing.assert_array_equal(roi_largest, _disc())
    roi_margin = roi_from_map(_disc().astype(float), sigma=0, margin=2)
    yy, xx = np.mgrid[-2:3, -2:3]
    np.testing.assert_array_equal(roi_margin, ndimage.binary_dilation(_disc(), structure=yy ** 2 + xx ** 2 <= 4))


@pytest.mark.parametrize("bad, error", [
    (dict(score=np.zeros((4, 4, 4))), "2D"),
    (dict(score=np.zeros(4)), "2D"),
    (dict(score=np.zeros((4, 4)), normalize="zscore"), "normalize"),
])
def test_roi_from_map_errors(bad, error):
    with pytest.raises(ValueError, match=error):
        roi_from_map(**bad)


# --------------------------------------------------------------------------- clean_roi


def test_clean_roi_margin_on_a_single_pixel_is_a_disk_of_radius_2():
    roi = np.zeros((11, 11), bool)
    roi[5, 5] = True
    out = clean_roi(roi, margin=2)
    assert out.sum() == 13
    yy, xx = np.mgrid[:11, :11]
    np.testing.assert_array_equal(out, (yy - 5) ** 2 + (xx - 5) ** 2 <= 4)


@pytest.mark.parametrize("margin, count", [(1, 5), (3, 29)])
def test_clean_roi_margin_counts(margin, count):
    roi = np.zeros((15, 15), bool)
    roi[7, 7] = True
    # lattice points with dy^2 + dx^2 <= r^2: 5 for r = 1, 29 for r = 3
    assert clean_roi(roi, margin=margin).sum() == count


def test_clean_roi_negative_margin_erodes():
    roi = np.zeros((9, 9), bool)
    roi[2:7, 2:7] = True  # 5x5 square
    expected = np.zeros((9, 9), bool)
    expected[3:6, 3:6] = True  # eroded by the radius-1 cross: 3x3
    np.testing.assert_array_equal(clean_roi(roi, margin=-1), expected)


def test_clean_roi_largest_component():
    roi = np.zeros((20, 20), bool)
    roi[1:6, 1:7] = True  # 30 px
    roi[10:12, 10:15] = True  # 10 px
    roi[18, 18] = True
    out = clean_roi(roi, largest_component=True)
    expected = np.zeros_like(roi)
    expected[1:6, 1:7] = True
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(clean_roi(roi), roi)  # nothing asked, nothing done
    assert not clean_roi(np.zeros((5, 5)), largest_component=True).any()


def test_clean_roi_fill_holes():
    ring = _disc_r(10.0) & ~_disc_r(4.0)
    np.testing.assert_array_equal(clean_roi(ring, fill_holes=True), _disc_r(10.0))
    # order: largest component, then holes
    blob = ring.copy()
    blob[0:3, 0:3] = True
    np.testing.assert_array_equal(clean_roi(blob, largest_component=True, fill_holes=True), _disc_r(10.0))


def test_clean_roi_accepts_ints_and_rejects_3d():
    out = clean_roi(np.eye(4, dtype=np.uint8) * 7)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, np.eye(4, dtype=bool))
    with pytest.raises(ValueError, match="2D"):
        clean_roi(np.zeros((2, 3, 4)))


# --------------------------------------------------------------------------- thresholds, boxes, labels


def test_roi_from_threshold_value():
    img = np.arange(20, dtype=float).reshape(4, 5)
    np.testing.assert_array_equal(roi_from_threshold(img, 11.0), img > 11.0)
    np.testing.assert_array_equal(roi_from_threshold(img, 11.0, above=False), img < 11.0)
    np.testing.assert_array_equal(roi_from_threshold(img, 11.0, box=(1, 0, 3, 4)),
                                  (img > 11.0) & roi_from_box(img.shape, (1, 0, 3, 4)))


def test_roi_from_threshold_otsu_inside_the_box():
    rng = np.random.default_rng(0)
    img = rng.normal(10.0, 1.0, (40, 40))
    img[10:20, 10:20] += 40.0  # bright organ inside the box
    img[30:, 30:] = 1000.0  # very bright structure outside the box
    box = (5, 5, 25, 25)
    inside = np.zeros(img.shape, bool)
    inside[5:25, 5:25] = True
    t = threshold_otsu(img[inside])
    roi = roi_from_threshold(img, box=box)
    np.testing.assert_array_equal(roi, (img > t) & inside)
    organ = np.zeros(img.shape, bool)
    organ[10:20, 10:20] = True
    assert np.all(roi[organ]) and dice(roi, organ) > 0.98
    # Otsu over the whole slice picks the bright structure instead
    whole = roi_from_threshold(img)
    assert whole[30:, 30:].all() and whole[organ].mean() < 0.5


def test_roi_from_threshold_nan_and_constant_box():
    img = np.zeros((10, 10))
    img[2:5, 2:5] = 5.0
    img[0, 0] = np.nan
    np.testing.assert_array_equal(roi_from_threshold(img, 1.0), np.nan_to_num(img) > 1.0)
    assert not roi_from_threshold(np.full((6, 6), 3.0)).any()  # constant: nothing above it


def test_roi_from_threshold_box_outside_slice():
    with pytest.raises(ValueError, match="overlap"):
        roi_from_threshold(np.ones((10, 10)), box=(20, 20, 30, 30))


def test_roi_from_threshold_nearly_constant_region():
    img = np.ones((6, 6))
    img[2, 2] = np.nextafter(1.0, 2.0)
    roi = roi_from_threshold(img)
    assert roi.dtype == bool and roi.shape == img.shape


def test_roi_from_box_hand_worked():
    roi = roi_from_box((6, 8), (2, 1, 5, 4))
    expected = np.zeros((6, 8), bool)
    expected[1:4, 2:5] = True  # x1, y1 exclusive
    np.testing.assert_array_equal(roi, expected)


@pytest.mark.parametrize("box, rows, cols", [
    ((-5, -3, 10, 4), (0, 4), (0, 10)),       # clipped at the top-left
    ((6, 2, 100, 100), (2, 8), (6, 12)),      # clipped at the bottom-right
    ((1.2, 2.7, 3.1, 4.0), (2, 4), (1, 4)),   # fractional: floor starts, ceil ends
    ((0, 0, 12, 8), (0, 8), (0, 12)),         # whole slice
])
def test_roi_from_box_clipping(box, rows, cols):
    roi = roi_from_box((8, 12), box)
    expected = np.zeros((8, 12), bool)
    expected[rows[0]:rows[1], cols[0]:cols[1]] = True
    np.testing.assert_array_equal(roi, expected)


@pytest.mark.parametrize("box", [(20, 20, 30, 30), (-10, -10, -1, -1)])
def test_roi_from_box_fully_outside_is_empty(box):
    assert not roi_from_box((8, 12), box).any()


@pytest.mark.parametrize("box", [
    (5, 1, 5, 4),    # x1 == x0
    (6, 1, 5, 4),    # x1 < x0
    (1, 4, 5, 4),    # y1 == y0
    (1, 5, 5, 4),    # y1 < y0
    (1, 2, 3),       # too few values
    (1, 2, 3, 4, 5),  # too many
])
def test_roi_from_box_bad_boxes(box):
    with pytest.raises(ValueError):
        roi_from_box((8, 12), box)


def test_roi_from_labels():
    labels = np.array([[0, 1, 1], [2, 13, 0]])
    np.testing.assert_array_equal(roi_from_labels(labels, 1), labels == 1)
    np.testing.assert_array_equal(roi_from_labels(labels, 13), labels == 13)
    np.testing.assert_array_equal(roi_from_labels(labels), labels != 0)
    assert not roi_from_labels(labels, 5).any()
    with pytest.raises(ValueError, match="2D"):
        roi_from_labels(np.zeros((2, 2, 2)))


# --------------------------------------------------------------------------- bbox, area, model resolution


def test_roi_bbox_exclusive_ends():
    roi = np.zeros((10, 12), bool)
    roi[2:5, 3:9] = True
    roi[7, 1] = True
    assert roi_bbox(roi) == (1, 2, 9, 8)
    single = np.zeros((4, 4), bool)
    single[3, 3] = True
    assert roi_bbox(single) == (3, 3, 4, 4)
    assert roi_bbox(roi_from_box((10, 12), (2, 1, 7, 6))) == (2, 1, 7, 6)  # box round trip
    assert roi_bbox(np.zeros((5, 5), bool)) is None


def test_roi_area_mm2():
    roi = np.zeros((10, 10), bool)
    roi[:3, :4] = True
    assert roi_area(roi) == (12, 12.0)
    n, mm2 = roi_area(roi, spacing=(0.5, 0.8))
    assert n == 12 and mm2 == pytest.approx(12 * 0.4)
    assert roi_area(np.zeros((3, 3), bool), (2.0, 2.0)) == (0, 0.0)


def test_roi_to_model_nearest_exact_for_integer_factors():
    roi = np.zeros((128, 128), bool)
    roi[32:96, 40:88] = True
    out = roi_to_model(roi, 64)
    expected = np.zeros((64, 64), bool)
    expected[16:48, 20:44] = True
    assert out.dtype == bool
    np.testing.assert_array_equal(out, expected)

    small = np.zeros((32, 32), bool)
    small[8:24, 4:12] = True
    up = roi_to_model(small, 64)
    np.testing.assert_array_equal(up, np.repeat(np.repeat(small, 2, 0), 2, 1))


def test_roi_to_model_keep_aspect_pads_with_false():
    roi = np.ones((100, 200), bool)
    out = roi_to_model(roi, 64, keep_aspect=True)
    assert out.shape == (64, 64) and out.dtype == bool
    assert out[:32].all() and not out[32:].any()
    stretched = roi_to_model(roi, 64)
    assert stretched.all()
