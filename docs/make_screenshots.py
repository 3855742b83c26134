"""Take the user guide's screenshots: every step of the workflow in napari under Xvfb.

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python docs/make_screenshots.py

Writes docs/images/*.png and prints how long each step took with the defaults.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"


def main() -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_xaiclip import gui
    from napari_xaiclip.widgets._guard import keep_triton_out

    keep_triton_out()
    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-xaiclip")
    gui.open_volume(viewer)
    w = gui.dock_widgets(viewer)  # sized to the screen
    window = gui.main_window(w["Metrics"])
    viewer.reset_view()
    timings = {}

    def pump(cond=lambda: True, timeout=900):
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
        from qtpy.QtWidgets import QDockWidget

        for dock in window.findChildren(QDockWidget):
            if getattr(dock, "name", None) == title:
                dock.raise_()

    labels = viewer.layers["CT phantom labels"].data
    index = int(np.argmax((labels == 1).sum((1, 2))))
    w["Slice picker"].set_index(index)
    shot("01-open")

    tab("1 Preprocessing")
    pre = w["1 Preprocessing"]
    pre.preview.setChecked(True)
    shot("02-preprocessing")
    pre.preview.setChecked(False)

    tab("2 ROI")
    roi = w["2 ROI"]
    roi.prompt.setText("liver")
    roi._list_classes()
    t0 = time.time()
    roi.compute()
    pump(lambda: not roi.run.running)
    timings["ROI from the prompt 'liver'"] = time.time() - t0
    viewer.layers["localizer map"].visible = True
    shot("03-roi-prompt")
    viewer.layers["localizer map"].visible = False

    tab("3 Segmentation")
    seg = w["3 Segmentation"]
    seg.show_probs.setChecked(False)
    t0 = time.time()
    seg.segment()
    pump(lambda: not seg.run.running)
    timings["segmentation of the slice"] = time.time() - t0
    shot("04-segmentation")

    tab("4 Explainers")
    ex = w["4 Explainers"]
    ex.method.setCurrentText("occlusion")
    ex.mode.setCurrentText("ROI-guided and traditional")
    t0 = time.time()
    ex.explain()
    pump(lambda: ex.run.progress.value() > 300)
    shot("05-explaining-live")
    pump(lambda: not ex.run.running)
    timings["occlusion, traditional and ROI-guided (with deletion/insertion AUC)"] = time.time() - t0
    for name in ("CT phantom · occlusion (traditional)",):
        viewer.layers[name].visible = False
    viewer.layers["CT phantom labels"].visible = False
    shot("06-roi-guided-heatmap")
    viewer.layers["CT phantom · occlusion (traditional)"].visible = True
    viewer.layers["CT phantom · occlusion (roi)"].visible = False
    shot("07-traditional-heatmap")
    viewer.layers["CT phantom · occlusion (roi)"].visible = True

    for method in ("rise", "lime"):
        ex.method.setCurrentText(method)
        t0 = time.time()
        ex.explain()
        pump(lambda: not ex.run.running)
        timings[f"{method}, traditional and ROI-guided"] = time.time() - t0
    for ly in viewer.layers:
        if "·" in ly.name and ly.name != "CT phantom · rise (roi)":
            ly.visible = False
    viewer.layers["CT phantom · rise (roi)"].visible = True
    shot("08-metrics")
    for ly in viewer.layers:
        ly.visible = ly.name in ("CT phantom", "CT phantom · occlusion (roi)", "ROI", "segmentation")
    shot("gui-workflow")

    tab("5 Masks & components")
    comp = w["5 Masks & components"]
    comp.heatmap.setCurrentText("CT phantom · occlusion (traditional)")
    t0 = time.time()
    comp.make_mask()
    pump(lambda: not comp.mask_run.running)
    timings["ExplainSeg mask"] = time.time() - t0
    t0 = time.time()
    comp.run_components()
    pump(lambda: not comp.comp_run.running)
    timings["component analysis"] = time.time() - t0
    shot("09-masks-components")

    out = Path("/tmp/xaiclip-guide-save")
    t0 = time.time()
    written = w["Metrics"].save_everything(str(out))
    timings["saving everything"] = time.time() - t0
    figures = [p for p in written if p.endswith(".png")]
    if figures:
        import shutil

        shutil.copy(figures[0], OUT / "10-saved-figure.png")
    print("| step | seconds |\n|---|---|")
    for k, v in timings.items():
        print(f"| {k} | {v:.1f} |")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
