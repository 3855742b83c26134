"""Take the user guide's real-scan screenshots: LiteMedSAM on a real CT slice in napari under Xvfb.

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/make_real_screenshots.py

The scan is pydicom's test file ``CT_small.dcm``: one real axial CT slice (128 x 128,
0.66 mm pixels) at the level of a vertebra, opened directly as DICOM like any scan
(``xaiclip gui CT_small.dcm``). Writes docs/images/real-*.png and prints how long each
step took.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"
#: The box prompt around the vertebral body, in slice pixels (x0, y0, x1, y1).
BOX = (36, 2, 86, 46)
#: Occlusion windows at LiteMedSAM's 256 px input: about 60 forward passes in ROI-guided mode.
PATCH, STRIDE = 32, 16


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="xaiclip-real-"))
    os.environ.setdefault("XAICLIP_SESSION_DIR", str(tmp / "sessions"))  # keep autosave out of ~/.local

    import napari
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication, QDockWidget

    from napari_xaiclip import gui
    from napari_xaiclip.widgets._common import ensure_box_layer
    from napari_xaiclip.widgets._guard import keep_triton_out

    keep_triton_out()
    NapariQtNotification.DISMISS_AFTER = 0  # toasts stay until closed: each screenshot shows its own
    OUT.mkdir(parents=True, exist_ok=True)
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    viewer = napari.Viewer(title="napari-xaiclip")
    t0 = time.time()
    image = gui.open_volume(viewer, str(path))
    print(f"  opened {Path(path).name} in {time.time() - t0:.2f} s: {image.metadata.get('xaiclip_window')}")
    w = gui.dock_widgets(viewer)
    window = gui.main_window(w["Metrics"])
    timings = {}

    def pump(cond=lambda: True, timeout=1800):
        t = time.time()
        while time.time() - t < timeout:
            QApplication.processEvents()
            if cond():
                break
            time.sleep(0.02)
        for _ in range(10):
            QApplication.processEvents()

    def shot(name):
        pump()
        viewer.screenshot(str(OUT / f"{name}.png"), canvas_only=False)
        print(f"  wrote {name}.png", flush=True)

    def tab(title):
        for dock in window.findChildren(QDockWidget):
            if getattr(dock, "name", None) == title:
                dock.raise_()

    def wait(seconds):
        pump(lambda: False, timeout=seconds)

    def close_toasts():
        for toast in list(NapariQtNotification._instances):
            toast.close()
        wait(0.3)

    def expand_toasts():
        for toast in list(NapariQtNotification._instances):
            if not toast.property("expanded"):
                toast.toggle_expansion()
        wait(0.6)

    def timed(label, start, widget_run):
        t0 = time.time()
        start()
        pump(lambda: not widget_run.running)
        timings[label] = time.time() - t0
        print(f"  {label}: {timings[label]:.1f} s · {widget_run.status.text()}", flush=True)

    w["Slice picker"].set_index(0)
    pump()
    viewer.reset_view()

    # (a) a box around the vertebral body, segmented by LiteMedSAM (the default on a real scan)
    boxes = ensure_box_layer(viewer, image)
    x0, y0, x1, y1 = BOX
    z = 0
    r0, c0, r1, c1 = y0 - 0.5, x0 - 0.5, y1 - 0.5, x1 - 0.5  # pixel edges, as a drawn rectangle's
    boxes.add_rectangles(np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]]))
    boxes.mode = "pan_zoom"
    viewer.layers.selection.active = image
    tab("3 Segmentation")
    seg = w["3 Segmentation"]
    seg.show_probs.setChecked(False)
    print("segmenter:", seg.model.spec(), "| ROI source:", w["2 ROI"].source, "| ROI segmenter:",
          w["2 ROI"].segmenter.spec(), "| explainer model:", w["4 Explainers"].model.spec(), flush=True)
    timed("LiteMedSAM segmentation of the box (model load + 1 forward)", seg.segment, seg.run)
    print("  ", seg.info.text(), flush=True)
    shot("real-01-segmentation")

    # (b) the ROI from the Box tab: the segmenter's mask of the box, grown by 8 px
    tab("2 ROI")
    roi = w["2 ROI"]
    timed("ROI from the Box tab (LiteMedSAM, 1 forward)", roi.compute, roi.run)
    print("  ", roi.info.text(), flush=True)
    viewer.layers["segmentation"].visible = False
    shot("real-02-roi")

    # (c) ROI-guided occlusion with LiteMedSAM
    tab("4 Explainers")
    ex = w["4 Explainers"]
    ex.method.setCurrentText("occlusion")
    ex.mode.setCurrentText("ROI-guided")
    ex.params.set_value("patch", PATCH)
    ex.params.set_value("stride", STRIDE)
    ex.curves.setChecked(False)
    timed(f"ROI-guided occlusion, patch {PATCH} stride {STRIDE} (LiteMedSAM)", ex.explain, ex.run)
    print("  ", ex.summary.text(), flush=True)
    viewer.layers["ROI"].visible = False
    viewer.layers.selection.active = image
    shot("real-03-occlusion")  # the abdomen window the reader chose: the map stays readable over bone

    # (d) the phantom-trained demo SAM on this scan: a warning notification
    viewer.layers["segmentation"].visible = True
    heat = [ly for ly in viewer.layers if "occlusion" in ly.name]
    for ly in heat:
        ly.visible = False
    tab("3 Segmentation")
    seg.model.choose("phantom")
    close_toasts()
    timed("phantom demo SAM on the real slice", seg.segment, seg.run)
    print("  ", seg.info.text(), flush=True)
    expand_toasts()
    shot("real-04-phantom-warning")
    close_toasts()

    # (e) a text prompt the phantom localizer does not know
    viewer.layers["segmentation"].visible = False
    tab("2 ROI")
    roi.tabs.setCurrentIndex(0)
    roi.prompt.setText("vertebra")
    timed("prompt 'vertebra' (phantom localizer)", roi.compute, roi.run)
    expand_toasts()
    shot("real-05-prompt-error")

    print("| step | seconds |\n|---|---|")
    for k, v in timings.items():
        print(f"| {k} | {v:.1f} |")
    viewer.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
