"""Tests of napari_xaiclip.phantom: determinism, FLARE22 labels, tissue values, anatomy, geometry.

Small shapes keep these fast. The phantom blurs the drawn tissues (partial volume,
sigma 0.8 px in-plane) while the labels are the sharp organ masks, so at 96-128 px a
small organ's edge voxels mix with surrounding fat; tissue values are therefore
measured in the label eroded by one pixel in-plane.
"""

from __future__ import annotations

import numpy as np
import pytest
from nibabel.orientations import aff2axcodes
from scipy import ndimage

from napari_xaiclip.phantom import make_phantom

SMALL = (16, 96, 96)
MEDIUM = (12, 128, 128)  # for organ means: the aorta is ~2 px across at 96 px
FLARE22 = {1: "liver", 2: "right kidney", 3: "spleen", 4: "pancreas", 5: "aorta",
           11: "stomach", 13: "left kidney"}
IN_PLANE = np.ones((1, 3, 3), bool)


@pytest.fixture(scope="module")
def ct():
    return make_phantom(SMALL, modality="ct", seed=0)


@pytest.fixture(scope="module")
def ct_medium():
    return {seed: make_phantom(MEDIUM, modality="ct", seed=seed) for seed in (0, 1)}


def _interior(mask, size=3):
    return ndimage.binary_erosion(mask, structure=np.ones((1, size, size), bool))


def test_same_seed_same_volume(ct):
    vol, labels, names = ct
    vol2, labels2, names2 = make_phantom(SMALL, modality="ct", seed=0)
    np.testing.assert_array_equal(vol.data, vol2.data)
    np.testing.assert_array_equal(labels, labels2)
    np.testing.assert_array_equal(vol.affine, vol2.affine)
    assert names == names2


def test_different_seeds_differ(ct):
    vol, labels, _ = ct
    vol1, labels1, _ = make_phantom(SMALL, modality="ct", seed=1)
    assert not np.array_equal(labels, labels1)
    assert np.mean(labels != labels1) > 0.005  # anatomy changed, not a pixel
    assert np.abs(vol.data - vol1.data).mean() > 10.0


def test_outputs_shapes_and_types(ct):
    vol, labels, names = ct
    assert vol.data.shape == SMALL and labels.shape == SMALL
    assert vol.data.dtype == np.float32
    assert np.issubdtype(labels.dtype, np.integer)
    assert np.all(np.isfinite(vol.data))


def test_labels_are_flare22_and_names_match(ct):
    _, labels, names = ct
    present = set(np.unique(labels).tolist())
    assert present <= {0} | set(FLARE22)
    assert present == {0} | set(FLARE22)  # at this size every organ appears somewhere
    for lab in present - {0}:
        assert names[lab] == FLARE22[lab]
    assert set(names) <= set(FLARE22)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("label, lo, hi", [
    (1, 40.0, 80.0),   # liver 60 +- 20
    (3, 25.0, 65.0),   # spleen 45 +- 20
    (2, 15.0, 35.0),   # right kidney: cortex 30, darker medulla 20
    (13, 15.0, 35.0),  # left kidney
    (5, 20.0, 60.0),   # aorta 40 +- 20
])
def test_ct_organ_values(ct_medium, seed, label, lo, hi):
    vol, labels, _ = ct_medium[seed]
    inside = _interior(labels == label)
    assert inside.sum() >= 30
    assert lo <= float(vol.data[inside].mean()) <= hi


def test_ct_organs_ranked_like_tissue(ct_medium):
    vol, labels, _ = ct_medium[0]
    mean = {lab: float(vol.data[_interior(labels == lab)].mean()) for lab in (1, 2, 3)}
    assert mean[1] > mean[3] > mean[2]  # liver 60 > spleen 45 > kidney 20..30


def test_air_at_the_corners(ct):
    vol, _, _ = ct
    d = vol.data
    for corner in (d[:, :4, :4], d[:, :4, -4:], d[:, -4:, :4], d[:, -4:, -4:]):
        assert abs(float(corner.mean()) + 1000.0) < 10.0
        assert float(corner.std()) == pytest.approx(15.0, abs=3.0)


