"""One explanation job on a NIfTI volume (``xaiclip explain``, one row of ``xaiclip batch``).

Inputs are checked before any work, outputs are written into a staging folder
and moved into place only when the whole job succeeded, so a failed job leaves
no partial files.

Outputs in ``out``:
``<method>-<mode>.nii.gz`` (heatmap in the volume's geometry, values on the
explained slices, zero elsewhere), ``<method>-<mode>.png`` (slice, ROI and
segmentation contours, heatmap; one per slice for ranges), ``roi.nii.gz``,
``segmentation.nii.gz``, ``metrics.json`` and ``metrics.csv``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .io import Volume, load_volume, save_volume
from .phantom import ORGAN_NAMES
from .pipeline import METRIC_FIELDS, box_from_mask, expand_modes, iter_explain_slice, localize
from .preprocess import PRESETS, apply_preset
from .slicing import check_slice, put_slice, take_slice

__all__ = ["CASE_FIELDS", "Case", "PreparedCase", "bank_slices", "parse_slices", "prepare_case", "run_case",
           "slice_box_and_gt"]

CASE_FIELDS = METRIC_FIELDS[:2] + ["slice"] + METRIC_FIELDS[2:]


@dataclass
class Case:
    """What to explain. ``slices`` None means the slice where the organ is largest (needs labels)."""

    volume: str
    slices: list[int] | None = None
    axis: int = 0
    box: tuple | None = None
    labels: str | None = None
    organ: str | None = None
    roi: str = "localizer"
    prompt: str | None = None
    methods: list[str] = field(default_factory=lambda: ["occlusion"])
    modes: tuple = ("traditional", "roi")
    model: str = "default"
    localizer: str = "default"
    seed: int = 0
    preprocess: str = "none"
    params: dict = field(default_factory=dict)
    box_margin: int = 0
    roi_margin: int = 0
    curves: bool = True
    name: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PreparedCase:
    case: Case
    volume: Volume
    labels: np.ndarray | None
    organ_value: int | None
    slices: list[int]
    modes: tuple


def parse_slices(text: str) -> list[int]:
    """``"12"`` -> [12]; ``"10:14"`` -> [10, 11, 12, 13] (end excluded, like Python)."""
    text = str(text).strip()
    try:
        if ":" in text:
            a, b = (int(v) for v in text.split(":", 1))
            if b <= a:
                raise ValueError
            return list(range(a, b))
        return [int(text)]
    except ValueError:
        raise ValueError(f"slices must be N or A:B with B > A, got {text!r}") from None


def organ_value(organ: str, label_names: dict) -> int:
    """Label value of an organ given by name (FLARE22 names) or number."""
    if str(organ).strip().isdigit():
        return int(organ)
    by_name = {v.lower(): k for k, v in label_names.items()}
    key = str(organ).strip().lower().replace("_", " ")
    if key not in by_name:
        raise ValueError(f"unknown organ {organ!r}; known: {', '.join(sorted(by_name))} (or a label number)")
    return by_name[key]


def prepare_case(case: Case) -> PreparedCase:
    """Load and check everything a job needs; raises ValueError before any output is written."""
    from .explain import METHODS, method_defaults

    for m in case.methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    if not case.methods:
        raise ValueError("no method given")
    for m, given in case.params.items():
        if m not in METHODS:
            raise ValueError(f"parameters given for an unknown method {m!r}; methods: {', '.join(METHODS)}")
        unknown = set(given) - set(method_defaults(m))
        if unknown:
            raise ValueError(f"unknown parameters for {m}: {sorted(unknown)}; known: {sorted(method_defaults(m))}")
    modes = expand_modes(case.modes)
    if case.preprocess not in PRESETS:
        raise ValueError(f"unknown preprocessing {case.preprocess!r}; choose from {', '.join(PRESETS)}")
    if case.roi not in ("localizer", "labels", "none"):
        raise ValueError(f"--roi must be localizer, labels or none, got {case.roi!r}")
    if "roi" in modes and case.roi == "none":
        raise ValueError("ROI-guided mode needs an ROI: use --roi localizer (with --prompt) or --roi labels")
    if Path(case.volume).is_dir():
        raise ValueError(f"{case.volume}: is a directory, expected a NIfTI file")
    if not Path(case.volume).is_file():
        raise ValueError(f"{case.volume}: no such file")
    vol = load_volume(case.volume)
    labels, value = None, None
    if case.labels:
        if not Path(case.labels).is_file():
            raise ValueError(f"{case.labels}: no such file")
        lab = load_volume(case.labels)
        if lab.data.shape != vol.data.shape:
            raise ValueError(f"labels {case.labels} of shape {lab.data.shape} do not match the volume's {vol.data.shape}")
        labels = np.rint(lab.data).astype(np.int32)
        if case.organ is None:
            raise ValueError("--labels needs --organ (a name such as liver, or a label number)")
        value = organ_value(case.organ, ORGAN_NAMES)
        if not np.any(labels == value):
            raise ValueError(f"organ {case.organ!r} (label {value}) is not in {case.labels}")
    elif case.organ is not None:
        raise ValueError("--organ needs --labels")
    if case.box is None and labels is None:
        raise ValueError("give a box prompt (--box X0 Y0 X1 Y1) or --labels with --organ")
    if case.roi == "labels" and labels is None:
        raise ValueError("--roi labels needs --labels and --organ")
    if case.roi == "localizer" and "roi" in modes and not (case.prompt or case.organ):
        raise ValueError("--roi localizer needs --prompt (or --organ to use its name)")
    slices = case.slices
    if slices is None:
        if labels is None:
            raise ValueError("give --slice (no labels to find the organ's largest slice)")
        areas = (labels == value).sum(axis=tuple(a for a in range(3) if a != case.axis))
        slices = [int(np.argmax(areas))]
    for s in slices:
        check_slice(vol.data.shape, case.axis, s)
    if case.box is not None:
        h, w = take_slice(vol.data, case.axis, slices[0]).shape
        x0, y0, x1, y1 = case.box
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box must have X1 > X0 and Y1 > Y0, got {case.box}")
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise ValueError(f"box {tuple(case.box)} lies outside the {w}x{h} (width x height) slice")
    return PreparedCase(case, vol, labels, value, list(slices), modes)


def slice_box_and_gt(prep: PreparedCase, index: int):
    """(image as the models see it, box prompt, ground-truth mask or None) of one slice."""
    case = prep.case
    raw = take_slice(prep.volume.data, case.axis, index)
    image = apply_preset(raw, case.preprocess) if case.preprocess != "none" else raw
    gt = None if prep.labels is None else take_slice(prep.labels, case.axis, index) == prep.organ_value
    if case.box is not None:
        return image, tuple(float(v) for v in case.box), gt
    if not gt.any():
        raise ValueError(f"organ {case.organ!r} is absent from slice {index}; no box can be taken")
    return image, box_from_mask(gt, case.box_margin), gt


def bank_slices(prep: PreparedCase, index: int, n: int = 8) -> list[np.ndarray]:
    """Other slices of the volume, evenly spaced, as the causal method's filler bank."""
    case = prep.case
    size = prep.volume.data.shape[case.axis]
    picks = [int(i) for i in np.unique(np.linspace(0, size - 1, n + 1).round()) if int(i) != index][:n]
    image = [take_slice(prep.volume.data, case.axis, i) for i in picks]
    return [apply_preset(s, case.preprocess) if case.preprocess != "none" else s for s in image]


