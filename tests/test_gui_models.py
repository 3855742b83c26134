"""Models in the GUI: LiteMedSAM by default, the phantom models on the phantom (and said so),
warnings when a phantom-trained model meets another scan, honest prompt resolution, and
the ROI from the segmenter's box mask by default on real scans.

Every run here names the phantom model: fast, and a model that must warn on a real scan.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_xaiclip.io import layer_geometry
from napari_xaiclip.phantom import make_phantom

pytestmark = pytest.mark.gui

PHANTOM_WARNING = "trained on a synthetic abdominal phantom only"


def _phantom(shape=(4, 128, 128), seed=3):
    vol, labels, _ = make_phantom(shape=shape, seed=seed)
    index = int(np.argmax((labels == 1).sum((1, 2))))
    return vol, labels, index


@pytest.fixture
def real_scan(make_napari_viewer):
    """The phantom's voxels as a plain image layer: a volume that does not say it is the phantom."""
    viewer = make_napari_viewer()
    vol, labels, index = _phantom()
    image = viewer.add_image(vol.data, name="scan", scale=vol.spacing)
    return viewer, image, labels, index


@pytest.fixture
def phantom_scan(make_napari_viewer):
    viewer = make_napari_viewer()
    vol, labels, index = _phantom()
    image = viewer.add_image(vol.data, name="CT", **layer_geometry(vol))
    return viewer, image, labels, index


def _at(viewer, image, index):
    from napari_xaiclip.widgets import SlicePickerWidget

    SlicePickerWidget(viewer).set_index(index)


def _draw_box(viewer, image, index, labels, value=1, margin=4):
    from napari_xaiclip.pipeline import box_from_mask

    x0, y0, x1, y1 = box_from_mask(labels[index] == value, margin)
    geometry = {"scale": image.scale, "translate": image.translate}
    viewer.add_shapes([[[index, y0, x0], [index, y0, x1], [index, y1, x1], [index, y1, x0]]],
                      shape_type="rectangle", name="box prompt", **geometry)


def _wait(qtbot, panel, timeout=180):
    qtbot.waitUntil(lambda: not panel.running, timeout=timeout * 1000)


def _set_roi(viewer, image, mask, index):
    from napari_xaiclip.widgets.layers import roi_layer

    roi = roi_layer(viewer, image)
    roi.data[index] = mask.astype(np.uint8)
    roi.refresh()


# --- choosers ----------------------------------------------------------------
def test_model_tooltips_are_the_model_cards(qtbot):
    from qtpy.QtCore import Qt

    from napari_xaiclip.widgets.model_choice import LocalizerChoice, SegmenterChoice

    seg, loc = SegmenterChoice(), LocalizerChoice()
    qtbot.addWidget(seg)
    qtbot.addWidget(loc)
    assert seg.key == "default" and seg.spec() == "default"  # LiteMedSAM unless told otherwise
    assert seg.kind.currentText().startswith("Default: LiteMedSAM")

    def tip(choice, key):
        return choice.kind.itemData(choice.kind.findData(key), Qt.ItemDataRole.ToolTipRole)

    assert "MedSAM's training set" in tip(seg, "default") and "research use only" in tip(seg, "default")
    assert "Input: 256 px" in tip(seg, "default")
    assert "synthetic abdominal phantom" in tip(seg, "phantom") and "BSD-3-Clause" in tip(seg, "phantom")
    assert "SA-1B" in tip(seg, "sam")
    assert seg.kind.toolTip() == tip(seg, "default")  # the box shows the chosen model's card
    seg.choose("phantom")
    assert seg.kind.toolTip() == tip(seg, "phantom") and seg.spec() == "phantom"
    assert loc.kind.currentText() == "Default (trained on the synthetic phantom only)"
    assert "synthetic abdominal phantom" in loc.kind.toolTip()
    assert "Classes: liver, right kidney, spleen" in loc.kind.toolTip()
    assert "background" not in loc.kind.toolTip()


def test_litemedsam_checkpoint_kind_needs_a_file(qtbot, tmp_path):
    from napari_xaiclip.widgets.model_choice import SegmenterChoice

    seg = SegmenterChoice()
    qtbot.addWidget(seg)
    seg.choose("litemedsam")
    with pytest.raises(ValueError, match="choose a weights file"):
        seg.spec()
    ckpt = tmp_path / "finetuned.pth"
    ckpt.write_bytes(b"x")
    seg.path.edit.setText(str(ckpt))
    assert seg.spec() == f"litemedsam:{ckpt}"


