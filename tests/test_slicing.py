"""Tests of napari_xaiclip.slicing against plain numpy indexing and hand-computed positions."""

from __future__ import annotations

import numpy as np
import pytest

from napari_xaiclip.slicing import (
    AXIS_NAMES,
    check_slice,
    put_slice,
    slice_layer_data,
    slice_position_mm,
    slice_translate,
    take_slice,
)

SHAPE = (4, 5, 6)


@pytest.fixture
def vol():
    return np.arange(np.prod(SHAPE)).reshape(SHAPE)


def _numpy_slice(v, axis, index):
    if axis == 0:
        return v[index, :, :]
    if axis == 1:
        return v[:, index, :]
    return v[:, :, index]


def test_axis_names():
    assert AXIS_NAMES == {0: "axial", 1: "coronal", 2: "sagittal"}


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_take_slice_every_index_matches_numpy(vol, axis):
    for index in range(SHAPE[axis]):
        plane = take_slice(vol, axis, index)
        np.testing.assert_array_equal(plane, _numpy_slice(vol, axis, index))
    expected_shape = tuple(s for a, s in enumerate(SHAPE) if a != axis)
    assert take_slice(vol, axis, 0).shape == expected_shape


def test_take_slice_accepts_numpy_ints_and_lists(vol):
    np.testing.assert_array_equal(take_slice(vol, np.int64(2), np.int32(3)), vol[:, :, 3])
    np.testing.assert_array_equal(take_slice(vol.tolist(), 0, 1), vol[1])


@pytest.mark.parametrize("axis", [
    0,
    1,
    2,
])
def test_take_slice_is_a_view(vol, axis):
    plane = take_slice(vol, axis, 1)
    assert np.shares_memory(plane, vol)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_put_slice_matches_numpy_assignment(vol, axis):
    for index in range(SHAPE[axis]):
        target = vol.copy()
        expected = vol.copy()
        plane_shape = _numpy_slice(vol, axis, 0).shape
        plane = -np.arange(np.prod(plane_shape)).reshape(plane_shape) - 1
        sel = [slice(None)] * 3
        sel[axis] = index
        expected[tuple(sel)] = plane
        returned = put_slice(target, axis, index, plane)
        assert returned is target  # in place
        np.testing.assert_array_equal(target, expected)
        # only that slice changed
        assert np.count_nonzero(target != vol) == plane.size


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_take_put_round_trip(vol, axis):
    out = np.zeros_like(vol)
    for index in range(SHAPE[axis]):
        put_slice(out, axis, index, take_slice(vol, axis, index))
    np.testing.assert_array_equal(out, vol)


@pytest.mark.parametrize("shape, axis, index, fragment", [
    ((4, 5), 0, 0, "3D"),
    ((2, 4, 5, 6), 0, 0, "3D"),
    (SHAPE, 3, 0, "axis"),
    (SHAPE, -1, 0, "axis"),
    (SHAPE, 0, 4, "0..3"),
    (SHAPE, 1, 5, "0..4"),
    (SHAPE, 2, 6, "0..5"),
    (SHAPE, 0, -1, "outside"),
])
def test_bad_slices(shape, axis, index, fragment):
    with pytest.raises(ValueError) as info:
        check_slice(shape, axis, index)
    assert fragment in str(info.value)
    v = np.zeros(shape)
    with pytest.raises(ValueError):
        take_slice(v, axis, index)
    with pytest.raises(ValueError):
        put_slice(v, axis, index, np.zeros((5, 6)))


@pytest.mark.parametrize("axis, plane_shape", [(0, (5, 5)), (0, (6, 5)), (1, (4, 5)), (2, (4, 6)), (2, (5, 4))])
def test_put_slice_bad_plane_shape(vol, axis, plane_shape):
    expected = tuple(s for a, s in enumerate(SHAPE) if a != axis)
    with pytest.raises(ValueError) as info:
        put_slice(vol, axis, 0, np.zeros(plane_shape))
    assert str(plane_shape) in str(info.value) and str(expected) in str(info.value)


