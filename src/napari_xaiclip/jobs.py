"""One explanation job on a NIfTI volume (``xaiclip explain``, one row of ``xaiclip batch``).

Inputs are checked before any work, outputs are written into a staging folder
and moved into place only when the whole job succeeded, so a failed job leaves
no partial files.

Outputs in ``out`` follow :mod:`napari_xaiclip.outputs` (the GUI writes the same names):
``<method>-<mode>.nii.gz`` (heatmap in the volume's geometry, values on the
explained slices, zero elsewhere), ``<method>-<mode>.png`` (slice, ROI and
segmentation contours, heatmap; one per slice for ranges), ``roi.nii.gz``,
``segmentation.nii.gz`` (value 1 inside), ``metrics.json`` and ``metrics.csv``;
NRRD sources get a ``.nrrd`` copy of every volume too.
"""

from __future__ import annotations


import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .io import Volume, load_volume
from .outputs import (LABEL_VALUE, ROI_STEM, SEGMENTATION_STEM, figure_name, heatmap_stem, is_result_name,
                      write_volume)
from .labels import label_table, load_organ_labels, organ_value
from .pipeline import COST_FIELDS, METRIC_FIELDS, ROI_FIELDS, box_from_mask, expand_modes, iter_explain_slice, localize, with_filler_bank
from .preprocess import PRESETS, apply_preset
from .slicing import check_slice, filler_slices, put_slice, take_slice

__all__ = ["CASE_FIELDS", "CONSOLE_FIELDS", "Case", "PreparedCase", "organ_value", "parse_slices", "prepare_case", "run_components",
           "run_case", "slice_box_and_gt"]

LABELS_ROI_TAUTOLOGY = ("the ROI comes from the same labels as the ground truth: in ROI-guided mode dice_vs_gt, "
                        "iou_vs_gt and pointing_game measure the labels, not the explanation; read dice_in_roi, "
                        "pointing_in_roi and deletion/insertion AUC beside their trivial_* baselines")
CASE_FIELDS = METRIC_FIELDS[:2] + ["slice"] + METRIC_FIELDS[2:] + ROI_FIELDS + COST_FIELDS
#: The table printed on the terminal: cost, quality inside the ROI beside the trivial map's, faithfulness.
CONSOLE_FIELDS = ["method", "mode", "slice", "n_forward", "total_seconds", "total_gflops", "dice_vs_baseline", "dice_in_roi",
                  "trivial_dice_in_roi", "pointing_in_roi", "trivial_pointing_in_roi", "deletion_auc",
                  "trivial_deletion_auc", "insertion_auc", "trivial_insertion_auc"]
#: Where the ROI of ROI-guided mode comes from.
ROI_SOURCES = ("localizer", "segmenter", "labels", "none")
#: Pixels the segmenter's mask is grown by when it serves as the ROI (unless --roi-margin says otherwise).
SEGMENTER_ROI_MARGIN = 8


@dataclass
class Case:
    """What to explain. ``slices`` None means the slice where the organ is largest (needs labels).

    ``label_names``: a label table (CSV/JSON, see :func:`~napari_xaiclip.labels.read_label_names`)
    adding to or overriding the FLARE22 names for ``organ``. ``labels_threshold``: binarise a
    probability map given as ``labels`` (voxels >= T are the organ).
    """

    volume: str
    slices: list[int] | None = None
    axis: int = 0
    box: tuple | None = None
    labels: str | None = None
    organ: str | None = None
    label_names: str | None = None
    labels_threshold: float | None = None
    roi: str = "localizer"
    prompt: str | None = None
    prompt_match: str = "exact"
    methods: list[str] = field(default_factory=lambda: ["occlusion"])
    modes: tuple = ("traditional", "roi")
    model: str = "default"
    localizer: str = "default"
    seed: int = 0
    preprocess: str = "none"
    params: dict = field(default_factory=dict)
    box_margin: int = 0
    roi_margin: int | None = None
    curves: bool = True
    name: str = ""
    series: str | None = None
    speed: str = "auto"   # execution mode of the segmenter's forwards: auto, eager, compile, bf16

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
    prompt: object = None          # PromptResolution when a localizer makes the ROI
    provenance: dict = field(default_factory=dict)