def test_choosers_follow_the_image_until_the_user_picks(make_napari_viewer):
    from napari_xaiclip.widgets import ExplainerWidget, SegmentationWidget

    viewer = make_napari_viewer()
    vol, _, _ = _phantom((2, 32, 32))
    viewer.add_image(vol.data, name="CT phantom", **layer_geometry(vol))
    seg_w, ex_w = SegmentationWidget(viewer), ExplainerWidget(viewer)
    assert seg_w.model.key == ex_w.model.key == "phantom"  # fast demo model on the phantom...
    assert seg_w.model.note.isVisibleTo(seg_w) and "LiteMedSAM" in seg_w.model.note.text()  # ...and said so
    viewer.add_image(vol.data, name="scan")  # no phantom description: a real volume
    seg_w.image.set_layer("scan")
    assert seg_w.model.key == "default" and not seg_w.model.note.isVisibleTo(seg_w)
    ex_w.model.choose("phantom")  # the user's pick stays whatever the image
    ex_w.image.set_layer("scan")
    assert ex_w.model.key == "phantom" and not ex_w.model.note.isVisibleTo(ex_w)


def test_gui_and_sample_data_use_the_phantom_models_and_say_so(make_napari_viewer, notifications):
    from napari_xaiclip import gui
    from napari_xaiclip.widgets.notify import layer_is_phantom

    viewer = make_napari_viewer()
    image, _ = viewer.open_sample("napari-xaiclip", "ct_phantom")
    assert layer_is_phantom(image)  # the sample's metadata carries the phantom description
    viewer2 = gui.launch(block=False, viewer=make_napari_viewer())  # `xaiclip gui` without a volume
    docks = {name: getattr(w, "widget", lambda w=w: w)() for name, w in viewer2.window.dock_widgets.items()}
    assert docks["3 Segmentation"].model.key == "phantom" and docks["4 Explainers"].model.key == "phantom"
    assert docks["2 ROI"].source == "prompt"
    assert any("phantom sample: using the phantom-trained demo models" in m for m in notifications)


# --- phantom-model warnings ----------------------------------------------------
def test_phantom_model_on_a_real_scan_warns_and_records_it(real_scan, qtbot, notifications):
    from napari_xaiclip.widgets import SegmentationWidget

    viewer, image, labels, index = real_scan
    _at(viewer, image, index)
    _draw_box(viewer, image, index, labels)
    seg_w = SegmentationWidget(viewer)
    assert seg_w.model.key == "default"  # LiteMedSAM for a real scan
    seg_w.model.choose("phantom")
    seg_w.segment()
    _wait(qtbot, seg_w.run)
    assert seg_w.run.last_error is None, seg_w.run.last_error
    assert any(PHANTOM_WARNING in m for m in notifications), notifications
    warnings = viewer.layers["segmentation"].metadata["xaiclip_warnings"][f"0:{index}"]
    assert len(warnings) == 1 and PHANTOM_WARNING in warnings[0]
    assert "⚠" in seg_w.info.text() and "warning" in seg_w.run.status.text()


def test_phantom_model_on_the_phantom_does_not_warn(phantom_scan, qtbot, notifications):
    from napari_xaiclip.widgets import SegmentationWidget

    viewer, image, labels, index = phantom_scan
    _at(viewer, image, index)
    _draw_box(viewer, image, index, labels)
    seg_w = SegmentationWidget(viewer)
    seg_w.model.choose("phantom")
    seg_w.segment()
    _wait(qtbot, seg_w.run)
    assert seg_w.run.last_error is None, seg_w.run.last_error
    assert not any(PHANTOM_WARNING in m for m in notifications), notifications
    assert viewer.layers["segmentation"].metadata["xaiclip_warnings"][f"0:{index}"] == []
    assert seg_w.run.warnings == []


def test_explainer_warnings_reach_the_gui_before_the_results(real_scan, qtbot, notifications):
    from napari_xaiclip.widgets import ExplainerWidget, MetricsWidget

    viewer, image, labels, index = real_scan
    _at(viewer, image, index)
    _draw_box(viewer, image, index, labels, value=1)  # the box on the liver...
    away = np.zeros_like(labels[index], bool)
    away[2:12, 2:12] = True
    _set_roi(viewer, image, away, index)  # ...the ROI in a corner, away from it
    ex_w, metrics = ExplainerWidget(viewer), MetricsWidget(viewer)
    ex_w.model.choose("phantom")
    ex_w.method.setCurrentText("occlusion")
    ex_w.mode.setCurrentText("ROI-guided")
    ex_w.params.set_value("window", 32)
    ex_w.curves.setChecked(False)
    seen_at_finish = []
    original = ex_w._finish
    ex_w._finish = lambda *a: (seen_at_finish.extend(notifications), original(*a))
    ex_w.explain()
    _wait(qtbot, ex_w.run)
    assert ex_w.run.last_error is None, ex_w.run.last_error
    assert any(PHANTOM_WARNING in m for m in seen_at_finish), seen_at_finish
    assert any("does not overlap the box prompt" in m and f"slice {index}" in m for m in seen_at_finish)
    record = viewer.layers["scan · occlusion (roi)"].metadata["xaiclip_records"][0]
    assert len(record["warnings"]) == 2 and PHANTOM_WARNING in record["warnings"][0]
    assert record["segmenter"] == "phantom" and "phantom" in record["segmenter_trained_on"]
    assert viewer.layers["scan · occlusion (roi)"].metadata["xaiclip_warnings"] == record["warnings"]
    headers = [metrics.table.horizontalHeaderItem(c).text() for c in range(metrics.table.columnCount())]
    cell = metrics.table.item(0, headers.index("warnings"))
    assert headers.index("warnings") == headers.index("mode") + 1  # in view, next to the method and mode
    assert cell.text() == "⚠ 2" and PHANTOM_WARNING in cell.toolTip()
    assert "⚠" in ex_w.summary.text()


