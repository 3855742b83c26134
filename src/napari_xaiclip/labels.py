"""Label numbers and organ names: the FLARE22 table, users' label tables, label volumes.

No Qt or napari imports: used by the CLI, batch manifests and the widgets alike.

Example
-------
>>> from napari_xaiclip.labels import FLARE22_NAMES, organ_value
>>> organ_value("IVC", FLARE22_NAMES), organ_value("kidney_left", FLARE22_NAMES), organ_value("7", {})
(6, 13, 7)
"""

from __future__ import annotations

import csv
import difflib
import json
import re
import shlex
from pathlib import Path

import numpy as np

__all__ = ["FLARE22_NAMES", "GRID_TOLERANCE", "check_labels_match", "check_same_grid", "describe_labels",
           "label_table", "labels_from_volume", "load_label_volume", "load_organ_labels", "organ_value",
           "read_label_names"]

#: FLARE22 label numbers (13 abdominal organs); the phantom draws 1-5, 11 and 13.
FLARE22_NAMES = {1: "liver", 2: "right kidney", 3: "spleen", 4: "pancreas", 5: "aorta",
                 6: "inferior vena cava", 7: "right adrenal gland", 8: "left adrenal gland", 9: "gallbladder",
                 10: "esophagus", 11: "stomach", 12: "duodenum", 13: "left kidney"}

# Other spellings of a name without its side (after lower-casing and '_'/'-' to spaces).
_SYNONYMS = {"ivc": "inferior vena cava", "vena cava": "inferior vena cava", "inferior vena cava": "inferior vena cava",
             "gall bladder": "gallbladder", "oesophagus": "esophagus", "adrenal": "adrenal gland",
             "suprarenal gland": "adrenal gland", "suprarenal": "adrenal gland", "kidneys": "kidney"}
_SIDES = {"left": "left", "l": "left", "lt": "left", "right": "right", "r": "right", "rt": "right"}
_INT = re.compile(r"^[+-]?\d+$")
_NUMBER_COLUMNS = ("value", "number", "label value", "label number", "id", "index", "label")
_NAME_COLUMNS = ("name", "organ", "label name", "structure", "class")


def _norm(name: str) -> str:
    """Canonical form of an organ name: ``"Kidney_L"`` -> ``"left kidney"``, ``"IVC"`` -> ``"inferior vena cava"``."""
    words = re.sub(r"[\s_-]+", " ", str(name).strip().lower()).split()
    side = None
    if len(words) > 1 and words[0] in _SIDES:
        side, words = _SIDES[words[0]], words[1:]
    elif len(words) > 1 and words[-1] in _SIDES:
        side, words = _SIDES[words[-1]], words[:-1]
    base = " ".join(words)
    base = _SYNONYMS.get(base, base)
    return f"{side} {base}" if side else base


def organ_value(organ, names: dict) -> int:
    """Label number of an organ given by number or by name.

    Parameters
    ----------
    organ : str or int
        A label number (1 or more; need not be in ``names``), or a name matched
        case-insensitively with '_' or '-' for spaces and common synonyms
        ("ivc", "gall bladder", "oesophagus", "kidney left" = "left kidney").
    names : dict
        Label number -> name; when two names coincide the later entry wins.

    Raises
    ------
    ValueError
        For 0 or a negative number (0 is the background), or an unknown name
        (the message lists the known names).
    """
    text = str(organ).strip()
    if _INT.match(text):
        value = int(text)
        if value == 0:
            raise ValueError(f"organ {organ!r}: label 0 is the background (everything outside the organs, it would "
                             "make the whole slice the ROI); give an organ's label number (1 or more) or its name")
        if value < 0:
            raise ValueError(f"organ {organ!r}: label numbers are 1 or more; give an organ's label number or name")
        return value
    index = {_norm(n): int(v) for v, n in names.items()}
    key = _norm(text)
    if key not in index:
        close = difflib.get_close_matches(key, list(index), n=1)
        hint = f" (did you mean {names[index[close[0]]]!r}?)" if close else ""
        known = ", ".join(f"{v} {n}" for v, n in sorted(names.items()) if int(v) > 0)
        raise ValueError(f"unknown organ {organ!r}{hint}; known: {known} (or a label number)")
    value = index[key]
    if value <= 0:
        raise ValueError(f"organ {organ!r} is label {value}, the background; give an organ's name or number")
    return value


