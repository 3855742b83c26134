"""Reliability against bad input (issue 8, item 1).

* Property-based sweeps (hypothesis) over ``preprocess.enhance``,
  ``roi.roi_from_map``, the slicing helpers and every explainer in
  ``explain.METHODS``: random shapes (1 x N included), dtypes, NaN/Inf,
  constant images, tiny and huge boxes, empty and full ROIs. Each input gets
  a defined result or a ValueError with a clear message, never another
  exception type and never a NaN.
* A corpus of bad files (``bad_files.py``) pushed through ``load_volume``, the
  napari reader hook, ``xaiclip explain`` and napari's ``viewer.open``: the
  same clear ValueError everywhere, exit status 2 and no file left behind by
  the CLI, and a viewer that keeps working.
* ``save_volume`` into a read-only folder raises and leaves nothing behind.

Bugs the sweep found were fixed; their tests stay as regression tests
(see docs/reliability.md).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from napari_xaiclip.explain import METHODS, explain
from napari_xaiclip.io import load_volume, save_volume
from napari_xaiclip.preprocess import enhance
from napari_xaiclip.roi import roi_from_map
from napari_xaiclip.slicing import put_slice, slice_layer_data, take_slice

from bad_files import CORPUS, REFUSED, write_one
from privileges import unprivileged
from toy_models import TinyConvNet, make_segmenter

torch.set_num_threads(1)

DTYPES = ("uint8", "int16", "uint16", "float32", "float64")
KINDS = ("random", "constant", "zeros", "nan", "inf", "all-nan", "extremes", "two-values")
# every hypothesis test here stays well under ~10 s on one busy core
QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SWEEP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- array builders


def make_array(shape, dtype: str, kind: str, seed: int) -> np.ndarray:
    """A deterministic test image of ``shape`` and ``dtype`` with a given pathology."""
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        a = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dt)
    else:
        a = (rng.standard_normal(shape) * 300 + 40).astype(dt)
    if kind == "constant":
        a[...] = a.flat[0]
    elif kind == "zeros":
        a[...] = 0
    elif kind == "two-values":
        a = np.where(rng.random(shape) < 0.5, a.flat[0], a.flat[-1]).astype(dt)
    elif kind == "extremes":
        lo, hi = (np.iinfo(dt).min, np.iinfo(dt).max) if dt.kind in "iu" else (np.finfo(dt).min, np.finfo(dt).max)
        a.flat[0] = hi
        a.flat[-1] = lo
    elif kind in ("nan", "inf", "all-nan") and dt.kind == "f":
        if kind == "all-nan":
            a[...] = np.nan
        else:
            hit = rng.random(shape) < 0.2
            a[hit] = np.nan if kind == "nan" else np.inf
            if kind == "inf":
                a.flat[-1] = -np.inf
    return a


@st.composite
def images(draw, min_side=1, max_side=40, kinds=KINDS):
    h = draw(st.integers(min_side, max_side))
    w = draw(st.integers(min_side, max_side))
    return make_array((h, w), draw(st.sampled_from(DTYPES)), draw(st.sampled_from(kinds)),
                      draw(st.integers(0, 2**16)))


def finite_version(a: np.ndarray) -> np.ndarray:
    """``a`` with NaN and -Inf set to its smallest finite value and +Inf to its largest (enhance's rule)."""
    f = np.asarray(a, np.float64)
    ok = np.isfinite(f)
    if not ok.any():
        return np.zeros(f.shape)
    out = np.where(ok, f, f[ok].min())
    out[np.isposinf(f)] = f[ok].max()
    return out


# --------------------------------------------------------------------------- enhance


@QUICK
@given(images())
@example(make_array((1, 300), "float32", "random", 0))
@example(make_array((300, 1), "uint16", "extremes", 0))
@example(make_array((1, 1), "float64", "all-nan", 0))
def test_enhance_any_2d_slice_gives_uint8_of_same_shape(img):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no silent overflow or invalid value on the way
        out = enhance(img)
    assert out.dtype == np.uint8
    assert out.shape == img.shape


@QUICK
@given(images(kinds=("nan", "inf", "all-nan", "random")))
def test_enhance_treats_nan_and_inf_as_documented(img):
    """NaN and -Inf count as the slice's minimum, +Inf as its maximum (enhance's docstring)."""
    np.testing.assert_array_equal(enhance(img), enhance(finite_version(img)))


@QUICK
@given(st.integers(1, 40), st.integers(1, 40), st.sampled_from(DTYPES), st.integers(0, 255))
def test_enhance_constant_slice_is_black(h, w, dtype, value):
    out = enhance(np.full((h, w), value, dtype=dtype))
    assert out.shape == (h, w) and not out.any()


@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4)], ids=str)
def test_enhance_refuses_non_2d_with_a_value_error_naming_the_shape(shape):
    with pytest.raises(ValueError, match=rf"expected a 2D slice, got shape {re.escape(str(shape))}"):
        enhance(np.zeros(shape, np.float32))