def parse_slices(text: str) -> list[int]:
    """``"12"`` -> [12]; ``"10:14"`` -> [10, 11, 12, 13] (end excluded, like Python)."""
    text = str(text).strip()
    try:
        if ":" in text:
            a, b = (int(v) for v in text.split(":", 1))
            if b <= a or a < 0:
                raise ValueError
            if b - a > MAX_SLICES:  # refused before a list of that length is built
                raise OverflowError
            return list(range(a, b))
        return [int(text)]
    except ValueError:
        raise ValueError(f"slices must be N or A:B with 0 <= A < B, got {text!r}") from None
    except OverflowError:
        raise ValueError(f"slices {text!r}: more than {MAX_SLICES} slices; no volume has that many") from None


def prepare_case(case: Case) -> PreparedCase:
    """Load and check everything a job needs; raises ValueError before any output is written."""
    from .explain.registry import check_run

    case = replace(case, params=check_run(case.methods, case.params))
    modes = expand_modes(case.modes)
    if case.roi_margin is not None and not 0 <= int(case.roi_margin) <= MAX_ROI_MARGIN:
        raise ValueError(f"ROI margin must be between 0 and {MAX_ROI_MARGIN} pixels, got {case.roi_margin}")
    if case.preprocess not in PRESETS:
        raise ValueError(f"unknown preprocessing {case.preprocess!r}; choose from {', '.join(PRESETS)}")
    if case.roi not in ROI_SOURCES:
        raise ValueError(f"--roi must be one of {', '.join(ROI_SOURCES)}, got {case.roi!r}")
    from .models.speed import MODES as SPEED_MODES

    if case.speed not in SPEED_MODES:
        raise ValueError(f"--speed must be one of {', '.join(SPEED_MODES)}, got {case.speed!r}")
    if case.prompt_match not in ("exact", "similar"):
        raise ValueError(f"--prompt-match must be exact or similar, got {case.prompt_match!r}")
    if "roi" in modes and case.roi == "none":
        raise ValueError("ROI-guided mode needs an ROI: use --roi localizer (with --prompt) or --roi labels")
    if not Path(case.volume).exists():
        raise ValueError(f"{case.volume}: no such file")
    vol = load_volume(case.volume, series=case.series)  # a folder that is no DICOM series is refused there
    labels, value = _load_labels(case, vol) if case.labels else (None, None)
    if not case.labels:
        for what, given in (("--organ", case.organ), ("--label-names", case.label_names),
                            ("--labels-threshold", case.labels_threshold)):
            if given is not None:
                raise ValueError(f"{what} needs --labels")
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


def _load_labels(case: Case, image: Volume) -> tuple[np.ndarray, int]:
    """(int32 labels on ``image``'s grid, the organ's value) from ``case.labels``; ValueError names the file."""
    return load_organ_labels(case.labels, image, case.organ, label_table(case.label_names), case.labels_threshold)


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


def _preparation(case: Case):
    """The case's slice preprocessing as a function (None for none)."""
    return (lambda s: apply_preset(s, case.preprocess)) if case.preprocess != "none" else None


def run_components(case: Case, out, ablation: str = "zero", n_fillers: int = 8) -> list[dict]:
    """Component effects on the first slice of ``case``; writes components.csv/json and components.png."""
    from .explain.components import component_effects, save_component_chart
    from .models import load_segmenter
    from .reports import write_metrics

    prep = prepare_case(case)
    index = prep.slices[0]
    image, box, _ = slice_box_and_gt(prep, index)
    fillers = (filler_slices(prep.volume.data, case.axis, index, n_fillers, _preparation(case))
               if ablation == "mean" else None)
    out = Path(out)
    with claimed_output(out):   # before the model work: a bad or busy --out fails at once
        records = component_effects(load_segmenter(case.model), image, box=box, mode=ablation,
                                    filler_slices=fillers)
        fields = ["component", "kind", "mode", "target", "target_base", "target_ablated", "ate_dice", "ate",
                  "n_forward"]
        write_metrics(out, records, fields, stem="components")
        save_component_chart(records, out / "components.png")
    return records


#: Longest slice range and largest ROI margin accepted (beyond any scan; refused before allocating).
MAX_SLICES, MAX_ROI_MARGIN = 65536, 512


def _roi_margin(case: Case) -> int:
    if case.roi_margin is not None:
        return int(case.roi_margin)
    return SEGMENTER_ROI_MARGIN if case.roi == "segmenter" else 0