# --- ROI widget ----------------------------------------------------------------
def test_roi_prompt_lists_the_classes_and_rejects_unknown_prompts(phantom_scan, qtbot, notifications):
    from napari_xaiclip.widgets import RoiWidget

    viewer, image, _, index = phantom_scan
    _at(viewer, image, index)
    roi_w = RoiWidget(viewer)
    assert roi_w.source == "prompt"  # the phantom: the localizer knows it
    assert roi_w.class_hint.text().startswith("classes: liver, right kidney, spleen")
    assert "liver" in roi_w.prompt.toolTip() and roi_w.classes.itemText(0) == "liver"
    assert not roi_w.allow_similar.isChecked()
    roi_w.prompt.setText("tumour")
    roi_w.compute()
    _wait(qtbot, roi_w.run)
    message = next(m for m in notifications if "tumour" in m)
    assert "knows no class 'tumour'" in message and "liver, right kidney, spleen" in message
    assert "match other prompts by text similarity" in message
    assert "ROI" not in viewer.layers


def test_roi_prompt_mapped_to_a_class_says_which(phantom_scan, qtbot, notifications):
    from napari_xaiclip.widgets import RoiWidget

    viewer, image, _, index = phantom_scan
    _at(viewer, image, index)
    roi_w = RoiWidget(viewer)
    roi_w.prompt.setText("hepatic")
    roi_w.compute()
    _wait(qtbot, roi_w.run)
    assert roi_w.run.last_error is None, roi_w.run.last_error
    assert "class 'liver' (synonym)" in roi_w.prompt_status.text()
    assert "class 'liver' (synonym)" in roi_w.run.status.text()
    meta = viewer.layers["ROI"].metadata["xaiclip_roi_source"]
    assert (meta["prompt"], meta["prompt_class"], meta["prompt_match"]) == ("hepatic", "liver", "synonym")
    assert meta["warnings"] == []  # the phantom localizer on the phantom
    assert np.asarray(viewer.layers["ROI"].data[index]).any()

    roi_w.allow_similar.setChecked(True)
    roi_w.prompt.setText("kidney")
    roi_w.compute()
    _wait(qtbot, roi_w.run)
    meta = viewer.layers["ROI"].metadata["xaiclip_roi_source"]
    assert meta["prompt_match"] == "similarity" and meta["prompt_class"] in ("right kidney", "left kidney")
    assert f"class {meta['prompt_class']!r} (text similarity {meta['prompt_similarity']:.2f})" \
        in roi_w.prompt_status.text()
    assert any("text similarity only" in m for m in notifications)


def test_roi_defaults_to_the_segmenter_box_on_a_real_scan(real_scan, qtbot, notifications):
    from napari_xaiclip.jobs import SEGMENTER_ROI_MARGIN
    from napari_xaiclip.widgets import RoiWidget

    viewer, image, labels, index = real_scan
    _at(viewer, image, index)
    _draw_box(viewer, image, index, labels)
    roi_w = RoiWidget(viewer)
    assert roi_w.source == "segmenter" and roi_w.margin.value() == SEGMENTER_ROI_MARGIN
    assert roi_w.segmenter.key == "default"  # LiteMedSAM on a real scan
    assert roi_w.tabs.isTabEnabled(0)  # the text prompt stays available
    roi_w.segmenter.choose("phantom")
    roi_w.compute()
    _wait(qtbot, roi_w.run)
    assert roi_w.run.last_error is None, roi_w.run.last_error
    meta = viewer.layers["ROI"].metadata["xaiclip_roi_source"]
    assert meta["source"] == "segmenter" and meta["margin"] == SEGMENTER_ROI_MARGIN
    assert PHANTOM_WARNING in meta["warnings"][0]
    assert any(PHANTOM_WARNING in m for m in notifications)
    roi = np.asarray(viewer.layers["ROI"].data[index]) > 0
    assert roi.sum() > (labels[index] == 1).sum()  # the mask grown by the margin
    roi_w.tabs.tabBarClicked.emit(0)  # the user picks the prompt: the image no longer decides
    roi_w.tabs.setCurrentIndex(0)
    assert roi_w.margin.value() == 0
    roi_w.follow_image()
    assert roi_w.source == "prompt"
