"""Quality inside the ROI and the trivial map beside it: hand-worked cases, and the circularity
they exist for (an ROI-guided map is zero outside its ROI, so whole-slice overlap measures the ROI)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_xaiclip.metrics import heatmap_metrics, otsu_within, roi_metrics, trivial_metrics


def _scene():
    """A 4x4 ROI; the baseline covers its left half (8 px) and 8 px outside it."""
    roi = np.zeros((8, 12), bool)
    roi[2:6, 2:6] = True
    base = np.zeros_like(roi)
    base[2:6, 2:4] = True
    base[2:6, 8:10] = True
    heat = np.zeros(roi.shape)
    heat[2:6, 2:4] = 1.0  # on the object inside the ROI
    heat[2:6, 4:6] = 0.2  # the rest of the ROI
    return roi, base, heat


def test_roi_metrics_hand_case():
    roi, base, heat = _scene()
    m = roi_metrics(heat, base, roi)
    assert m["dice_in_roi"] == 1.0  # Otsu over the 16 ROI values splits 1.0 from 0.2: the left half
    assert m["pointing_in_roi"] == pytest.approx(8 * 1.0 / (8 * 1.0 + 8 * 0.2))


def test_trivial_map_hand_case():
    roi, base, _ = _scene()
    t = trivial_metrics(base, roi)
    assert t["trivial_dice_in_roi"] == pytest.approx(2 * 8 / (16 + 8))
    assert t["trivial_pointing_in_roi"] == pytest.approx(8 / 16)
    assert t["trivial_dice_vs_baseline"] == pytest.approx(2 * 8 / (16 + 16))
    assert t["trivial_pointing_game"] == pytest.approx(8 / 16)
    assert t["trivial_dice_vs_gt"] is None


def test_outside_pixels_do_not_decide_the_threshold():
    roi, base, heat = _scene()
    # a huge value outside the ROI would move a whole-image threshold above every ROI value
    heat_out = heat.copy()
    heat_out[0, 0] = 100.0
    np.testing.assert_array_equal(otsu_within(heat_out, roi), otsu_within(heat, roi))
    assert roi_metrics(heat_out, base, roi) == roi_metrics(heat, base, roi)


def test_whole_slice_overlap_of_an_roi_map_is_mostly_the_roi_and_in_roi_figures_are_not():
    """The reason for the in-ROI columns: uniform noise inside an ROI around the object looks good on
    whole-slice figures (AUC 0.93 against the baseline: the zeros outside the ROI do the work), while
    inside the ROI it falls below the trivial map and an informative map rises above it."""
    rng = np.random.default_rng(0)
    roi = np.zeros((64, 64), bool)
    roi[16:48, 16:48] = True
    base = np.zeros_like(roi)
    base[20:44, 20:44] = True
    noise = np.where(roi, rng.random(roi.shape), 0.0)
    good = np.where(base, 1.0, 0.0) + np.where(roi, 0.1, 0.0)
    trivial = trivial_metrics(base, roi)
    assert heatmap_metrics(noise, base)["auc_vs_baseline"] > 0.9
    assert roi_metrics(noise, base, roi)["dice_in_roi"] < trivial["trivial_dice_in_roi"] - 0.15
    assert roi_metrics(good, base, roi)["dice_in_roi"] == 1.0 > trivial["trivial_dice_in_roi"]
    assert roi_metrics(noise, base, roi)["pointing_in_roi"] == pytest.approx(trivial["trivial_pointing_in_roi"],
                                                                             abs=0.05)


def test_records_carry_in_roi_figures_and_the_trivial_baseline():
    from toy_models import IdentityProbNet, make_segmenter

    from napari_xaiclip.pipeline import ROI_FIELDS, explain_slice

    rng = np.random.default_rng(1)
    image = rng.random((32, 32)).astype(np.float32)
    image[8:24, 8:24] += 2.0
    roi = np.zeros((32, 32), bool)
    roi[6:26, 6:26] = True
    seg = make_segmenter(IdentityProbNet(), size=32, normalize="minmax", counting=False)
    results = explain_slice(seg, image, (4, 4, 28, 28), ["occlusion"], "both", roi=roi, curves=True,
                            curve_steps=8, params={"occlusion": {"window": 8, "stride": 8}})
    for r in results:
        assert set(ROI_FIELDS) - {"trivial_dice_vs_gt"} <= {k for k, v in r.record.items() if v is not None}
        expected = trivial_metrics(r.explanation.baseline_mask, roi)
        assert r.record["trivial_dice_in_roi"] == pytest.approx(expected["trivial_dice_in_roi"], abs=1e-6)
        assert r.record["dice_in_roi"] == pytest.approx(
            roi_metrics(r.explanation.heatmap, r.explanation.baseline_mask, roi)["dice_in_roi"], abs=1e-6)
    # the trivial curves are computed once per slice: the same in every record
    assert len({r.record["trivial_deletion_auc"] for r in results}) == 1


def test_roi_mode_totals_include_the_roi_cost_and_traditional_totals_do_not():
    from toy_models import IdentityProbNet, make_segmenter

    from napari_xaiclip.pipeline import explain_slice

    image = np.random.default_rng(2).random((32, 32)).astype(np.float32)
    roi = np.zeros((32, 32), bool)
    roi[8:24, 8:24] = True
    seg = make_segmenter(IdentityProbNet(), size=32, normalize="minmax", counting=False)
    results = explain_slice(seg, image, (4, 4, 28, 28), ["occlusion"], "both", roi=roi, curves=False,
                            params={"occlusion": {"window": 8, "stride": 8}}, roi_cost=(0.5, 2.0))
    by_mode = {r.record["mode"]: r for r in results}
    trad, guided = by_mode["traditional"], by_mode["roi"]
    assert guided.record["total_seconds"] == pytest.approx(guided.explanation.seconds + 0.5, abs=1e-5)
    assert guided.record["total_gflops"] == pytest.approx(guided.explanation.gflops + 2.0, abs=1e-5)
    assert trad.record["total_seconds"] == pytest.approx(trad.explanation.seconds, abs=1e-5)
    assert trad.record["total_gflops"] == pytest.approx(trad.explanation.gflops, abs=1e-5)
    assert trad.record["roi_seconds"] == guided.record["roi_seconds"] == 0.5