@pytest.mark.parametrize("shape", [(0, 5), (5, 0)], ids=str)
def test_enhance_refuses_an_empty_slice_naming_its_shape(shape):
    with pytest.raises(ValueError, match=rf"empty.*{re.escape(str(shape))}|{re.escape(str(shape))}.*empty"):
        enhance(np.zeros(shape, np.float32))


# --------------------------------------------------------------------------- roi_from_map

sigmas = st.one_of(st.just(0.0), st.floats(0.0, 6.0, allow_nan=False))
thresholds = st.floats(-0.5, 1.5, allow_nan=False)


@QUICK
@given(images(max_side=48), sigmas, thresholds, st.sampled_from(["auto", "minmax", "none"]))
@example(np.zeros((1, 1)), 2.0, 0.5, "auto")
@example(np.full((7, 9), np.nan), 0.0, 0.0, "auto")
def test_roi_from_map_any_map_gives_bool_mask_of_same_shape(score, sigma, threshold, normalize):
    roi = roi_from_map(score, sigma=sigma, threshold=threshold, normalize=normalize)
    assert roi.dtype == bool
    assert roi.shape == score.shape


@QUICK
@given(st.integers(1, 40), st.integers(1, 40), sigmas, st.floats(0.0, 1.0, exclude_min=True),
       st.sampled_from(["zeros", "constant", "all-nan"]))
def test_roi_from_map_without_signal_is_empty(h, w, sigma, threshold, kind):
    score = make_array((h, w), "float32", kind, 0)
    assume(kind != "constant" or not (0 <= score.flat[0] <= 1 and score.flat[0] >= threshold))
    assert not roi_from_map(score, sigma=sigma, threshold=threshold).any()


@QUICK
@given(images(min_side=2, max_side=32, kinds=("random", "nan", "two-values")),
       st.floats(0.01, 1.0), st.sampled_from(["auto", "minmax"]))
def test_roi_from_map_without_smoothing_is_an_upper_set_holding_the_peak(score, threshold, normalize):
    """sigma 0: a pixel is in the ROI iff its score is >= that of some ROI pixel; the maximum is in it."""
    roi = roi_from_map(score, sigma=0, threshold=threshold, normalize=normalize)
    values = np.nan_to_num(np.asarray(score, np.float64), nan=0.0)
    kept_as_probability = normalize == "auto" and values.min() >= 0 and values.max() <= 1
    if values.max() > values.min() and not kept_as_probability:  # min-max puts the peak at 1 >= threshold
        assert roi[np.unravel_index(np.argmax(values), values.shape)]
    if roi.any():
        assert np.array_equal(roi, values >= values[roi].min())


def test_roi_from_map_plus_inf_counts_as_the_maximum():
    score = np.zeros((16, 16), np.float32)
    score[4:8, 4:8] = 5.0
    score[12, 12] = np.inf
    roi = roi_from_map(score, sigma=0, threshold=0.5)
    assert roi[12, 12] and roi[4:8, 4:8].all()


def test_roi_from_map_full_float64_range_keeps_the_peak():
    score = np.zeros((8, 8))
    score[0, 0] = np.finfo(np.float64).max
    score[7, 7] = np.finfo(np.float64).min
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        roi = roi_from_map(score, sigma=0, threshold=0.5)
    assert roi[0, 0] and not roi[7, 7]


# --------------------------------------------------------------------------- slicing


