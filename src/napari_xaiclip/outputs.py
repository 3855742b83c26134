"""Names and label values of result files: one scheme for the GUI, ``xaiclip explain`` and ``xaiclip batch``.

In an output folder (one per case in a batch; in the GUI, one per source image
when the viewer holds results for several):

* ``<method>-<mode>.nii.gz``: heatmap in the scan's geometry, values on the
  explained slices, zero elsewhere (``occlusion-roi.nii.gz``, ``rise-traditional.nii.gz``);
* ``<method>-<mode>.png``, or ``<method>-<mode>-s<slice>.png`` for several slices: figure;
  a second run of the same method and mode in one GUI session is saved as ``<method>-<mode>-2``;
* ``roi.nii.gz`` and ``segmentation.nii.gz``: uint8 labels, :data:`LABEL_VALUE` inside, 0 outside;
* ``metrics.json`` and ``metrics.csv``.

Volumes are written in the source file's own voxel grid (so they overlay it in
3D Slicer or ITK-SNAP); for an NRRD source each is also written as ``.nrrd``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import Volume, save_volume, to_source_order

__all__ = ["LABEL_VALUE", "METRICS_STEM", "ROI_STEM", "SEGMENTATION_STEM", "figure_name", "figure_name_for",
           "heatmap_stem", "is_result_name", "unique_stem", "write_volume"]

#: Value of the ROI and of the segmentation in label outputs (and in the GUI's labels layers).
LABEL_VALUE = 1
ROI_STEM = "roi"
SEGMENTATION_STEM = "segmentation"
METRICS_STEM = "metrics"


def heatmap_stem(method: str, mode: str) -> str:
    """``occlusion``, ``roi`` -> ``occlusion-roi``."""
    return f"{method}-{mode}"


def figure_name(method: str, mode: str, index: int | None = None) -> str:
    """PNG name of one heatmap figure; ``index`` for runs over several slices."""
    return figure_name_for(heatmap_stem(method, mode), index)


def figure_name_for(stem: str, index: int | None = None) -> str:
    """PNG name of the figure of the heatmap saved as ``<stem>.nii.gz``."""
    suffix = "" if index is None else f"-s{int(index)}"
    return f"{stem}{suffix}.png"


def is_result_name(name: str) -> bool:
    """Whether ``name`` is a file name this scheme gives a job's result (for any registered method)."""
    import re

    from .explain import method_names

    methods = "|".join(re.escape(m) for m in method_names())
    volume = r"\.(nii\.gz|nrrd)"
    return bool(re.fullmatch(rf"({ROI_STEM}|{SEGMENTATION_STEM}){volume}|{METRICS_STEM}\.(csv|json)"
                             rf"|({methods})-(roi|traditional)({volume}|(-s\d+)?\.png)", name))


def unique_stem(stem: str, taken: set) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... when a second run of the same method and mode is saved."""
    candidate, n = stem, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}"
    taken.add(candidate)
    return candidate


def source_is_nrrd(like: Volume | None) -> bool:
    from .io_itk import is_nrrd_path

    return like is not None and like.path is not None and is_nrrd_path(like.path)


def write_volume(folder: str | Path, stem: str, array: np.ndarray, like: Volume) -> list[Path]:
    """``<stem>.nii.gz`` (and ``<stem>.nrrd`` for an NRRD source) in ``like``'s source geometry."""
    folder = Path(folder)
    nifti = folder / f"{stem}.nii.gz"
    save_volume(nifti, array, like=like)
    written = [nifti]
    if source_is_nrrd(like) and like.source_affine is not None:
        from .io_itk import write_itk

        data = np.asarray(array)
        data = data.astype(np.uint8) if data.dtype == bool else data
        if not np.issubdtype(data.dtype, np.integer):
            data = data.astype(np.float32)
        write_itk(folder / f"{stem}.nrrd", to_source_order(data, like), like.source_affine)
        written.append(folder / f"{stem}.nrrd")
    return written
