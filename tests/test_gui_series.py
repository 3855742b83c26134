"""A DICOM folder holding several series: napari asks which one to open."""

from __future__ import annotations

import pytest
from test_io_formats import write_series

pytestmark = pytest.mark.gui


@pytest.fixture
def two_series(tmp_path):
    folder = tmp_path / "two"
    write_series(folder, "axial", description="arterial", prefix="a")
    _, _, _, venous = write_series(folder, "axial", shape=(6, 3, 5), description="venous", seed=1, prefix="b")
    return folder, venous


def test_the_dialog_lists_each_series_and_opens_the_chosen_one(qtbot, monkeypatch, two_series):
    from napari_xaiclip._reader import read_volume
    from napari_xaiclip.widgets.series_dialog import SeriesDialog

    folder, venous = two_series
    shown = []

    def choose(dialog):
        shown.append([dialog.list.item(i).text() for i in range(dialog.list.count())])
        return 1  # Accepted, as exec() returns it; the default row: the series with the most slices

    monkeypatch.setattr(SeriesDialog, "exec", choose)
    data, kwargs, kind = read_volume(str(folder))[0]
    assert kind == "image" and data.shape[0] == 6
    assert kwargs["metadata"]["xaiclip_geometry"]["description"] == "DICOM CT venous"
    (items,) = shown
    assert len(items) == 2 and any("arterial" in t and "4 slices" in t for t in items)
    assert any("venous" in t and "6 slices" in t and venous in t for t in items)


def test_cancelling_the_dialog_is_the_listing_error(qtbot, monkeypatch, two_series):
    from napari_xaiclip._reader import read_volume
    from napari_xaiclip.io_itk import SeveralSeries
    from napari_xaiclip.widgets.series_dialog import SeriesDialog

    monkeypatch.setattr(SeriesDialog, "exec", lambda self: 0)  # Rejected
    with pytest.raises(SeveralSeries, match="2 DICOM series"):
        read_volume(str(two_series[0]))
