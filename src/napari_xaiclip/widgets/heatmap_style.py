"""How heatmap layers look: translucent colour maps whose limits follow the data as it grows."""

from __future__ import annotations


__all__ = ["heatmap_layer_kwargs", "napari_colormap", "restyle_heatmap"]


def napari_colormap(spec: dict):
    """A napari Colormap from :func:`napari_xaiclip.display.heatmap_colormap`'s plain spec."""
    from napari.utils.colormaps import Colormap

    return Colormap(colors=spec["colors"], controls=spec["controls"], name=spec["name"])


def heatmap_layer_kwargs(heatmap, signed=None) -> dict:
    """add_image keyword arguments that keep a heatmap readable over any scan (translucent, transparent low end)."""
    from ..display import heatmap_style

    style = heatmap_style(heatmap, signed)
    return {"colormap": napari_colormap(style["colormap"]), "blending": style["blending"],
            "opacity": style["opacity"], "contrast_limits": style["contrast_limits"]}


def restyle_heatmap(layer, heatmap=None, force: bool = False) -> None:
    """Follow a heatmap layer's growing range (and its sign) with its limits and colour map.

    While a run fills the map the limits move only when they change by more than 5 %
    (one redraw per update); ``force`` sets the final map's exact limits.
    """
    from ..display import heatmap_colormap, heatmap_limits, is_signed

    data = layer.data if heatmap is None else heatmap
    signed = is_signed(data)
    name = heatmap_colormap(signed)["name"]
    if layer.colormap.name != name:
        layer.colormap = napari_colormap(heatmap_colormap(signed))
    lo, hi = heatmap_limits(data, signed)
    old_lo, old_hi = layer.contrast_limits
    moved = abs(hi - old_hi) > 0.05 * max(abs(old_hi), 1e-12) or abs(lo - old_lo) > 0.05 * max(abs(old_lo), 1e-12)
    if force or moved:
        layer.contrast_limits = (lo, hi)  # refreshes the layer
    else:
        layer.refresh()
