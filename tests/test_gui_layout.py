"""The window `xaiclip gui` opens, under Xvfb: it fits the screen with the canvas taking most
of it, the step tabs read in full, the metrics table scrolls and chooses its columns, and
the widgets docked one by one from the Plugins menu keep the window on the screen."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.gui

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_xaiclip"


def _free_screen():
    from qtpy.QtGui import QGuiApplication

    return QGuiApplication.primaryScreen().availableGeometry()


def _settle(qtbot):
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
        qtbot.wait(20)


def _launch(make_napari_viewer, qtbot):
    """`xaiclip gui` on the phantom: the viewer and its main window (reached through a docked widget).

    A plain function, not a fixture: a fixture's value outlives the test, and a main window
    still referenced then counts as a leaked viewer."""
    from napari_xaiclip import gui

    viewer = gui.launch(block=False, viewer=make_napari_viewer(show=True))
    _settle(qtbot)
    return viewer, gui.main_window(viewer.window.dock_widgets["Metrics"])


def test_window_fits_the_screen_and_the_canvas_takes_half_of_it(make_napari_viewer, qtbot):
    free = _free_screen()
    if free.width() < 1920 or free.height() < 1080:
        pytest.skip(f"needs a 1920x1080 screen, this one offers {free.width()}x{free.height()}")
    _, window = _launch(make_napari_viewer, qtbot)
    assert window.width() <= free.width() and window.height() <= free.height(), window.size()
    assert window.width() * window.height() >= 0.9 * free.width() * free.height()  # it uses the screen
    canvas = window.centralWidget()
    share = canvas.width() * canvas.height() / (window.width() * window.height())
    assert share >= 0.5, f"canvas {canvas.width()}x{canvas.height()} in {window.width()}x{window.height()}"


def test_step_tabs_show_their_whole_titles(make_napari_viewer, qtbot):
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QTabBar

    from napari_xaiclip.widgets import DOCK_ORDER, TAB_TITLES

    viewer, window = _launch(make_napari_viewer, qtbot)
    steps = [t for t, _, _, group in DOCK_ORDER if group == "steps"]
    assert set(steps) <= set(viewer.window.dock_widgets)  # napari still knows the docks by their full titles
    bars = [bar for bar in window.findChildren(QTabBar, options=Qt.FindChildOption.FindDirectChildrenOnly)
            if bar.isVisible() and bar.count() == len(steps)]
    assert len(bars) == 1
    bar = bars[0]
    assert [bar.tabText(i) for i in range(bar.count())] == [TAB_TITLES.get(t, t) for t in steps]
    for i in range(bar.count()):
        text, rect = bar.tabText(i), bar.tabRect(i)
        # 12 px: the stylesheet's tab padding; less and Qt elides the text ("2 ...").
        assert rect.width() >= bar.fontMetrics().horizontalAdvance(text) + 12, (text, rect.width())
        assert rect.right() <= bar.width(), f"tab {text!r} runs past the bar"


def test_metrics_table_scrolls_sideways_and_chooses_its_columns(make_napari_viewer, tmp_path):
    import csv

    from qtpy.QtCore import Qt

    from napari_xaiclip.widgets.metrics import COLUMNS, DEFAULT_VISIBLE, MetricsWidget

    metrics = MetricsWidget(make_napari_viewer())
    table = metrics.table
    assert table.horizontalScrollBarPolicy() != Qt.ScrollBarPolicy.ScrollBarAlwaysOff
    assert metrics.columns_button.menu() is metrics.columns_menu
    assert metrics.visible_columns() == DEFAULT_VISIBLE
    assert {"method", "mode", "slice", "seconds", "n_forward", "deletion_auc"} <= set(DEFAULT_VISIBLE)
    actions = {a.data(): a for a in metrics.columns_menu.actions() if a.isCheckable()}
    assert list(actions) == COLUMNS
    actions["gflops"].setChecked(True)  # the menu shows and hides columns
    assert not table.isColumnHidden(COLUMNS.index("gflops"))
    actions["method"].setChecked(False)
    assert table.isColumnHidden(COLUMNS.index("method"))
    metrics.set_visible_columns(COLUMNS)
    assert metrics.visible_columns() == COLUMNS
    metrics.set_visible_columns(DEFAULT_VISIBLE)

    metrics.add_record({"image": "CT", "slice": 3, "method": "occlusion", "mode": "roi", "gflops": 1.5})
    path = metrics.write_csv(str(tmp_path / "metrics.csv"))
    with open(path, newline="") as fh:
        header = next(csv.reader(fh))
    assert "gflops" in header and "image" in header  # hidden columns are still exported

    free = _free_screen()  # no minimum that pushes a column of docks off the screen
    hint = metrics.minimumSizeHint()
    assert hint.width() <= free.width() // 3 and hint.height() <= 300, hint


def test_docking_every_widget_from_the_plugins_menu_keeps_the_window_on_the_screen(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QDockWidget

    from napari_xaiclip.gui import main_window

    manifest = yaml.safe_load((SRC / "napari.yaml").read_text())
    names = [w["display_name"] for w in manifest["contributions"]["widgets"]]
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-xaiclip", "ct_phantom")
    for name in names:  # what Plugins > XAI-CLIP > <name> does, one after the other
        dock, _ = viewer.window.add_plugin_dock_widget("napari-xaiclip", name)
    _settle(qtbot)
    window, free = main_window(dock), _free_screen()
    minimums = {d.windowTitle(): d.minimumSizeHint().height() for d in window.findChildren(QDockWidget)
                if d.isVisible()}
    assert window.height() <= free.height() and window.width() <= free.width(), (window.size(), minimums)


def test_no_module_reaches_into_the_private_qt_window():
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "_qt_window" in p.read_text()]
    assert not offenders, f"use the public parent chain (docked_widget.window()) instead: {offenders}"