# --- label tables ----------------------------------------------------------------------------
def read_label_names(path) -> dict[int, str]:
    """Read a label table: label number -> name.

    Formats
    -------
    CSV: ``number,name`` per line (``;`` or tab also work), an optional header
    line (columns found by name: value/number/id and name/organ, else the first
    two), ``#`` comments. Colour tables: 3D Slicer ``N name R G B A`` and
    ITK-SNAP ``N R G B A VIS MSH "name"`` lines. JSON: ``{"1": "liver", ...}``,
    ``[{"value": 1, "name": "liver"}, ...]``, or an nnU-Net ``dataset.json``
    (``{"labels": {"liver": 1, ...}}``).

    Raises
    ------
    ValueError
        Naming the file and the bad line or entry: missing file, not text,
        a bad number or empty name, a number or name given twice, no labels.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such label table file" if not path.exists() else f"{path}: is not a file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a label table (not UTF-8 text); "
                         "expected CSV number,name lines or JSON") from None
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" or stripped[:1] in ("{", "["):
        entries = _json_entries(path, text)
    else:
        entries = _text_entries(path, text)
    return _check_entries(path, entries)


def _json_entries(path: Path, text: str) -> list[tuple[str, object, object]]:
    """(where, number, name) from a JSON label table."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("labels"), (dict, list)):
        obj = obj["labels"]  # nnU-Net dataset.json
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not _INT.match(str(k).strip()):
                out.append((f"entry {k!r}", v, k))  # {"liver": 1} (nnU-Net v2)
            else:
                out.append((f"entry {k!r}", k, v))
        return out
    if isinstance(obj, list):
        out = []
        for i, item in enumerate(obj):
            if not isinstance(item, dict) or "name" not in item or not ({"value", "label"} & set(item)):
                raise ValueError(f"{path}: JSON entry {i} is {item!r}; expected {{\"value\": N, \"name\": \"...\"}}")
            out.append((f"entry {i}", item.get("value", item.get("label")), item["name"]))
        return out
    raise ValueError(f"{path}: JSON must be an object {{\"1\": \"liver\", ...}} or a list of "
                     "{\"value\": 1, \"name\": \"liver\"} entries")


def _split_line(line: str) -> tuple[list[str], bool]:
    """(cells, is CSV) of one table line: CSV when a comma, semicolon or tab comes before any
    quote, else whitespace tokens (colour tables)."""
    head = line.split('"', 1)[0]
    for delim in (",", ";", "\t"):
        if delim in head:
            return [c.strip() for c in next(csv.reader([line], delimiter=delim, skipinitialspace=True))], True
    try:
        return shlex.split(line), False
    except ValueError:  # an unclosed quote
        return line.split(), False


def _text_entries(path: Path, text: str) -> list[tuple[str, object, object]]:
    """(where, number, name) from a CSV or colour-table label file."""
    out, cols, first = [], (0, 1), True
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells, is_csv = _split_line(line)
        if first and cells and not _INT.match(cells[0]):
            cols = _header_columns(cells)  # a header line
            first = False
            continue
        first = False
        out.append((f"line {n}", *_row_value_name(path, n, line, cells, cols if is_csv or cols != (0, 1) else None)))
    return out


def _header_columns(cells: list[str]) -> tuple[int, int]:
    """(number column, name column) from a header line; the first two columns when not named."""
    heads = [re.sub(r"[\s_-]+", " ", c.strip().lower()) for c in cells]
    num = next((i for i, h in enumerate(heads) if h in _NUMBER_COLUMNS), 0)
    name = next((i for i, h in enumerate(heads) if h in _NAME_COLUMNS and i != num), 1 if num == 0 else 0)
    return num, name


def _row_value_name(path: Path, n: int, line: str, cells: list[str], cols) -> tuple[str, str]:
    """(number text, name) of one data line: ``cols`` (number, name) columns for CSV; None for
    colour-table lines, whose name follows the number (3D Slicer) or comes last after the
    colours (ITK-SNAP)."""
    if len(cells) < 2:
        raise ValueError(f"{path} line {n}: {line.strip()!r} is not 'NUMBER,NAME'")
    if cols is not None:
        if max(cols) >= len(cells):
            raise ValueError(f"{path} line {n}: {line.strip()!r} has no column {max(cols) + 1}")
        return cells[cols[0]], cells[cols[1]]
    rest = cells[1:]
    if _is_number(rest[0]):
        return cells[0], rest[-1]  # ITK-SNAP: N R G B A VIS MSH "name"
    words = []
    for tok in rest:  # 3D Slicer: N name R G B A (or a bare "N name with spaces")
        if _is_number(tok):
            break
        words.append(tok)
    return cells[0], " ".join(words)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _check_entries(path: Path, entries) -> dict[int, str]:
    """Validate (where, number, name) entries into {number: name}."""
    names: dict[int, str] = {}
    where_of: dict[int, str] = {}
    by_name: dict[str, int] = {}
    for where, num, name in entries:
        text = str(num).strip()
        if isinstance(num, bool) or not _INT.match(text) or int(text) < 0:
            raise ValueError(f"{path} {where}: label number {num!r} is not a whole number >= 0")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{path} {where}: label {text} has no name (got {name!r})")
        value, name = int(text), name.strip()
        if value in names:
            raise ValueError(f"{path} {where}: label {value} is already named {names[value]!r} ({where_of[value]})")
        key = _norm(name)
        if key in by_name:
            raise ValueError(f"{path} {where}: name {name!r} is already used by label {by_name[key]}")
        names[value], where_of[value], by_name[key] = name, where, value
    if not names:
        raise ValueError(f"{path}: no labels found; expected 'NUMBER,NAME' lines such as '1,liver'")
    return names


