"""Figures, metric tables and files of explanations (matplotlib with the Agg backend, atomic writes)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .io import atomic_write_bytes, atomic_write_text

__all__ = ["display_slice", "format_table", "markdown_table", "render_panels", "save_figure", "write_metrics"]


def display_slice(slice2d: np.ndarray) -> np.ndarray:
    """A slice in [0, 1] for display: the GUI's CT windows (brain window inside a skull, abdomen
    otherwise; :func:`napari_xaiclip.display.slice_window`), 1-99 % percentiles for other scans."""
    from .display import slice_window

    s = np.nan_to_num(np.asarray(slice2d, np.float64))
    window = slice_window(s)
    if window is not None:
        lo, hi = window
    else:
        lo, hi = np.percentile(s, [1, 99]) if s.size else (0.0, 1.0)
    return np.clip((s - lo) / max(hi - lo, 1e-8), 0, 1)


def _figure_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def render_panels(slice2d: np.ndarray, panels: Sequence[dict], spacing=(1.0, 1.0), suptitle: str | None = None,
                  crop_to=None, box=None) -> bytes:
    """PNG bytes of side-by-side panels over one slice.

    Each panel: ``{"title", "heatmap" (H, W) or None, "roi" (H, W) bool or None,
    "mask" (H, W) bool or None, "box" (x0, y0, x1, y1) or None}``. ROI contour in
    cyan, segmentation contour in yellow, the box prompt in white dashes on black, the heatmap
    in the GUI's colours (:mod:`napari_xaiclip.display`: transparent where
    unimportant, more opaque where important; a diverging map for signed maps)
    with a colour bar. ``crop_to`` is a (x0, y0, x1, y1) box to zoom on; ``box`` is a
    prompt box (x0, y0, x1, y1, slice pixels, x1/y1 exclusive) drawn on every panel
    that gives none of its own.
    """
    # a Figure on its own Agg canvas: no pyplot state and no backend switch inside napari
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    base = display_slice(slice2d)
    n = max(1, len(panels))
    fig = Figure(figsize=(4.2 * n, 4.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)
    aspect = float(spacing[0]) / float(spacing[1])
    for ax, panel in zip(axes[0], panels):
        ax.imshow(base, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
        heat = panel.get("heatmap")
        if heat is not None and np.any(np.nan_to_num(np.asarray(heat, np.float64)) != 0):
            _draw_heatmap(fig, ax, np.nan_to_num(np.asarray(heat, np.float64)), aspect)
        prompt = panel.get("box") if panel.get("box") is not None else box
        if prompt is not None:
            from matplotlib.patches import Rectangle

            x0, y0, x1, y1 = (float(v) for v in prompt)
            for colour, style, width in (("black", "-", 2.0), ("white", "--", 1.0)):  # seen on dark and bright
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour,
                                       linestyle=style, linewidth=width))
        for key, colour in (("roi", "cyan"), ("mask", "yellow")):
            m = panel.get(key)
            if m is not None and np.any(m):
                ax.contour(np.asarray(m, float), levels=[0.5], colors=colour, linewidths=1.0)
        if crop_to is not None:
            x0, y0, x1, y1 = crop_to
            ax.set_xlim(x0, x1)
            ax.set_ylim(y1, y0)
        ax.set_title(panel.get("title", ""), fontsize=9)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _figure_bytes(fig)


def _draw_heatmap(fig, ax, h: np.ndarray, aspect: float) -> None:
    """The heatmap over the slice with its colour bar, in the GUI's colours and limits."""
    from matplotlib.colors import LinearSegmentedColormap

    from .display import heatmap_style

    style = heatmap_style(h)
    spec = style["colormap"]
    cmap = LinearSegmentedColormap.from_list(spec["name"], list(zip(spec["controls"], spec["colors"])))
    lo, hi = style["contrast_limits"]
    im = ax.imshow(h, cmap=cmap, vmin=lo, vmax=hi, aspect=aspect, interpolation="bilinear")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    bar.ax.tick_params(labelsize=7)
    # one sign for every method: positive = supports the segmentation
    bar.set_label("supports (+, red) / hinders (-, blue)" if style["signed"] else "importance", fontsize=7)


def save_figure(path, slice2d: np.ndarray, panels: Sequence[dict], **kwargs) -> None:
    """Write :func:`render_panels` to ``path`` atomically."""
    atomic_write_bytes(path, render_panels(slice2d, panels, **kwargs))


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def format_table(records: Sequence[dict], fields: Sequence[str]) -> str:
    """A plain-text table for the terminal."""
    rows = [[_fmt(r.get(f)) for f in fields] for r in records]
    widths = [max(len(f), *(len(row[i]) for row in rows)) if rows else len(f) for i, f in enumerate(fields)]
    line = "  ".join(f.ljust(w) for f, w in zip(fields, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join([line, sep, *body])


def markdown_table(records: Sequence[dict], fields: Sequence[str], headers: Sequence[str] | None = None) -> str:
    headers = list(headers or fields)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_fmt(r.get(f)) for f in fields) + " |" for r in records]
    return "\n".join(out)


def write_metrics(out_dir, records: Sequence[dict], fields: Sequence[str], stem: str = "metrics") -> None:
    """``stem.json`` (list of records) and ``stem.csv`` (``fields`` columns), each written atomically."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / f"{stem}.json", json.dumps(list(records), indent=2, default=_json_default) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    atomic_write_text(out_dir / f"{stem}.csv", buf.getvalue())


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
