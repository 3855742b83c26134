"""A corpus of bad (and borderline) NIfTI files, written into a folder for reliability tests.

Each entry is a :class:`BadFile`: the path, whether the loader must refuse it
(``fragment`` is then a piece of the ``ValueError`` message it must raise) or
accept it with a warning (``warning`` is a piece of that warning), and what a
user would see. ``write_corpus(folder)`` writes them all and returns them in a
stable order; ``CORPUS`` lists the names so tests can parametrise before any
file exists.

Every file is tiny on disk (a few kB at most): huge shapes are claimed by the
header only, never written.

Example
-------
>>> import tempfile
>>> files = write_corpus(tempfile.mkdtemp())
>>> [f.name for f in files][:3]
['truncated-gz', 'text-named-nii', 'empty-file']
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["CORPUS", "BadFile", "header_only_nifti", "write_corpus", "write_one"]

SHAPE = (6, 7, 5)  # small enough that every valid part of the corpus loads in milliseconds


@dataclass(frozen=True)
class BadFile:
    """One file of the corpus.

    ``fragment``: a piece of the ValueError message ``load_volume`` must raise
    (``None`` for a file that loads). ``warning``: a piece of the UserWarning a
    file that loads must give (``None`` when none). ``what``: one line for docs.
    """

    name: str
    path: Path
    fragment: str | None
    warning: str | None
    what: str

    @property
    def refused(self) -> bool:
        return self.fragment is not None


def _volume(shape=SHAPE, dtype=np.float32) -> np.ndarray:
    return (np.arange(int(np.prod(shape))) % 97).reshape(shape).astype(dtype)


def _save(img, path: Path) -> Path:
    nib.save(img, str(path))
    return path


def _truncated_gz(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    img = nib.Nifti1Image(rng.random((20, 20, 20)).astype(np.float32), np.eye(4))
    raw = img.to_bytes()
    buf.write(gzip.compress(raw))
    data = buf.getvalue()
    path = folder / "truncated.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def _text_named_nii(folder: Path) -> Path:
    path = folder / "notes.nii"
    path.write_text("patient notes, not an image\n" * 30)
    return path


def _empty_file(folder: Path) -> Path:
    path = folder / "empty.nii"
    path.write_bytes(b"")
    return path


def _directory(folder: Path) -> Path:
    path = folder / "x.nii"
    path.mkdir()
    return path


def _time_4d(folder: Path) -> Path:
    arr = np.stack([_volume() * (t + 1) for t in range(3)], axis=-1)
    return _save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 2.0, 1.0])), folder / "fmri_4d.nii.gz")


def _vector_4d(folder: Path) -> Path:
    img = nib.Nifti1Image(np.ones(SHAPE + (3,), np.float32), np.eye(4))
    img.header.set_intent("vector")
    return _save(img, folder / "displacement_4d.nii.gz")


def _five_d(folder: Path) -> Path:
    return _save(nib.Nifti1Image(np.ones(SHAPE + (2, 3), np.float32), np.eye(4)), folder / "five_d.nii")


def _zero_affine(folder: Path) -> Path:
    img = nib.Nifti1Image(_volume(), None)
    img.header.set_sform(np.diag([0.0, 0.0, 0.0, 1.0]), code=2)
    img.header.set_qform(None, code=0)
    return _save(img, folder / "zero_affine.nii")


def _rank2_affine(folder: Path) -> Path:
    """sform whose third column is the sum of the first two: rank 2, no inverse."""
    affine = np.eye(4)
    affine[:3, :3] = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    img = nib.Nifti1Image(_volume(), None)
    img.header.set_sform(affine, code=2)
    img.header.set_qform(None, code=0)
    return _save(img, folder / "rank2_affine.nii")


def header_only_nifti(path: Path, shape, dtype=np.float32, nifti2: bool = False,
                      n_data_bytes: int = 64) -> Path:
    """A header claiming ``shape`` followed by only ``n_data_bytes`` of voxel data."""
    header = (nib.Nifti2Header if nifti2 else nib.Nifti1Header)()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_sform(np.eye(4), code=1)
    header.set_qform(np.eye(4), code=1)
    offset = 560 if nifti2 else 352
    header.set_data_offset(offset)
    raw = header.binaryblock
    data = raw + b"\0" * (offset - len(raw)) + bytes(n_data_bytes)
    if str(path).endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def _huge_dim_nifti1(folder: Path) -> Path:
    # NIfTI-1 stores dims as int16: 32767 is the largest a header can claim
    return header_only_nifti(folder / "huge_dim.nii", (32767, 32767, 32767))


def _huge_dim_nifti2(folder: Path) -> Path:
    return header_only_nifti(folder / "huge_dim_n2.nii", (100000, 100000, 100000), nifti2=True)


def _huge_dim_gz(folder: Path) -> Path:
    return header_only_nifti(folder / "huge_dim.nii.gz", (32767, 32767, 32767))


def _rgb(folder: Path) -> Path:
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = 200
    return _save(nib.Nifti1Image(rgb, np.eye(4)), folder / "photo_rgb.nii")


def _garbage_gz(folder: Path) -> Path:
    path = folder / "garbage.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    return path


# (name, writer, message fragment or None, warning fragment or None, description)
_TABLE = [
    ("truncated-gz", _truncated_gz, "truncated", None, "a .nii.gz cut in half"),
    ("text-named-nii", _text_named_nii, "not a readable NIfTI", None, "a text file named .nii"),
    ("empty-file", _empty_file, "not a readable NIfTI", None, "an empty (0-byte) .nii"),
    ("directory", _directory, "is a directory", None, "a directory named x.nii"),
    ("garbage-gz", _garbage_gz, "not a readable NIfTI", None, "a gzip header followed by garbage"),
    ("time-4d", _time_4d, None, "3 time points", "a 4D time series (3 volumes)"),
    ("vector-4d", _vector_4d, "not time", None, "a 4D file with a vector intent (a displacement field)"),
    ("five-d", _five_d, "5D", None, "a 5D file (2 x 3 extra axes)"),
    ("zero-affine", _zero_affine, "not invertible", None, "an all-zero sform affine (qform unset)"),
    ("rank2-affine", _rank2_affine, "not invertible", None, "a rank-2 (singular) sform affine"),
    ("huge-dim", _huge_dim_nifti1, "more than this tool reads", None,
     "NIfTI-1 header claiming 32767^3 voxels, 64 data bytes"),
    ("huge-dim-nifti2", _huge_dim_nifti2, "more than this tool reads", None,
     "NIfTI-2 header claiming 100000^3 voxels, 64 data bytes"),
    ("huge-dim-gz", _huge_dim_gz, "more than this tool reads", None,
     "gzipped header claiming 32767^3 voxels"),
    ("rgb", _rgb, "RGB", None, "an RGB NIfTI (nibabel rgb24 dtype)"),
]

#: Names of the corpus entries, in order.
CORPUS = [row[0] for row in _TABLE]
#: Names of the entries the loader must refuse.
REFUSED = [row[0] for row in _TABLE if row[2] is not None]


def write_one(folder, name: str) -> BadFile:
    """Write one corpus entry into ``folder`` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for row_name, writer, fragment, warning, what in _TABLE:
        if row_name == name:
            return BadFile(name, writer(folder), fragment, warning, what)
    raise KeyError(f"no corpus entry {name!r}; known: {CORPUS}")


def write_corpus(folder) -> list[BadFile]:
    """Write every corpus entry into ``folder`` (each in its own sub-folder so names never clash)."""
    return [write_one(Path(folder) / name, name) for name in CORPUS]


def zip_member_offset(raw: bytes, info: zipfile.ZipInfo) -> int:
    """Where a zip member's bytes start: after its local header (30 bytes, name, extra field)."""
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len