def test_noise_std_in_flat_liver_interior(ct):
    vol, labels, _ = ct
    flat = _interior(labels == 1, size=7)
    assert flat.sum() > 1000
    assert float(vol.data[flat].std()) == pytest.approx(15.0, abs=2.5)


@pytest.mark.parametrize("noise", [None, 0.0, 30.0])
def test_noise_parameter_is_the_added_noise(ct, noise):
    clean, _, _ = make_phantom(SMALL, modality="ct", seed=0, noise=0.0)
    if noise is None:
        noisy = ct[0]
        expected = 15.0
    else:
        noisy, _, _ = make_phantom(SMALL, modality="ct", seed=0, noise=noise)
        expected = noise
    residual = noisy.data.astype(np.float64) - clean.data
    assert residual.std() == pytest.approx(expected, abs=0.02 * expected + 1e-6)
    assert abs(residual.mean()) < 0.2


def test_organ_sides_and_posterior_spine(ct):
    vol, labels, _ = ct
    _, h, w = SMALL

    def centroid(mask):
        return np.argwhere(mask).mean(axis=0)  # (z, row, column)

    # image left = patient right (radiological convention)
    assert centroid(labels == 1)[2] < w / 2  # liver: patient right
    assert centroid(labels == 2)[2] < w / 2  # right kidney
    assert centroid(labels == 3)[2] > w / 2  # spleen: patient left
    assert centroid(labels == 13)[2] > w / 2  # left kidney
    bone = vol.data > 250.0
    assert bone.sum() > 50
    assert centroid(bone)[1] > h / 2  # vertebra posterior (rows run anterior to posterior)
    assert centroid(labels == 2)[1] > centroid(labels == 1)[1]  # kidneys posterior to the liver


def test_organs_change_along_z(ct):
    _, labels, _ = ct
    liver_area = (labels == 1).sum(axis=(1, 2))
    assert len(np.unique(liver_area)) >= 5
    assert liver_area.min() == 0 < liver_area.max()  # the liver starts somewhere in the volume
    z = np.arange(SMALL[0])[:, None, None]
    # axis 0 runs superior to inferior: the kidneys lie below the liver (higher indices)
    kidneys = np.isin(labels, (2, 13))
    assert (z * kidneys).sum() / kidneys.sum() > (z * (labels == 1)).sum() / (labels == 1).sum()


def test_geometry_is_display_oriented_and_covers_the_documented_field(ct):
    vol, _, _ = ct
    assert aff2axcodes(vol.affine) == ("I", "P", "L")
    nz, ny, nx = SMALL
    assert vol.spacing == pytest.approx((240.0 / nz, 360.0 / ny, 360.0 / nx))
    centre = vol.affine @ np.append((np.array(SMALL) - 1) / 2, 1.0)
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)


def test_mr_modality(ct):
    ct_vol, ct_labels, _ = ct
    mr_vol, mr_labels, names = make_phantom(SMALL, modality="mr", seed=0)
    np.testing.assert_array_equal(mr_labels, ct_labels)  # same anatomy for the same seed
    assert names == ct[2]
    d = mr_vol.data
    assert d.dtype == np.float32 and np.all(np.isfinite(d))
    assert d.min() >= 0.0
    # fat, found through the CT numbers of the same anatomy (-100/-90 HU), eroded away from edges
    fat = _interior((ct_vol.data > -150) & (ct_vol.data < -60))
    liver = _interior(ct_labels == 1)
    assert fat.sum() > 200 and liver.sum() > 200
    assert d[fat].mean() > d[liver].mean() + 200.0  # T1: fat bright, liver intermediate
    assert d[liver].mean() > 300.0  # not CT numbers


@pytest.mark.parametrize("shape", [(16, 96), (0, 8, 8), (8, -1, 8), (1, 2, 3, 4), ()])
def test_bad_shape(shape):
    with pytest.raises(ValueError, match="shape"):
        make_phantom(shape)


@pytest.mark.parametrize("modality", ["pet", "CT", "", None])
def test_bad_modality(modality):
    with pytest.raises(ValueError, match="modality"):
        make_phantom((2, 16, 16), modality=modality)


def test_single_slice_phantom():
    vol, labels, _ = make_phantom((1, 48, 48), seed=2)
    assert vol.data.shape == labels.shape == (1, 48, 48)
    assert labels.any()