@st.composite
def volumes_and_slices(draw):
    shape = tuple(draw(st.integers(1, 7)) for _ in range(3))
    axis = draw(st.integers(0, 2))
    index = draw(st.integers(0, shape[axis] - 1))
    dtype = draw(st.sampled_from(("uint8", "int16", "float32", "float64", "bool")))
    vol = np.random.default_rng(draw(st.integers(0, 999))).integers(0, 100, shape).astype(dtype)
    return vol, axis, index


@QUICK
@given(volumes_and_slices())
def test_take_then_put_slice_round_trips(case):
    vol, axis, index = case
    plane = take_slice(vol, axis, index)
    assert plane.shape == tuple(s for a, s in enumerate(vol.shape) if a != axis)
    assert np.array_equal(plane, np.take(vol, index, axis=axis))  # independent truth
    out = np.zeros_like(vol)
    assert put_slice(out, axis, index, plane) is out
    assert np.array_equal(take_slice(out, axis, index), plane)
    others = np.ones(vol.shape, bool)
    others[tuple(index if a == axis else slice(None) for a in range(3))] = False
    assert not out[others].any()  # nothing written outside the slice
    assert np.array_equal(np.squeeze(slice_layer_data(plane, axis), axis), plane)


@QUICK
@given(volumes_and_slices(), st.integers(-3, 10), st.integers(-2, 4))
def test_slicing_out_of_range_raises_value_error_naming_the_problem(case, index, axis):
    vol, _, _ = case
    if axis in (0, 1, 2) and 0 <= index < vol.shape[axis]:
        take_slice(vol, axis, index)
        return
    with pytest.raises(ValueError, match=r"axis must be 0, 1 or 2|outside"):
        take_slice(vol, axis, index)
    with pytest.raises(ValueError, match=r"axis must be 0, 1 or 2|outside"):
        put_slice(vol.copy(), axis, index, np.zeros((1, 1)))


@QUICK
@given(volumes_and_slices(), st.integers(1, 8), st.integers(1, 8))
def test_put_slice_of_wrong_shape_raises_and_leaves_the_volume_alone(case, h, w):
    vol, axis, index = case
    expected = tuple(s for a, s in enumerate(vol.shape) if a != axis)
    assume((h, w) != expected)
    before = vol.copy()
    with pytest.raises(ValueError, match=r"slice result has shape"):
        put_slice(vol, axis, index, np.ones((h, w), vol.dtype))
    assert np.array_equal(vol, before)


# --------------------------------------------------------------------------- explainers

S = 32
#: cheap parameters that still exercise every code path of each method
CHEAP = {
    "occlusion": {"window": 8},
    "adaptive-occlusion": {"window": 8},
    "rise": {"n_samples": 16},
    "lime": {"n_samples": 20},
    "ig": {"n_steps": 2, "n_samples": 1},
    "gradcam": {},
    "causal": {"n_samples": 3},
    "segx": {"base": "occlusion", "base_params": {"window": 8}},
}
#: the only ValueErrors an explainer may raise for these inputs, by what caused them
CLEAR_ERRORS = {
    "box": r"box .* lies outside the \d+x\d+ slice",
    "empty-roi": r"the ROI is empty",
    "vanished-roi": r"the ROI vanishes at the model's input resolution",
}


@pytest.fixture(scope="module")
def toy():
    return make_segmenter(TinyConvNet(in_channels=2, seed=3), S, box="channel", normalize="minmax", counting=False)


@st.composite
def boxes(draw, h, w):
    """Boxes (x0, y0, x1, y1): ordinary, 1 px wide/high, far beyond the slice, or fully outside it."""
    kind = draw(st.sampled_from(("inside", "thin-x", "thin-y", "one-pixel", "huge", "partly-out", "outside")))
    x0 = draw(st.integers(0, w - 1))
    y0 = draw(st.integers(0, h - 1))
    if kind == "inside":
        return kind, (x0, y0, draw(st.integers(x0 + 1, w)), draw(st.integers(y0 + 1, h)))
    if kind == "thin-x":
        return kind, (x0, 0, x0 + 1, h)
    if kind == "thin-y":
        return kind, (0, y0, w, y0 + 1)
    if kind == "one-pixel":
        return kind, (x0, y0, x0 + 1, y0 + 1)
    if kind == "huge":
        return kind, (-10_000.0, -1e6, 1e6, 10_000.0)
    if kind == "partly-out":
        return kind, (x0 - 200, y0 - 50, x0 + 300, y0 + 1)
    return kind, (w + 5, h + 5, w + 50, h + 80)