def label_table(path=None) -> dict[int, str]:
    """FLARE22 names updated with a user's table (``path``, optional; see :func:`read_label_names`).

    The user's entries come last, so their names win when both use one name.
    """
    if path is None:
        return dict(FLARE22_NAMES)
    user = read_label_names(path)
    return {**{k: v for k, v in FLARE22_NAMES.items() if k not in user}, **user}


# --- label volumes ---------------------------------------------------------------------------
def labels_from_volume(data, threshold: float | None = None, source: str = "labels") -> np.ndarray:
    """Integer labels from a label volume's voxels.

    Parameters
    ----------
    data : ndarray
        Any shape; integers, or floats holding whole numbers (within 1e-3, as
        NIfTI scaling can leave them).
    threshold : float, optional
        Binarise a score or probability map: 1 where ``data >= threshold``,
        0 elsewhere. Default None: the values must already be labels.
    source : str
        Names the volume in error messages (its file). Default "labels".

    Returns
    -------
    ndarray of int32, the shape of ``data``.

    Raises
    ------
    ValueError
        Non-finite values, non-integer values without a threshold (a
        probability map gets a ``--labels-threshold`` hint), negative values
        (an image given as labels), a bad threshold.
    """
    data = np.asarray(data)
    if threshold is not None:
        t = float(threshold)
        if not np.isfinite(t):
            raise ValueError(f"--labels-threshold must be a finite number, got {threshold!r}")
        return (np.nan_to_num(data.astype(np.float64), nan=-np.inf) >= t).astype(np.int32)
    if data.dtype == bool or np.issubdtype(data.dtype, np.integer):
        labels = data.astype(np.int32)
    else:
        labels = _whole_numbers(data, source)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{source} is not a label volume: it has negative values (down to {int(labels.min())}; "
                         "an image such as a CT?); label numbers are 0 (background) or more")
    return labels


def _whole_numbers(data: np.ndarray, source: str) -> np.ndarray:
    """int32 of float voxels that hold whole numbers (within 1e-3), or ValueError."""
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{source}: holds NaN or infinite values; a label volume holds whole numbers")
    rounded = np.rint(data)
    if data.size and np.max(np.abs(data - rounded)) > 1e-3:
        lo, hi = float(data.min()), float(data.max())
        if lo >= 0.0 and hi <= 1.0:
            raise ValueError(f"{source}: holds values between 0 and 1 that are not all 0 or 1 (a probability "
                             "map?), not integer labels; give --labels-threshold T (e.g. 0.5) to take voxels >= T "
                             "as the organ")
        raise ValueError(f"{source} is not a label volume: it has non-integer values ({lo:g} to {hi:g}), as an "
                         "image such as a CT has; give the label file, or for a score map --labels-threshold T "
                         "to take voxels >= T as the organ")
    return rounded.astype(np.int32)


#: How far the labels may put a voxel from where the image puts it, in voxels of the image's
#: smallest spacing: a tenth of a voxel is far below what moves a label boundary, far above
#: the float32 rounding of affines in NIfTI headers and DICOM-to-NIfTI conversions.
GRID_TOLERANCE = 0.1


def check_labels_match(labels, image, source: str = "labels") -> None:
    """Refuse a label :class:`~napari_xaiclip.io.Volume` that is not on ``image``'s voxel grid.

    Both volumes are in display order, so a label file stored in another axis
    order (LPS beside RAS, say) but covering the same voxels passes.

    Raises
    ------
    ValueError
        Another shape, or voxels placed elsewhere in the patient (another origin,
        spacing or direction; see :func:`check_same_grid`).
    """
    files = (labels.source_affine, image.source_affine)
    shown = files if all(a is not None for a in files) else (None, None)  # the files' own origins, for the user
    check_same_grid(labels.affine, labels.shape, image.affine, image.shape, source, shown=shown)