def _slice_inputs(prep: PreparedCase, index: int, seg, localizer):
    case = prep.case
    image, box, gt = slice_box_and_gt(prep, index)
    raw = take_slice(prep.volume.data, case.axis, index)
    roi, score, cost = None, None, None
    if "roi" in prep.modes or case.roi == "labels":
        from .roi import clean_roi

        roi_gflops = _roi_gflops(case.roi, seg, localizer)  # counted outside the timed region
        t0 = time.perf_counter()
        if case.roi == "labels":
            roi = clean_roi(gt, margin=_roi_margin(case)) if gt.any() else None
        elif case.roi == "segmenter":
            roi = clean_roi(seg.segment(image, box=box) > 0.5, margin=_roi_margin(case))
        elif case.roi == "localizer":
            roi, score = localize(localizer, image, prep.prompt.resolved, margin=_roi_margin(case))
        cost = (time.perf_counter() - t0, roi_gflops)
    if "roi" in prep.modes and (roi is None or not roi.any()):
        raise ValueError(f"the ROI is empty on slice {index}; try another --prompt, --roi labels or --mode traditional")
    return image, raw, gt, box, roi, score, cost


def _roi_gflops(source: str, seg, localizer) -> float | None:
    """GFLOPs of one ROI extraction: a localizer or segmenter forward, nothing for labels."""
    if source == "segmenter":
        return float(seg.gflops)
    if source == "localizer" and localizer is not None:
        from .models import localizer_gflops

        try:
            return float(localizer_gflops(localizer))
        except (AttributeError, RuntimeError, TypeError):  # a localizer the counter cannot trace
            return None
    return 0.0


def _prompt_text(prep: PreparedCase) -> str:
    """--prompt, else the organ's name (a label number becomes its name in the label table)."""
    case = prep.case
    if case.prompt:
        return case.prompt
    if prep.organ_value is not None and str(case.organ).strip().isdigit():
        return label_table(case.label_names).get(prep.organ_value, str(case.organ))
    return str(case.organ)


def _warnings_before_work(prep: PreparedCase, seg, loc, say) -> list[str]:
    """Phantom models on another volume (said first, so they precede a refused prompt), then
    the prompt's resolution: a note for a synonym, a warning for a text-similarity match."""
    from .provenance import phantom_model_warnings

    warnings = phantom_model_warnings(prep.volume.is_phantom, seg, loc)
    if prep.case.roi == "labels" and "roi" in prep.modes:
        warnings.append(LABELS_ROI_TAUTOLOGY)
    for w in warnings:
        say("warning", w)
    if loc is not None:
        prompt = loc.resolve_prompt(_prompt_text(prep), allow_similar=prep.case.prompt_match == "similar")
        prep.prompt = prompt
        if prompt.match == "similarity":
            warnings.append(prompt.describe() + "; the match is by text similarity only")
            say("warning", warnings[-1])
        elif prompt.match in ("synonym", "words"):
            say("note", prompt.describe())
    return warnings


