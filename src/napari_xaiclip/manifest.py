"""The ``xaiclip batch`` manifest: a CSV file with one explanation job per row.

Columns (:data:`MANIFEST_COLUMNS`; only ``volume`` is required): case, volume,
labels, organ, label_names (a label table file), labels_threshold (binarise a
probability map), box ("x0 y0 x1 y1"), slices ("N" or "A:B"), axis, prompt, roi,
methods, modes, model, localizer, seed, params ("rise.n_samples=500;..."),
preprocess, curves, box_margin, roi_margin, prompt_match. Relative paths resolve against
the manifest's folder. Errors in the manifest itself raise
:class:`ManifestError`; problems with one case's data are kept on its row.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .io import is_scan_path
from .jobs import ROI_SOURCES, Case, organ_value, parse_slices
from .pipeline import expand_modes

__all__ = ["MANIFEST_COLUMNS", "BatchRow", "ManifestError", "read_manifest"]

#: Manifest columns (``volume`` required; the last four are extensions of the issue's list).
MANIFEST_COLUMNS = ("case", "volume", "labels", "organ", "label_names", "labels_threshold", "box", "slices", "axis",
                    "prompt", "roi", "methods",
                    "modes", "model", "localizer", "seed", "params", "preprocess", "curves", "box_margin",
                    "roi_margin", "prompt_match")
MAX_CASE_ID = 100  # folder names are limited to 255 bytes; leave room for suffixes
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ManifestError(ValueError):
    """The manifest cannot be used at all (exit status 2, nothing written)."""


@dataclass
class BatchRow:
    """One manifest row: its line number, case id, the job, and an error found before running."""

    line: int
    case_id: str
    case: Case
    error: str | None = None


# --- manifest --------------------------------------------------------------
def _split(text: str) -> list[str]:
    return [t for t in re.split(r"[;,\s]+", text.strip()) if t]


def _resolve(base: Path, text: str) -> str:
    p = Path(text).expanduser()
    return os.path.abspath(p if p.is_absolute() else base / p)


def _parse_row(values: dict, base: Path) -> tuple[str | None, Case]:
    """Case from a row's non-empty values; ValueError names the column."""
    from .explain.registry import parse_params
    from .explain.registry import check_run, get_method
    from .preprocess import PRESETS

    def choice(col, allowed, default):
        v = values.get(col, default)
        if v not in allowed:
            raise ValueError(f"{col} {v!r} is not one of {', '.join(allowed)}")
        return v

    def integer(col, default):
        try:
            return int(values.get(col, default))
        except ValueError:
            raise ValueError(f"{col} must be an integer, got {values[col]!r}") from None

    if "volume" not in values:
        raise ValueError("volume is empty")
    kw: dict = {"volume": _resolve(base, values["volume"])}
    for col in ("labels", "label_names"):
        if col in values:
            kw[col] = _resolve(base, values[col])
    if "labels_threshold" in values:
        try:
            kw["labels_threshold"] = float(values["labels_threshold"])
        except ValueError:
            raise ValueError(f"labels_threshold must be a number, got {values['labels_threshold']!r}") from None
    for col in ("organ", "prompt", "model", "localizer"):
        if col in values:
            kw[col] = values[col]
    if "box" in values:
        try:
            box = tuple(float(v) for v in _split(values["box"]))
        except ValueError:
            box = ()
        if len(box) != 4:
            raise ValueError(f"box must be four numbers 'X0 Y0 X1 Y1', got {values['box']!r}")
        kw["box"] = box
    if "slices" in values:
        kw["slices"] = parse_slices(values["slices"])
    kw["axis"] = int(choice("axis", ("0", "1", "2"), "0"))
    kw["roi"] = choice("roi", ROI_SOURCES, "localizer")
    kw["prompt_match"] = choice("prompt_match", ("exact", "similar"), "exact")
    kw["preprocess"] = choice("preprocess", tuple(PRESETS), "none")
    kw["curves"] = choice("curves", ("yes", "no", "true", "false", "1", "0"), "yes") in ("yes", "true", "1")
    kw["seed"] = integer("seed", 0)
    kw["box_margin"] = integer("box_margin", 0)
    if "roi_margin" in values:
        kw["roi_margin"] = integer("roi_margin", 0)
    if "methods" in values:
        kw["methods"] = _split(values["methods"])
        for m in kw["methods"]:
            try:
                get_method(m)
            except ValueError as err:
                raise ValueError(f"methods: {err}") from None
    if "modes" in values:
        kw["modes"] = expand_modes(_split(values["modes"]))
    if "params" in values:
        try:
            kw["params"] = check_run(kw.get("methods", ["occlusion"]), parse_params(_split(values["params"])))
        except ValueError as err:
            raise ValueError(f"params: {err}") from None
    case_id = values.get("case")
    if case_id is not None and len(case_id) > MAX_CASE_ID:
        raise ValueError(f"case id of {len(case_id)} characters: at most {MAX_CASE_ID} (it names a folder)")
    if case_id is not None and not _CASE_ID.match(case_id):
        raise ValueError(f"case id {case_id!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    return case_id, Case(**kw)


def _default_id(volume: str) -> str:
    name = Path(volume).name
    stem = re.sub(r"\.(nii|nii\.gz)$", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip("._") or "case"


def read_manifest(path) -> list[BatchRow]:
    """Parse and check a manifest; paths resolve against its folder.

    Lines starting with ``#`` and blank lines are skipped. Cell values are
    stripped; empty cells take the :class:`~napari_xaiclip.jobs.Case` defaults.

    Raises
    ------
    ManifestError
        Missing, unreadable or empty file, no ``volume`` column, unknown or
        repeated columns, no rows. A row that does not parse (a bad value,
        too many values, a repeated case id) is returned with its ``error``
        set (naming the line and column) and fails alone.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file" if not path.exists() else f"{path}: is not a file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not a CSV text file (it is not UTF-8 text)") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise ManifestError(f"{path}: empty manifest; expected a header line such as 'case,volume,labels,organ'")
    try:
        parsed = list(csv.reader(io.StringIO("\n".join(line for _, line in lines))))
    except csv.Error as exc:
        raise ManifestError(f"{path}: not a valid CSV file ({exc})") from None
    header = [h.strip().lower() for h in parsed[0]]
    if "volume" not in header:
        raise ManifestError(f"{path}: no 'volume' column in the header {parsed[0]}; is this a CSV manifest?")
    unknown = [h for h in header if h not in MANIFEST_COLUMNS]
    if unknown:
        raise ManifestError(f"{path}: unknown column(s) {unknown}; known: {', '.join(MANIFEST_COLUMNS)}")
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise ManifestError(f"{path}: column(s) {dup} appear more than once")
    if len(parsed) == 1:
        raise ManifestError(f"{path}: the manifest has a header but no cases")
    rows, seen = [], {}
    for (line, _), cells in zip(lines[1:], parsed[1:]):
        values = {h: c.strip() for h, c in zip(header, cells) if c.strip()}
        try:
            if len(cells) > len(header):
                raise ValueError(f"{len(cells)} values for {len(header)} columns")
            case_id, case = _parse_row(values, path.resolve().parent)
            case_id = case_id or _default_id(case.volume)
            if case_id in seen:
                raise ValueError(f"case id {case_id!r} is already used on line {seen[case_id]}; "
                                 "add a 'case' column with unique ids")
        except ValueError as exc:   # this row fails alone; the others run
            rows.append(_unreadable_row(line, values, f"{path.name} line {line}: {exc}"))
            continue
        seen[case_id] = line
        case.name = case_id
        rows.append(BatchRow(line, case_id, case, _precheck(case)))
    return rows


def _unreadable_row(line: int, values: dict, error: str) -> BatchRow:
    """A row that does not parse: it fails under the id ``line<N>`` (its own id may be the problem, and
    must never match a case an earlier run finished) with the message naming the line."""
    case_id = f"line{line}"
    return BatchRow(line, case_id, Case(volume=values.get("volume", ""), name=case_id), error)


def _precheck(case: Case) -> str | None:
    """Problems found without reading voxels (the rest surfaces in the task)."""
    from .labels import label_table

    for what, p in (("volume", case.volume), ("labels", case.labels)):
        if p is None:
            continue
        if not Path(p).exists():
            return f"{what} {p}: no such file"
        if Path(p).is_file() and not is_scan_path(p):
            return f"{what} {p}: not a volume file (expected NIfTI .nii/.nii.gz, DICOM, NRRD or MetaImage)"
    if case.label_names is not None and not Path(case.label_names).is_file():
        return f"label_names {case.label_names}: no such file"
    if (case.labels is None) != (case.organ is None):
        return "labels and organ go together: give both or neither"
    if case.labels is None and (case.label_names is not None or case.labels_threshold is not None):
        return "label_names and labels_threshold need labels"
    if case.organ is not None:
        try:
            organ_value(case.organ, label_table(case.label_names))
        except ValueError as exc:
            return str(exc)
    if case.box is None and case.labels is None:
        return "give a box or labels with an organ"
    return None