@st.composite
def explain_inputs(draw):
    h, w = draw(st.integers(8, 80)), draw(st.integers(8, 80))
    kind = draw(st.sampled_from(("random", "constant", "zeros", "nan", "inf", "all-nan", "two-values")))
    image = make_array((h, w), draw(st.sampled_from(DTYPES)), kind, draw(st.integers(0, 999)))
    box_kind, box = draw(boxes(h, w))
    roi_kind = draw(st.sampled_from(("none", "full", "empty", "blob", "one-pixel")))
    roi = None
    if roi_kind == "full":
        roi = np.ones((h, w), bool)
    elif roi_kind == "empty":
        roi = np.zeros((h, w), bool)
    elif roi_kind == "blob":
        r0, c0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        roi = np.zeros((h, w), bool)
        roi[r0:r0 + draw(st.integers(1, h)), c0:c0 + draw(st.integers(1, w))] = True
    elif roi_kind == "one-pixel":
        roi = np.zeros((h, w), bool)
        roi[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
    return image, box_kind, box, roi_kind, roi


def _check_explanation(ex, shape):
    assert ex.heatmap.shape == shape
    assert ex.heatmap.dtype == np.float32
    assert np.isfinite(ex.heatmap).all()
    assert ex.baseline_probs.shape == shape and np.isfinite(ex.baseline_probs).all()
    for name, m in ex.maps.items():
        assert m.shape == shape and np.isfinite(m).all(), name
    if ex.roi is not None:
        assert not ex.heatmap[~ex.roi].any()


def _explain_or_clear_error(method, seg, image, box_kind, box, roi_kind, roi):
    """Run ``method``; a ValueError must be one of the clear errors this input can cause."""
    event(f"box {box_kind}, ROI {roi_kind}")
    try:
        ex = explain(method, seg, image, box=box, roi=roi, seed=0, **CHEAP[method])
    except ValueError as exc:
        message = str(exc)
        event(f"ValueError: {message[:40]}")
        allowed = []
        if box_kind == "outside":
            allowed.append(CLEAR_ERRORS["box"])
        if roi_kind == "empty":
            allowed.append(CLEAR_ERRORS["empty-roi"])
        if roi_kind in ("one-pixel", "blob"):
            allowed.append(CLEAR_ERRORS["vanished-roi"])
        assert any(re.search(p, message) for p in allowed), f"unexpected ValueError: {message}"
        assert "\n" not in message.strip() and len(message) < 300
        return None
    assert box_kind != "outside", "a box outside the slice must be refused"
    assert roi_kind != "empty", "an empty ROI must be refused"
    _check_explanation(ex, image.shape)
    return ex


@pytest.mark.parametrize("method", METHODS)
def test_every_explainer_gives_a_finite_map_or_a_clear_value_error(toy, method):
    @SWEEP
    @given(explain_inputs())
    def sweep(case):
        _explain_or_clear_error(method, toy, *case)

    sweep()


@pytest.mark.parametrize("method", METHODS)
def test_empty_roi_is_refused_naming_the_roi(toy, method):
    image = make_array((20, 30), "float32", "random", 1)
    with pytest.raises(ValueError, match=r"ROI is empty"):
        explain(method, toy, image, box=(2, 2, 20, 15), roi=np.zeros((20, 30), bool), **CHEAP[method])


@pytest.mark.parametrize("method", METHODS)
def test_full_roi_explains_exactly_like_traditional(toy, method):
    @settings(max_examples=6, deadline=None)
    @given(st.integers(8, 80), st.integers(8, 80), st.sampled_from(DTYPES), st.integers(0, 99))
    def same(h, w, dtype, seed):
        image = make_array((h, w), dtype, "random", seed)
        box = (1, 1, w - 1, h - 1)
        trad = explain(method, toy, image, box=box, seed=0, **CHEAP[method])
        full = explain(method, toy, image, box=box, roi=np.ones((h, w), bool), seed=0, **CHEAP[method])
        assert full.mode == "roi" and trad.mode == "traditional"
        np.testing.assert_allclose(full.heatmap, trad.heatmap, atol=1e-6)
        assert full.n_forward == trad.n_forward

    same()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("box", [(0, 0, 1, 50), (69, 0, 70, 50), (0, 49, 70, 50), (69, 49, 70, 50),
                                 (-1e9, -1e9, 1e9, 1e9), (0.2, 0.2, 0.7, 0.9)],
                         ids=["1px-left", "1px-right", "1px-bottom", "corner-pixel", "huge", "sub-pixel"])
def test_tiny_and_huge_boxes_run(toy, method, box):
    image = make_array((50, 70), "int16", "random", 2)
    _check_explanation(explain(method, toy, image, box=box, **CHEAP[method]), (50, 70))


@pytest.mark.parametrize("box, fragment", [((40, 40, 60, 60), "box (40.0, 40.0, 60.0, 60.0) lies outside"),
                                           ((20, 5, 10, 25), "got (20.0, 5.0, 10.0, 25.0)")],
                         ids=["outside", "inverted"])
def test_box_errors_print_plain_numbers(toy, box, fragment):
    with pytest.raises(ValueError) as info:
        explain("occlusion", toy, np.zeros((20, 30), np.float32), box=box)
    assert fragment in str(info.value) and "np.float64" not in str(info.value)


def _default_segmenter():
    from napari_xaiclip.models import load_segmenter

    return load_segmenter("phantom")


@pytest.mark.parametrize("which", ["module-segmenter", "default-tiny-sam"])
def test_slice_spanning_the_float32_range_gives_finite_probabilities(toy, which):
    image = make_array((24, 40), "float32", "extremes", 3)  # one pixel at +3.4e38, one at -3.4e38
    seg = toy if which == "module-segmenter" else _default_segmenter()
    box = (2, 2, 30, 20)
    assert np.isfinite(seg.segment(image, box=box)).all()
    ex = explain("occlusion", seg, image, box=box, window=seg.input_size // 4)
    _check_explanation(ex, image.shape)


# --------------------------------------------------------------------------- bad files: loader and reader


@pytest.fixture
def bad(request, tmp_path):
    return write_one(tmp_path, request.param)


def _load(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = load_volume(path)
    return vol, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("bad", CORPUS, indirect=True)
def test_load_volume_and_reader_give_the_same_clear_result(bad):
    from napari_xaiclip._reader import get_reader

    reader = get_reader(str(bad.path))
    assert reader is not None  # a .nii name is ours, whatever is inside
    if bad.refused:
        with pytest.raises(ValueError) as loaded:
            load_volume(bad.path)
        with pytest.raises(ValueError) as read:
            reader(str(bad.path))
        message = str(loaded.value)
        assert str(bad.path) in message and bad.fragment in message
        assert str(read.value) == message
        assert "Traceback" not in message
        return
    vol, warned = _load(bad.path)
    assert any(bad.warning in w for w in warned), warned
    raw = np.asanyarray(nib.load(str(bad.path)).dataobj)
    assert vol.data.ndim == 3 and vol.data.size == raw[..., 0].size
    np.testing.assert_array_equal(np.sort(vol.data, axis=None), np.sort(raw[..., 0].astype(np.float32), axis=None))
    layers = reader(str(bad.path))
    assert len(layers) == 1 and layers[0][0].shape == vol.data.shape


def _run_python(code: str, timeout: float = 120.0, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True,
                          text=True, timeout=timeout, env=env, **kwargs)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_file_with_a_big_header_is_refused_without_allocating_the_claim(tmp_path, suffix):
    # peak RSS from /proc (VmHWM, reset through clear_refs): ru_maxrss of a child starts at its
    # parent's RSS on Linux, so it cannot see a 500 MB peak under a big pytest process
    out = _run_python(f"""
        import numpy as np
        from pathlib import Path
        from bad_files import header_only_nifti
        from napari_xaiclip.io import load_volume

        def hwm():
            return [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0] / 1024

        p = header_only_nifti(Path({str(tmp_path)!r}) / "big{suffix}", (1000, 1000, 500), dtype=np.uint8)
        open("/proc/self/clear_refs", "w").write("5")
        before = hwm()
        try:
            load_volume(p)
        except ValueError as exc:
            print("refused:", " ".join(str(exc).split()))
        print("growth_mb", hwm() - before)
        """)
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "truncated" in out.stdout, out.stdout
    growth = float(out.stdout.split("growth_mb")[1])
    size = os.path.getsize(tmp_path / f"big{suffix}")
    assert growth < 64, f"peak RSS grew by {growth:.0f} MB to refuse a {size}-byte file"


def _odd_voxels(folder: Path, kind: str) -> Path:
    a = np.random.default_rng(0).random((6, 7, 5)).astype(np.float32) * 100
    if kind == "nan-inf":
        a[0, 0, 0], a[1, 1, 1], a[2, 2, 2] = np.inf, -np.inf, np.nan
    elif kind == "all-nan":
        a[...] = np.nan
    elif kind == "complex":
        a = (a + 1j * (100 - a)).astype(np.complex64)
    path = folder / f"{kind}.nii"
    nib.save(nib.Nifti1Image(a, np.eye(4)), str(path))
    return path


@pytest.mark.parametrize("kind", ["nan-inf", "all-nan"])
def test_nan_and_inf_voxels_load_as_they_are(tmp_path, kind):
    """Voxel values are data, not errors: NaN/Inf pass through load_volume and the reader unchanged."""
    from napari_xaiclip._reader import read_nifti

    path = _odd_voxels(tmp_path, kind)
    raw = np.asanyarray(nib.load(str(path)).dataobj)
    vol = load_volume(path)
    assert np.isnan(vol.data).sum() == np.isnan(raw).sum()
    assert np.isinf(vol.data).sum() == np.isinf(raw).sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "All-NaN slice encountered"
        (data, kwargs, kind_), = read_nifti(str(path))
    assert kind_ == "image" and data.shape == vol.data.shape
    limits = kwargs.get("contrast_limits")
    assert limits is None or np.all(np.isfinite(limits))


def test_complex_voxels_are_refused_or_turned_into_magnitude(tmp_path):
    path = _odd_voxels(tmp_path, "complex")
    raw = np.asanyarray(nib.load(str(path)).dataobj)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            vol = load_volume(path)
        except ValueError as exc:
            assert "complex" in str(exc).lower() and str(path) in str(exc)
            return
    assert not [w for w in caught if "imaginary" in str(w.message)], "the imaginary part was dropped"
    np.testing.assert_allclose(np.sort(vol.data, axis=None), np.sort(np.abs(raw), axis=None), rtol=1e-6)


# --------------------------------------------------------------------------- bad files: the CLI


def toy_cli_segmenter():
    """``--model module:test_reliability_inputs:toy_cli_segmenter``: a tiny seeded conv net, 32 px input."""
    return TinyConvNet(in_channels=2, seed=3), {"input_size": S, "box": "channel", "normalize": "minmax"}


def _cli(path, out, *extra):
    from napari_xaiclip.cli import main

    return main(["explain", str(path), "--slice", "0", "--box", "1", "1", "5", "5", "--roi", "none",
                 "--mode", "traditional", "--out", str(out), *extra])


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("bad", REFUSED, indirect=True)
def test_cli_refuses_bad_file_with_one_error_line_and_no_output(bad, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    code = _cli(bad.path, out)
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and bad.fragment in err[0], err
    assert bad.path.name in err[0]
    assert "Traceback" not in captured.err + captured.out
    assert _tree(out) == []  # not even a partial or temporary file


def test_cli_refuses_bad_file_without_creating_the_output_folder(tmp_path, capsys):
    bad = write_one(tmp_path, "truncated-gz")
    assert _cli(bad.path, tmp_path / "new" / "out") == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "new").exists()


def test_cli_explains_the_first_volume_of_a_4d_time_file(tmp_path, capsys):
    bad = write_one(tmp_path, "time-4d")
    out = tmp_path / "out"
    code = _cli(bad.path, out, "--model", "module:test_reliability_inputs:toy_cli_segmenter",
                "--param", "occlusion.window=8", "--no-curves")
    err = capsys.readouterr().err
    assert code == 0, err
    assert any(line.startswith("warning:") and "3 time points" in line for line in err.splitlines()), err
    heat = nib.load(str(out / "occlusion-traditional.nii.gz"))
    assert heat.shape == nib.load(str(bad.path)).shape[:3]  # 3D, in the source's own geometry
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


class _FailingNet(torch.nn.Module):
    """Fails on its ``fail_at``-th forward, after the CLI has started writing its staging folder."""

    def __init__(self, exc: BaseException, fail_at: int = 3):
        super().__init__()
        self.inner = TinyConvNet(in_channels=2, seed=3)
        self.calls, self.exc, self.fail_at = 0, exc, fail_at

    def forward(self, x):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise self.exc
        return self.inner(x)


def failing_value_error_segmenter():
    return _FailingNet(ValueError("weights do not fit this input")), {"input_size": S, "box": "channel"}


def interrupted_segmenter():
    return _FailingNet(KeyboardInterrupt()), {"input_size": S, "box": "channel"}


@pytest.mark.parametrize("factory, status, message", [
    ("failing_value_error_segmenter", 2, "error: weights do not fit this input"),
    ("interrupted_segmenter", 130, "error: interrupted after"),
], ids=["value-error", "ctrl-c"])
def test_cli_failing_mid_run_leaves_no_partial_file(tmp_path, capsys, factory, status, message):
    vol = np.random.default_rng(0).random((3, 40, 40)).astype(np.float32)
    src = tmp_path / "ct.nii.gz"
    save_volume(src, vol)
    out = tmp_path / "out"
    spec = f"module:test_reliability_inputs:{factory}"
    code = _cli(src, out, "--model", spec, "--param", "occlusion.window=8", "--no-curves",
                "--method", "occlusion", "rise")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == status
    assert err[-1].startswith(message), err
    assert _tree(out) == []  # the staging folder is gone too


# --------------------------------------------------------------------------- save_volume, read-only folder


def test_save_volume_into_a_read_only_folder_raises_and_leaves_nothing():
    ro = Path(tempfile.mkdtemp(prefix="xaiclip-readonly-"))  # under /tmp: traversable by an unprivileged user
    try:
        existing = ro / "old.nii.gz"
        save_volume(existing, np.ones((2, 3, 4), np.float32))
        before = existing.read_bytes()
        ro.chmod(0o555)
        refused = []
        with unprivileged():
            for name in ("new.nii.gz", "old.nii.gz", "sub/new.nii"):
                try:
                    save_volume(ro / name, np.zeros((2, 3, 4), np.float32))
                except PermissionError:
                    refused.append(name)
        assert refused == ["new.nii.gz", "old.nii.gz", "sub/new.nii"]
        assert sorted(os.listdir(ro)) == ["old.nii.gz"]  # no temporary file, no sub-folder
        assert existing.read_bytes() == before
    finally:
        ro.chmod(0o755)
        shutil.rmtree(ro)


# --------------------------------------------------------------------------- bad files: napari


def _messages(exc: BaseException) -> str:
    """The messages of an exception and of everything it was raised from."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "original_error", None)
    return "\n".join(parts)


@pytest.mark.gui
def test_napari_opens_nan_and_inf_voxels_and_keeps_working(tmp_path, make_napari_viewer):
    viewer = make_napari_viewer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for kind in ("nan-inf", "all-nan"):
            (layer,) = viewer.open(str(_odd_voxels(tmp_path, kind)), plugin="napari-xaiclip")
            assert np.all(np.isfinite(layer.contrast_limits))
            viewer.dims.set_current_step(0, 2)
    viewer.add_image(np.zeros((4, 16, 16)), name="after")
    assert len(viewer.layers) == 3


@pytest.mark.gui
@pytest.mark.parametrize("bad", CORPUS, indirect=True)
def test_napari_open_reports_bad_file_and_keeps_working(bad, make_napari_viewer):
    viewer = make_napari_viewer()
    if bad.refused:  # a folder too: the reader takes folders (DICOM series) and refuses one without DICOM
        with pytest.raises(ValueError) as loaded:
            load_volume(bad.path)
        with pytest.raises(Exception) as info:
            viewer.open(str(bad.path), plugin="napari-xaiclip")
        assert str(loaded.value) in _messages(info.value)
        assert len(viewer.layers) == 0
    else:
        with pytest.warns(UserWarning, match=bad.warning):
            layers = viewer.open(str(bad.path), plugin="napari-xaiclip")
        assert len(layers) == 1 and layers[0].data.ndim == 3
    n = len(viewer.layers)
    viewer.add_image(np.random.default_rng(0).random((4, 16, 16)), name="after")
    assert len(viewer.layers) == n + 1
    viewer.dims.set_current_step(0, 2)
    assert viewer.layers["after"].data.shape == (4, 16, 16)
