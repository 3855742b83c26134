"""*Save all…*: the viewer's results under the names ``xaiclip explain`` uses (:mod:`napari_xaiclip.outputs`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..outputs import LABEL_VALUE, METRICS_STEM, ROI_STEM, SEGMENTATION_STEM, figure_name_for, heatmap_stem
from ..outputs import unique_stem, write_volume
from .layers import ROI_NAME, SEGMENTATION_NAME

__all__ = ["save_results"]


def save_results(viewer, out: Path, records: list[dict], columns) -> list[str]:
    """Write every source image's heatmaps, ROI, segmentation, metrics and figures; returns the paths.

    One folder per source image when the viewer holds results for several, else ``out`` itself.
    """
    groups = _results_by_source(viewer)
    written: list[str] = []
    for source, group in groups.items():
        folder = Path(out) / _file_stem(source) if len(groups) > 1 else Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        written += _save_source(viewer, folder, source, group,
                                [r for r in records if r.get("image") == source], columns)
    return written


def _results_by_source(viewer) -> dict:
    groups: dict = {}
    for layer in viewer.layers:
        meta = layer.metadata or {}
        source = meta.get("xaiclip_source")
        if source is None or "xaiclip_geometry" not in meta:
            continue
        group = groups.setdefault(source, {"heatmaps": [], "labels": {}})
        if layer._type_string == "image" and meta.get("xaiclip_records"):
            group["heatmaps"].append(layer)
        elif layer._type_string == "labels" and layer.name in (ROI_NAME, SEGMENTATION_NAME):
            group["labels"][ROI_STEM if layer.name == ROI_NAME else SEGMENTATION_STEM] = layer
    return groups


def _save_source(viewer, folder: Path, source: str, group: dict, records: list[dict], columns) -> list[str]:
    from .._writer import layer_to_volume_array
    from ..reports import write_metrics

    written, taken = [], set()
    figures = []
    for layer in group["heatmaps"]:
        first = layer.metadata["xaiclip_records"][0]
        stem = unique_stem(heatmap_stem(first["method"], first["mode"]), taken)
        array, vol = layer_to_volume_array(layer.data, _layer_meta(layer))
        written += [str(p) for p in write_volume(folder, stem, array.astype(np.float32), vol)]
        figures.append((stem, layer))
    for stem, layer in group["labels"].items():
        array, vol = layer_to_volume_array(layer.data, _layer_meta(layer))
        labels = (np.asarray(array) > 0).astype(np.uint8) * LABEL_VALUE
        written += [str(p) for p in write_volume(folder, stem, labels, vol)]
    if records:
        write_metrics(folder, records, columns, stem=METRICS_STEM)
        written += [str(folder / f"{METRICS_STEM}.csv"), str(folder / f"{METRICS_STEM}.json")]
    for stem, layer in figures:
        written += _save_figures(viewer, folder, stem, layer, source)
    return written


def _save_figures(viewer, folder: Path, stem: str, layer, source: str) -> list[str]:
    """One PNG per explained slice of a heatmap layer, as ``xaiclip explain`` draws them."""
    from ..reports import save_figure
    from ..slicing import take_slice

    if source not in viewer.layers:
        return []
    src = viewer.layers[source]
    where = layer.metadata["xaiclip_slice"]
    records = layer.metadata["xaiclip_records"]
    written = []
    for rec in records:
        axis, index = int(rec["axis"]), int(rec["slice"])
        plane = np.asarray(take_slice(np.asarray(src.data), axis, index))
        heat = np.asarray(take_slice(np.asarray(layer.data), axis, index - int(where["index"])))
        panel = {"title": f"{rec['method']} ({rec['mode']}) · slice {index}", "heatmap": heat,
                 "roi": _slice_of(viewer, ROI_NAME, axis, index),
                 "mask": _slice_of(viewer, SEGMENTATION_NAME, axis, index),
                 "box": (rec.get("params") or {}).get("box")}
        spacing = [s for a, s in enumerate(np.asarray(src.scale)[-3:]) if a != axis]
        path = folder / figure_name_for(stem, index if len(records) > 1 else None)
        save_figure(path, plane, [panel], spacing=spacing)
        written.append(str(path))
    return written


def _slice_of(viewer, name, axis, index):
    from ..slicing import take_slice

    if name not in viewer.layers:
        return None
    return np.asarray(take_slice(np.asarray(viewer.layers[name].data), axis, index)) > 0


def _layer_meta(layer) -> dict:
    return {"metadata": layer.metadata, "scale": layer.scale, "translate": layer.translate,
            "rotate": layer.rotate, "shear": layer.shear, "affine": layer.affine.affine_matrix,
            "name": layer.name}


def _file_stem(name: str) -> str:
    keep = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in name.replace(" · ", "_"))
    return keep.strip("_") or "layer"