def check_same_grid(labels_affine, labels_shape, image_affine, image_shape, source: str = "labels",
                    shown=(None, None)) -> None:
    """Refuse labels whose voxel-to-world ``labels_affine`` does not put voxels where ``image_affine`` does.

    The eight corners of the image's grid go through both affines; they must land
    within :data:`GRID_TOLERANCE` of the image's smallest spacing of each other
    (a linear map is furthest apart at a corner, so every voxel then is).
    ``shown``: the affines to describe in the message (the files' own), when not these.
    """
    labels_shape, image_shape = tuple(labels_shape)[-3:], tuple(image_shape)[-3:]
    if labels_shape != image_shape:
        raise ValueError(f"{source}: labels of shape {labels_shape} do not match the image's {image_shape}; "
                         "resample the labels onto the image grid (e.g. in 3D Slicer) first")
    la, ia = np.asarray(labels_affine, float), np.asarray(image_affine, float)
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in image_shape], [1], indexing="ij")).reshape(4, -1)
    gap = float(np.max(np.linalg.norm((la @ corners - ia @ corners)[:3], axis=0)))
    spacing = float(np.min(np.linalg.norm(ia[:3, :3], axis=0)))
    if not gap <= GRID_TOLERANCE * spacing:  # NaN affines fail too
        lab, img = (la if shown[0] is None else shown[0]), (ia if shown[1] is None else shown[1])
        raise ValueError(f"{source}: the labels lie on another grid than the image (labels {_grid_text(lab)}; "
                         f"image {_grid_text(img)}; voxels up to {gap:.3g} mm apart): resample the labels onto "
                         "the image grid (e.g. in 3D Slicer) first")


def _grid_text(affine) -> str:
    from nibabel.orientations import aff2axcodes

    a = np.asarray(affine, float)
    origin = ", ".join(f"{v:.4g}" for v in a[:3, 3])
    spacing = ", ".join(f"{v:.4g}" for v in np.linalg.norm(a[:3, :3], axis=0))
    return f"origin ({origin}) mm, spacing ({spacing}) mm, axes {''.join(aff2axcodes(a))}"


def load_label_volume(path, image, threshold: float | None = None) -> np.ndarray:
    """int32 labels from a label file, checked to lie on ``image``'s grid (a :class:`~napari_xaiclip.io.Volume`).

    ``threshold``: binarise a score map (see :func:`labels_from_volume`).

    Raises
    ------
    ValueError
        Naming the file: missing, unreadable, on another grid than the image
        (:func:`check_labels_match`), or not labels (:func:`labels_from_volume`).
    """
    from .io import load_volume

    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    lab = load_volume(path)
    check_labels_match(lab, image, source=str(path))
    return labels_from_volume(lab.data, threshold, source=str(path))


def load_organ_labels(path, image, organ, names: dict, threshold: float | None = None) -> tuple[np.ndarray, int]:
    """(int32 labels on ``image``'s grid, the organ's value) for ``--labels PATH --organ ORGAN``.

    With ``threshold`` the file is one organ's score map: voxels >= T get the organ's value.
    The one place the CLI, batch manifests and training check a label file against their image.

    Raises
    ------
    ValueError
        As :func:`load_label_volume`; no organ, label 0 (the background) or an
        unknown name (:func:`organ_value`); an organ the file does not hold.
    """
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    if organ is None:
        raise ValueError("--labels needs --organ (a name such as liver, or a label number)")
    value = organ_value(organ, names)
    labels = load_label_volume(path, image, threshold)
    if threshold is not None:
        labels *= value
    if not np.any(labels == value):
        held = (describe_labels(labels, names) if threshold is None
                else f"no voxel >= --labels-threshold {threshold:g}")
        raise ValueError(f"organ {organ!r} (label {value}) is not in {path}; it holds: {held}")
    return labels, value


def describe_labels(labels: np.ndarray, names: dict, limit: int = 20) -> str:
    """The non-zero values in ``labels`` with their names when known: ``"1 liver, 3 spleen, 14"``."""
    values = [int(v) for v in np.unique(labels) if v != 0]
    if not values:
        return "no labels (all voxels are 0)"
    parts = [f"{v} {names[v]}" if v in names else str(v) for v in values[:limit]]
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return ", ".join(parts) + more