def run_case(case: Case, out: str | os.PathLike, on_progress=None, segmenter=None, localizer=None,
             on_message=None) -> list[dict]:
    """Run a job and write its outputs into ``out``; returns the metric records.

    ``on_progress(text, done, total)`` is called as work advances, ``on_message(level, text)``
    with level "warning" or "note" for what the user must see (also in every record).
    """
    from .models import load_localizer, load_segmenter
    from .models.speed import ensure_speed
    from .provenance import model_provenance
    from .reports import save_figure, write_metrics

    prep = prepare_case(case)
    say = on_message or (lambda level, text: None)
    out = Path(out)
    with claimed_output(out):   # before any model work: a bad or busy --out fails at once
        seg = segmenter or load_segmenter(case.model)
        speed = ensure_speed(seg, case.speed)   # probes (and compiles) once per loaded model
        if case.speed not in ("eager", "auto"):   # a mode asked for by name: say what it became and why
            say("note", f"speed {case.speed}: {speed.chosen} ({'; '.join(speed.reasons)})")
        loc = localizer
        if loc is None and case.roi == "localizer" and "roi" in prep.modes:
            loc = load_localizer(case.localizer)
        warnings = _warnings_before_work(prep, seg, loc, say)
        prep.provenance = {**model_provenance(seg, loc), **(prep.prompt.to_record() if prep.prompt else {})}
        remove_stale_staging(out)
        stage = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{os.getpid()}-", dir=out))
        try:
            records = _run(prep, seg, loc, stage, on_progress, save_figure, warnings, say)
            write_metrics(stage, records, CASE_FIELDS)
            removed = _promote(stage, out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    if removed:
        say("note", f"removed {len(removed)} file(s) an earlier run wrote into {out} that this run does not "
                    f"replace: {', '.join(removed)}")
    return records


#: The lock file of the run writing into an output folder (removed when the run ends).
LOCK_NAME = ".xaiclip.lock"


@contextlib.contextmanager
def claimed_output(out: Path):
    """Create ``out`` if needed and hold its lock while the block runs.

    Another run holding the lock is a ValueError (two runs would mix their files). If the block
    fails, a folder this call created is removed again when nothing was left in it.
    """
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        yield out
    except BaseException:
        _unlock(lock)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()   # only when empty
        raise
    else:
        _unlock(lock)


def _lock(out: Path):
    try:
        import fcntl
    except ImportError:   # Windows: no advisory locks, no check
        return None
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ValueError(f"another xaiclip run is writing into {out}; wait for it to finish or choose another "
                         "--out") from None
    return fd, path


def _unlock(lock) -> None:
    if lock is None:
        return
    import fcntl

    fd, path = lock
    with contextlib.suppress(OSError):
        path.unlink()
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


#: Staging folders are named ``<prefix><pid>-<random>``: a rerun can tell a dead run's from a live one's.
PARTIAL_PREFIX = ".xaiclip-partial-"


def remove_stale_staging(out: Path) -> None:
    """Remove staging folders in ``out`` left by runs that were killed (their process is gone);
    a run still writing into the same folder keeps its own."""
    for stage in out.glob(f"{PARTIAL_PREFIX}*"):
        pid = stage.name[len(PARTIAL_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(stage, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run(prep: PreparedCase, seg, loc, stage: Path, on_progress, save_figure, warnings, say) -> list[dict]:
    case, vol = prep.case, prep.volume
    heat = {}
    roi_vol = np.zeros(vol.data.shape, np.uint8)
    seg_vol = np.zeros(vol.data.shape, np.uint8)
    records = []
    multi = len(prep.slices) > 1
    for n, index in enumerate(prep.slices):
        image, raw, gt, box, roi, score, roi_cost = _slice_inputs(prep, index, seg, loc)
        params = {m: {} for m in case.methods} | dict(case.params)
        params = with_filler_bank(params, vol.data, case.axis, index, _preparation(case))
        gen = iter_explain_slice(seg, image, box, case.methods, prep.modes, roi=roi, gt=gt, score_map=score,
                                 seed=case.seed, params=params, curves=case.curves, warnings=warnings,
                                 roi_cost=roi_cost,
                                 on_warning=lambda w, i=index: say("warning", f"slice {i}: {w}"))
        while True:
            try:
                step = next(gen)
            except StopIteration as stop:
                results = stop.value
                break
            if on_progress is not None:
                on_progress(f"slice {index}: {step.label}", n * step.n_jobs + step.job,
                            len(prep.slices) * step.n_jobs)
        base_mask = results[0].explanation.baseline_mask
        put_slice(seg_vol, case.axis, index, base_mask.astype(np.uint8) * LABEL_VALUE)
        if roi is not None:
            put_slice(roi_vol, case.axis, index, roi.astype(np.uint8) * LABEL_VALUE)
        spacing = [s for a, s in enumerate(vol.spacing) if a != case.axis]
        for r in results:
            ex = r.explanation
            key = heatmap_stem(ex.method, ex.mode)
            heat.setdefault(key, np.zeros(vol.data.shape, np.float32))
            put_slice(heat[key], case.axis, index, ex.heatmap)
            save_figure(stage / figure_name(ex.method, ex.mode, index if multi else None), raw, [
                {"title": f"{ex.method} ({ex.mode}) · slice {index}", "heatmap": ex.heatmap,
                 "roi": ex.roi, "mask": base_mask, "box": box}], spacing=spacing)
            records.append({"case": case.name or Path(case.volume).name, "slice": index, **r.record,
                            **prep.provenance, "roi_source": case.roi if roi is not None else None})
    for key, arr in heat.items():
        write_volume(stage, key, arr, vol)
    write_volume(stage, SEGMENTATION_STEM, seg_vol, vol)
    if roi_vol.any():
        write_volume(stage, ROI_STEM, roi_vol, vol)
    return records


def _promote(stage: Path, out: Path) -> list[str]:
    """Move finished files from the staging folder into ``out`` (each rename is atomic), then remove
    the results of an earlier run that this one did not replace; returns their names.

    Only names of the output scheme (:func:`~napari_xaiclip.outputs.is_result_name`) are removed, so
    the folder's results always belong to one run; other files in ``out`` are never touched.
    """
    new = sorted(f.name for f in stage.iterdir())
    for name in new:
        os.replace(stage / name, out / name)
    removed = []
    for f in sorted(out.iterdir()):
        if f.name not in new and f.is_file() and is_result_name(f.name):
            with contextlib.suppress(OSError):
                f.unlink()
                removed.append(f.name)
    return removed