@pytest.mark.parametrize("axis, expected", [(0, (1, 4, 5)), (1, (4, 1, 5)), (2, (4, 5, 1))])
def test_slice_layer_data_2d(axis, expected):
    plane = np.arange(20).reshape(4, 5)
    out = slice_layer_data(plane, axis)
    assert out.shape == expected
    np.testing.assert_array_equal(np.squeeze(out, axis), plane)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_layer_data_stack_rebuilds_the_volume(vol, axis):
    stack = np.stack([take_slice(vol, axis, i) for i in range(SHAPE[axis])])
    np.testing.assert_array_equal(slice_layer_data(stack, axis), vol)


@pytest.mark.parametrize("shape", [(5,), (1, 2, 3, 4), ()])
def test_slice_layer_data_bad(shape):
    with pytest.raises(ValueError):
        slice_layer_data(np.zeros(shape))


def test_slice_translate_hand_worked():
    assert slice_translate((0.0, 0.0, 0.0), (5.0, 2.0, 2.0), axis=0, index=3) == (15.0, 0.0, 0.0)
    assert slice_translate((1.0, 2.0, 3.0), (2.0, 0.5, 0.25), axis=1, index=4) == (1.0, 4.0, 3.0)
    assert slice_translate((1.0, 2.0, 3.0), (2.0, 0.5, 0.25), axis=2, index=8) == (1.0, 2.0, 5.0)
    # layers with a leading extra dimension: the last three count
    assert slice_translate((9.0, 1.0, 2.0, 3.0), (7.0, 2.0, 0.5, 0.25), axis=0, index=2) == (5.0, 2.0, 3.0)


def test_slice_translate_puts_slice_on_the_volume_voxel():
    translate, scale = (-30.0, -50.0, -100.0), (2.5, 0.9, 0.8)
    for axis in range(3):
        for index in (0, 3, 7):
            t = slice_translate(translate, scale, axis, index)
            # world position of voxel 0 of the one-slice layer == world of voxel `index` of the volume
            assert t[axis] == pytest.approx(translate[axis] + index * scale[axis])
            for other in range(3):
                if other != axis:
                    assert t[other] == translate[other]


def test_slice_position_mm_hand_worked():
    affine = np.array([[0.0, 0.0, -0.8, 12.0],
                       [0.0, -0.9, 0.0, 34.0],
                       [2.5, 0.0, 0.0, -56.0],
                       [0.0, 0.0, 0.0, 1.0]])
    shape = (10, 20, 30)
    # axis 0, slice 3: centre voxel (3, 9.5, 14.5)
    #   R = -0.8 * 14.5 + 12 = 0.4 ; A = -0.9 * 9.5 + 34 = 25.45 ; S = 2.5 * 3 - 56 = -48.5
    np.testing.assert_allclose(slice_position_mm(affine, shape, 0, 3), [0.4, 25.45, -48.5])
    # axis 2, slice 7: centre voxel (4.5, 9.5, 7) -> R = 6.4, A = 25.45, S = -44.75
    np.testing.assert_allclose(slice_position_mm(affine, shape, 2, 7), [6.4, 25.45, -44.75])
    # axis 1, slice 0: centre voxel (4.5, 0, 14.5) -> R = 0.4, A = 34, S = -44.75
    np.testing.assert_allclose(slice_position_mm(affine, shape, 1, 0), [0.4, 34.0, -44.75])


def test_slice_position_mm_oblique_matches_affine():
    rng = np.random.default_rng(0)
    affine = np.eye(4)
    affine[:3, :] = rng.normal(size=(3, 4))
    shape = (7, 8, 9)
    for axis in range(3):
        idx = [(s - 1) / 2 for s in shape]
        idx[axis] = 5
        expected = affine[:3, :3] @ np.array(idx) + affine[:3, 3]
        np.testing.assert_allclose(slice_position_mm(affine, shape, axis, 5), expected)