def _slice_inputs(prep: PreparedCase, index: int, localizer):
    case = prep.case
    image, box, gt = slice_box_and_gt(prep, index)
    raw = take_slice(prep.volume.data, case.axis, index)
    roi, score = None, None
    if case.roi == "labels":
        from .roi import clean_roi

        roi = clean_roi(gt, margin=case.roi_margin) if gt.any() else None
    elif case.roi == "localizer" and "roi" in prep.modes:
        roi, score = localize(localizer, image, case.prompt or case.organ, margin=case.roi_margin)
    if "roi" in prep.modes and (roi is None or not roi.any()):
        raise ValueError(f"the ROI is empty on slice {index}; try another --prompt, --roi labels or --mode traditional")
    return image, raw, gt, box, roi, score


def run_case(case: Case, out: str | os.PathLike, on_progress=None, segmenter=None, localizer=None) -> list[dict]:
    """Run a job and write its outputs into ``out``; returns the metric records.

    ``on_progress(text, done, total)`` is called as work advances.
    """
    from .models import load_localizer, load_segmenter
    from .reports import save_figure, write_metrics

    prep = prepare_case(case)
    seg = segmenter or load_segmenter(case.model)
    loc = localizer
    if loc is None and case.roi == "localizer" and "roi" in prep.modes:
        loc = load_localizer(case.localizer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".xaiclip-partial-", dir=out))
    try:
        records = _run(prep, seg, loc, stage, on_progress, save_figure)
        write_metrics(stage, records, CASE_FIELDS)
        _promote(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return records


def _run(prep: PreparedCase, seg, loc, stage: Path, on_progress, save_figure) -> list[dict]:
    case, vol = prep.case, prep.volume
    heat = {}
    roi_vol = np.zeros(vol.data.shape, np.uint8)
    seg_vol = np.zeros(vol.data.shape, np.uint8)
    records = []
    multi = len(prep.slices) > 1
    for n, index in enumerate(prep.slices):
        image, raw, gt, box, roi, score = _slice_inputs(prep, index, loc)
        params = dict(case.params)
        if "causal" in case.methods and "bank_slices" not in params.get("causal", {}):
            params["causal"] = {**params.get("causal", {}), "bank_slices": bank_slices(prep, index)}
        gen = iter_explain_slice(seg, image, box, case.methods, prep.modes, roi=roi, gt=gt, score_map=score,
                                 seed=case.seed, params=params, curves=case.curves)
        while True:
            try:
                job, n_jobs, label, p = next(gen)
            except StopIteration as stop:
                results = stop.value
                break
            if on_progress is not None:
                on_progress(f"slice {index}: {label}", n * n_jobs + job, len(prep.slices) * n_jobs)
        base_mask = results[0].explanation.baseline_mask
        put_slice(seg_vol, case.axis, index, base_mask.astype(np.uint8))
        if roi is not None:
            put_slice(roi_vol, case.axis, index, roi.astype(np.uint8))
        spacing = [s for a, s in enumerate(vol.spacing) if a != case.axis]
        for r in results:
            ex = r.explanation
            key = f"{ex.method}-{ex.mode}"
            heat.setdefault(key, np.zeros(vol.data.shape, np.float32))
            put_slice(heat[key], case.axis, index, ex.heatmap)
            suffix = f"-s{index}" if multi else ""
            save_figure(stage / f"{key}{suffix}.png", raw, [
                {"title": f"{ex.method} ({ex.mode}) · slice {index}", "heatmap": ex.heatmap,
                 "roi": ex.roi, "mask": base_mask}], spacing=spacing)
            records.append({"case": case.name or Path(case.volume).name, "slice": index, **r.record})
    for key, arr in heat.items():
        save_volume(stage / f"{key}.nii.gz", arr, like=vol)
    save_volume(stage / "segmentation.nii.gz", seg_vol, like=vol)
    if roi_vol.any():
        save_volume(stage / "roi.nii.gz", roi_vol, like=vol)
    return records


def _promote(stage: Path, out: Path) -> None:
    """Move finished files from the staging folder into ``out`` (each rename is atomic)."""
    for f in sorted(stage.iterdir()):
        os.replace(f, out / f.name)
