"""Radiological display in all three views, in napari (screenshots) and in the PNG figures.

A volume with three anatomical markers, written in LPS and in RAS file orders:
a bright one at the superior end, a mid-grey one anterior, a dark-grey one on
the patient's right. Axial: anterior at the top, patient right on the screen's
left. Coronal: superior at the top, right on the left. Sagittal: superior at the
top, anterior on the left.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

N = 41
LEVELS = {"superior": 1000.0, "anterior": 600.0, "right": 300.0}


def _marker_file(tmp_path, order: str):
    """A RAS-indexed array with the markers, saved in ``order`` ('RAS' or 'LPS') file axes."""
    ras = np.zeros((N, N, N), np.float32)  # index (i: to R, j: to A, k: to S)
    c, e = N // 2, slice(N - 9, N - 3)
    mid = slice(c - 3, c + 4)
    ras[mid, mid, e] = LEVELS["superior"]
    ras[mid, e, mid] = LEVELS["anterior"]
    ras[e, mid, mid] = LEVELS["right"]
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    data = ras
    if order == "LPS":
        data = ras[::-1, ::-1, :]
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])
        affine[:3, 3] = [N - 1, N - 1, 0]
    path = tmp_path / f"markers_{order}.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), path)
    return path


def _where(image: np.ndarray, level: float) -> tuple[float, float]:
    """(row, column) centre of the pixels showing ``level`` (0..1000 shown as 0..255 grey), as fractions."""
    grey = image[..., :3].astype(float).mean(axis=-1)
    target = level / 1000.0 * 255.0
    rows, cols = np.nonzero(np.abs(grey - target) < 12)
    assert rows.size > 20, f"marker {level} not visible"
    return rows.mean() / grey.shape[0], cols.mean() / grey.shape[1]


# which markers each view shows, and where each must be: (row test, column test) on the screen
EXPECTED = {
    0: {"anterior": ("top", None), "right": (None, "left")},          # axial
    1: {"superior": ("top", None), "right": (None, "left")},          # coronal
    2: {"superior": ("top", None), "anterior": (None, "left")},       # sagittal
}


def _check(view: dict, found: dict) -> None:
    for marker, (row, col) in view.items():
        r, c = found[marker]
        if row == "top":
            assert r < 0.4, (marker, r)
        if col == "left":
            assert c < 0.4, (marker, c)


@pytest.mark.gui
@pytest.mark.parametrize("order", ["RAS", "LPS"])
def test_napari_shows_every_view_radiologically(make_napari_viewer, tmp_path, order):
    from napari_xaiclip._reader import read_volume
    from napari_xaiclip.widgets import SlicePickerWidget

    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer(show=True)  # a hidden canvas is not redrawn before the screenshot
    data, kwargs, _ = read_volume(str(_marker_file(tmp_path, order)))[0]
    layer = viewer.add_image(data, **{**kwargs, "contrast_limits": (0.0, 1000.0)})
    picker = SlicePickerWidget(viewer)
    for axis, view in EXPECTED.items():
        picker.set_axis(axis)
        picker.set_index(N // 2)
        viewer.reset_view()
        QApplication.processEvents()
        shot = viewer.screenshot(canvas_only=True, flash=False)
        found = {m: _where(shot, LEVELS[m]) for m in view}
        _check(view, found)
    assert layer.data.shape == (N, N, N)


@pytest.mark.parametrize("order", ["RAS", "LPS"])
def test_png_figures_and_box_frame_show_every_view_radiologically(tmp_path, order):
    import matplotlib.image as mpimg

    from napari_xaiclip.io import load_volume
    from napari_xaiclip.reports import save_figure
    from napari_xaiclip.slicing import take_slice

    vol = load_volume(_marker_file(tmp_path, order))
    for axis, view in EXPECTED.items():
        plane = np.asarray(take_slice(vol.data, axis, N // 2))
        # the --box frame: x = column, y = row of this plane
        _check(view, {m: tuple(np.argwhere(plane == LEVELS[m]).mean(axis=0) / N) for m in view})
        found = {}
        for marker in view:  # one marker per figure: the grey scale then cannot merge them
            path = tmp_path / f"view{axis}-{marker}.png"
            only = np.where(plane == LEVELS[marker], 1000.0, 0.0).astype(np.float32)
            save_figure(path, only, [{"title": marker, "heatmap": None}], spacing=(1.0, 1.0))
            found[marker] = _bright_in_image(mpimg.imread(path))
        _check(view, found)


def _bright_in_image(png: np.ndarray) -> tuple[float, float]:
    """(row, column) of the bright marker as fractions of the slice image inside a figure.

    The slice is mostly black; its extent is the block of rows and columns that are mostly black.
    """
    grey = png[..., :3].mean(axis=-1)
    black = grey < 0.1
    rows = np.nonzero(black.sum(axis=1) > 0.5 * black.sum(axis=1).max())[0]
    cols = np.nonzero(black.sum(axis=0) > 0.5 * black.sum(axis=0).max())[0]
    box = grey[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    r, c = np.nonzero(box > 0.8)
    assert r.size > 5, "marker not visible in the figure"
    return r.mean() / box.shape[0], c.mean() / box.shape[1]
