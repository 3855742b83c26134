"""The house rules: layers import downwards only, no import circle, one registry for the explainers.

A toy explainer registered here must show up in every place that lists methods:
the CLI help and ``--method`` choices, the GUI's method list and parameter form,
and a manifest row, all without editing any of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from napari_xaiclip.explain import explain, method_names
from napari_xaiclip.explain.base import finish
from napari_xaiclip.explain.registry import MethodSpec, Param, register, unregister

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_xaiclip"
#: packages only the user-facing layers may import
UI_ONLY = ("napari_xaiclip.cli", "napari_xaiclip.widgets", "qtpy", "napari", "magicgui")
UI_MODULES = ("cli", "widgets", "gui", "_reader", "_writer", "_sample_data", "layer_geometry")  # napari-facing


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Absolute names of the napari_xaiclip modules (and third-party roots) ``path`` imports."""
    tree = ast.parse(path.read_text())
    pkg = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            found.add(root)
            found |= {f"{root}.{a.name}" for a in node.names}
    return found


def _sources():
    return sorted(p for p in SRC.rglob("*.py"))


def _is_ui(path: Path) -> bool:
    rel = path.relative_to(SRC).parts
    return rel[0] in UI_MODULES or rel[0].removesuffix(".py") in UI_MODULES


@pytest.mark.parametrize("path", [p for p in _sources() if not _is_ui(p)], ids=lambda p: str(p.relative_to(SRC)))
def test_core_modules_never_import_the_user_interface(path):
    bad = sorted(name for name in _imports(path, top_level_only=False)
                 if any(name == u or name.startswith(u + ".") for u in UI_ONLY))
    assert not bad, f"{path.relative_to(SRC)} imports {bad}"


def test_no_import_circle_between_modules():
    """Module-level imports form no cycle (imports inside functions are allowed to break one)."""
    modules = {_module_name(p): p for p in _sources()}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imp in _imports(path, top_level_only=True):
            while imp and imp not in modules:
                imp = imp.rpartition(".")[0]
            if imp and imp != name and not name.startswith(imp + "."):  # a package importing its parts is fine
                targets.add(imp)
        graph[name] = targets
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)


def test_no_comment_cites_documents_outside_the_repository():
    for path in _sources():
        text = path.read_text()
        for needle in ("../shared", "DESIGN.md", "STYLE.md", "issue #", "issue 1"):
            assert needle not in text, f"{path.relative_to(SRC)} cites {needle!r}"


# --- a toy explainer, registered only for the tests below ------------------------------------
def _brightness(ctx, gain: float = 1.0, window: int | None = None):
    """The model input itself (times ``gain``): a map that needs no forward pass."""
    heat = ctx.x.mean(0) * gain
    yield ctx.progress(1, 1, heat, "brightness")
    return finish(ctx, "brightness", {"gain": gain, "window": window}, heat)


TOY = MethodSpec("brightness", _brightness,
                 (Param("gain", float, 1.0, "multiplies the image", low=0, high=10),
                  Param("window", int, None, "unused", low=1, auto=True, aliases=("patch",))),
                 summary="a toy map: the image's brightness.")


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    unregister(TOY.name)


def test_a_registered_method_runs_through_the_one_entry_point(toy):
    from toy_models import TinyConvNet, make_segmenter

    seg = make_segmenter(TinyConvNet(in_channels=2, seed=3), 32, box="channel", normalize="minmax")
    sl = np.random.default_rng(0).uniform(0, 1, (32, 32)).astype(np.float32)
    ex = explain("brightness", seg, sl, box=(8, 6, 24, 26), gain=2.0)
    assert ex.method == "brightness" and ex.params["gain"] == 2.0
    with pytest.raises(ValueError, match=r"brightness.gain must be <= 10, got 11"):
        explain("brightness", seg, sl, box=(8, 6, 24, 26), gain=11)
    with pytest.warns(FutureWarning, match=r"brightness.patch is deprecated; use brightness.window"):
        assert explain("brightness", seg, sl, box=(8, 6, 24, 26), patch=4).params["window"] == 4


def test_a_registered_method_shows_in_the_cli(toy, capsys):
    from napari_xaiclip.cli import build_parser

    assert "brightness" in method_names()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["explain", "--help"])
    help_text = capsys.readouterr().out
    assert "brightness: a toy map" in help_text and "gain=1.0 (multiplies the image)" in help_text
    args = build_parser().parse_args(["explain", "x.nii.gz", "--out", "o", "--method", "brightness"])
    assert args.method == ["brightness"]


def test_a_registered_method_is_accepted_in_a_manifest(toy, tmp_path):
    from napari_xaiclip.manifest import read_manifest

    (tmp_path / "ct.nii.gz").write_bytes(b"")
    manifest = tmp_path / "m.csv"
    manifest.write_text("case,volume,slices,box,methods,params\n"
                        "a,ct.nii.gz,3,1 2 10 12,brightness occlusion,brightness.gain=0.5\n")
    case = read_manifest(manifest)[0].case
    assert "brightness" in case.methods and case.params["brightness"] == {"gain": 0.5}
    manifest.write_text("case,volume,slices,box,methods,params\na,ct.nii.gz,3,1 2 10 12,brightness,"
                        "brightness.gain=x\n")
    (row,) = read_manifest(manifest)   # a bad value fails that row alone, naming its line
    assert row.error == "m.csv line 2: params: brightness.gain must be a finite number, got 'x'"


@pytest.mark.gui
def test_a_registered_method_shows_in_the_gui_form(toy, make_napari_viewer):
    from napari_xaiclip.widgets.explainer import ExplainerWidget

    widget = ExplainerWidget(make_napari_viewer())
    names = [widget.method.itemText(i) for i in range(widget.method.count())]
    assert "brightness" in names
    widget.method.setCurrentText("brightness")
    assert set(widget.params.editors) == {"gain", "window"}
    assert widget.params.values() == {"gain": 1.0, "window": None}  # window's lowest value reads "auto"
    widget.params.set_value("gain", 3.5)
    widget.params.set_value("window", 8)
    assert widget.params.values() == {"gain": 3.5, "window": 8}


@pytest.mark.gui
def test_the_gui_form_offers_only_what_each_method_accepts(make_napari_viewer):
    """Occlusion is not offered LIME's segment-mean fill; hidden parameters stay hidden."""
    from napari_xaiclip.widgets.params import ParamForm

    form = ParamForm()
    form.set_method("occlusion")
    fill = form.editors["fill"]
    assert [fill.itemText(i) for i in range(fill.count())] == ["zero", "mean", "blur"]
    form.set_method("lime")
    assert "scales" not in form.editors and "segment-mean" == form.editors["fill"].currentText()
    form.set_method("causal")
    assert "bank_slices" not in form.editors and "filler_bank" not in form.editors
    form.set_method("segx")
    base = form.editors["base"]
    assert "causal" not in [base.itemText(i) for i in range(base.count())]
