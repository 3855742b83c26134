"""Scan volumes in napari's axis order, with the source geometry kept for saving.

NIfTI is read with nibabel; DICOM (a file or a folder holding a series), NRRD
(.nrrd/.nhdr) and MetaImage (.mha/.mhd) with SimpleITK (:mod:`napari_xaiclip.io_itk`),
then reoriented by the same code, so outputs are always NIfTI in the source's grid.

A :class:`Volume` holds the voxels reoriented for display in the radiological
convention, so that array rows run down the screen in every view: axis 0 runs
superior to inferior (axial slices; superior at the top of coronal and sagittal
views), axis 1 anterior to posterior (rows of an axial slice: anterior at the top;
columns of a sagittal slice: anterior on the left), axis 2 patient right to left
(columns of axial and coronal slices: the patient's right on the screen's left). ``vol.affine`` maps those (z, y, x)
voxel indices to RAS millimetres exactly, oblique files included, and
:func:`save_volume` undoes the reorientation so that a derived array lands
voxel for voxel on the source file in its own orientation.

Example
-------
>>> import numpy as np, tempfile, os
>>> from napari_xaiclip.io import Volume, display_affine, load_volume, save_volume
>>> vol = Volume(np.zeros((4, 5, 6), np.float32), affine=display_affine((2.0, 1.0, 1.0)))
>>> vol.spacing
(2.0, 1.0, 1.0)
>>> d = tempfile.mkdtemp()
>>> save_volume(os.path.join(d, "a.nii.gz"), vol.data + 1, like=vol)
>>> load_volume(os.path.join(d, "a.nii.gz")).data.shape
(4, 5, 6)
"""

from __future__ import annotations

import os
import tempfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DISPLAY_AXCODES",
    "PHANTOM_MARKER",
    "Volume",
    "display_affine",
    "is_nifti_path",
    "is_scan_path",
    "is_phantom_description",
    "load_volume",
    "native_voxels",
    "save_volume",
    "to_source_order",
    "layer_geometry",
    "verify_gzip",
    "volume_from_layer_metadata",
]

#: Direction each napari array axis increases towards (nibabel axis codes).
DISPLAY_AXCODES = ("I", "P", "L")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Largest volume we agree to read (voxels); guards against corrupt headers.
MAX_VOXELS = 2_000_000_000
#: Bytes read, and at most produced, per step of the gzip check: memory stays constant.
GZIP_CHUNK = 1 << 20


@dataclass
class Volume:
    """A 3D scan in napari axis order.

    Attributes
    ----------
    data : (Z, Y, X) ndarray
        Voxels, axis 0 = axial slices (superior to inferior), rows anterior to
        posterior, columns patient right to left. CT in HU (slope/intercept applied).
        In the file's integer type where it holds them exactly (an int16 CT stays
        int16), float32 otherwise; often a reoriented view, not C-contiguous.
    affine : (4, 4) ndarray
        Voxel (z, y, x) to RAS millimetres.
    source_affine, source_shape, source_ornt : geometry of the file it came from
        (``None`` for volumes made in memory); ``save_volume`` writes back into it.
    header : nibabel header of the source file, or ``None``.
    path : where it was read from, if anywhere.
    description : free text of the source (NIfTI ``descrip``); the synthetic phantom
        starts it with :data:`PHANTOM_MARKER`, which is how models trained on the
        phantom know they are applied to something else.
    """

    data: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    source_affine: np.ndarray | None = None
    source_shape: tuple[int, ...] | None = None
    source_ornt: np.ndarray | None = None
    header: Any = None
    path: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data)
        if self.data.ndim != 3:
            raise ValueError(f"a Volume is 3D (z, y, x), got shape {self.data.shape}")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {self.affine.shape}")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along (z, y, x) in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)

    @property
    def translate(self) -> tuple[float, float, float]:
        """napari ``translate`` so world coordinates are RAS rotated into the display axes.

        With ``scale = spacing`` this makes two volumes of the same patient with
        different fields of view line up in napari (exactly for non-oblique files).
        """
        directions = self.affine[:3, :3] / np.asarray(self.spacing)
        return tuple(float(v) for v in directions.T @ self.affine[:3, 3])

    def with_data(self, data: np.ndarray) -> "Volume":
        """A Volume with other voxels of the same shape and the same geometry."""
        data = np.asarray(data)
        if data.shape != self.data.shape:
            raise ValueError(f"expected shape {self.data.shape}, got {data.shape}")
        return Volume(data, self.affine.copy(), self.source_affine, self.source_shape,
                      self.source_ornt, self.header, self.path)

    def to_metadata(self) -> dict:
        """Geometry as plain values, for a napari layer's ``metadata``."""
        return {
            "shape": list(self.data.shape),
            "affine": self.affine.tolist(),
            "source_affine": None if self.source_affine is None else self.source_affine.tolist(),
            "source_shape": None if self.source_shape is None else list(self.source_shape),
            "source_ornt": None if self.source_ornt is None else self.source_ornt.tolist(),
            "source_path": self.path,
            "spacing": list(self.spacing),
            "header": self.header,  # a nibabel header object (in-session only), for exact saving
            "description": self.description,
        }

    @property
    def is_phantom(self) -> bool:
        """True for the synthetic phantom (:func:`napari_xaiclip.phantom.make_phantom`), saved or not."""
        return is_phantom_description(self.description)


#: Start of the description (NIfTI ``descrip``) of every synthetic phantom volume.
PHANTOM_MARKER = "xaiclip synthetic phantom"


def is_phantom_description(text) -> bool:
    return str(text or "").startswith(PHANTOM_MARKER)


def is_nifti_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_scan_path(path: str | os.PathLike) -> bool:
    """A name :func:`load_volume` reads: NIfTI, DICOM (.dcm), NRRD (.nrrd/.nhdr) or MetaImage (.mha/.mhd)."""
    from .io_itk import is_itk_path

    return is_nifti_path(path) or is_itk_path(path)


def _read_with_itk(path: Path) -> bool:
    """Whether ``path`` goes to SimpleITK: a folder, a DICOM/NRRD/MetaImage name, or a file with a DICOM preamble."""
    from .io_itk import is_itk_path, looks_like_dicom_file

    if not path.exists() or is_nifti_path(path):
        return path.is_dir()
    return path.is_dir() or is_itk_path(path) or looks_like_dicom_file(path)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected a NIfTI file")
    if not is_nifti_path(path):
        raise ValueError(f"{path}: not a NIfTI file (expected .nii or .nii.gz; "
                         "or DICOM, NRRD .nrrd/.nhdr, MetaImage .mha/.mhd)")


def _load_image(path: Path):
    import nibabel as nib

    try:
        img = nib.load(str(path), mmap=False)   # read into memory once; no mapped copy beside it
    except Exception as exc:  # nibabel raises many types for bad files
        raise ValueError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{path}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def _reduce_to_3d(img, path: Path, unpacked: int | None = None) -> tuple:
    """Index into ``img.dataobj`` that picks its 3D (or 2D) part, or raise."""
    shape = tuple(int(s) for s in img.shape)
    if any(s <= 0 for s in shape):
        raise ValueError(f"{path}: empty image dimension in shape {shape}")
    if float(np.prod(shape, dtype=np.float64)) > MAX_VOXELS:
        raise ValueError(f"{path}: header claims {shape} voxels, more than this tool reads")
    dtype = img.header.get_data_dtype()
    if dtype.names is not None:
        raise ValueError(f"{path}: RGB/structured voxels are not supported; convert to a grey-level scan")
    if dtype.kind == "c":
        raise ValueError(f"{path}: complex voxels ({dtype}) are not supported; save the magnitude image")
    _check_size(img, path, shape, dtype, unpacked)
    core = shape[:3]
    extra = shape[3:]
    while extra and extra[-1] == 1:
        extra = extra[:-1]
    index = (slice(None),) * len(core) + (0,) * (len(shape) - len(core))
    if not extra:
        return index
    if len(extra) == 1 and _is_time_axis(img):
        warnings.warn(f"{path}: 4D file with {extra[0]} time points; using the first volume",
                      stacklevel=3)
        return index
    raise ValueError(
        f"{path}: {len(shape)}D image of shape {shape}; expected a 3D volume "
        f"(or 4D along time), the extra axes {extra} are not time"
    )


def _check_size(img, path: Path, shape: tuple, dtype, unpacked: int | None) -> None:
    """Refuse a file too short for the voxels its header claims, before anything is allocated.

    ``unpacked``: the uncompressed size of a ``.gz`` file (from :func:`verify_gzip`), else None.
    """
    claimed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize + int(img.header.get_data_offset())
    size = path.stat().st_size if unpacked is None else unpacked
    if size < claimed:
        held = "the file has" if unpacked is None else "the file decompresses to"
        raise ValueError(f"{path}: truncated: the header claims {shape} voxels ({claimed} bytes) "
                         f"but {held} {size} bytes")


def verify_gzip(path: str | os.PathLike) -> int:
    """Decompress a whole gzip file so zlib checks every member's CRC32 and length; returns the bytes it holds.

    nibabel stops reading once it has the voxels and never reaches the trailer, so a
    flipped bit would otherwise give altered voxels silently. Members follow each
    other as ``cat a.gz b.gz`` makes them; zero padding after the last is allowed.

    Raises
    ------
    ValueError
        ``"<path> is a corrupted gzip file (<cause>): ..."`` for a CRC or length
        mismatch, a truncated stream, or bytes that are not gzip.
    """
    total, members = 0, 0
    try:
        with open(path, "rb") as fh:
            pending = b""
            while True:
                pending = pending or fh.read(GZIP_CHUNK)
                if not pending:
                    break
                if members:
                    pending = pending.lstrip(b"\0")  # zero padding after a member, as tape archives leave
                    if not pending:
                        continue
                size, pending = _gzip_member(fh, pending)
                total, members = total + size, members + 1
    except (zlib.error, EOFError) as exc:
        raise ValueError(f"{path} is a corrupted gzip file ({_gzip_cause(exc)}): not a readable NIfTI file; "
                         "copy or export it again") from None
    if not members:
        raise ValueError(f"{path} is a corrupted gzip file (it is empty): not a readable NIfTI file")
    return total


def _gzip_member(fh, pending: bytes) -> tuple[int, bytes]:
    """Decompress the member starting at ``pending``: (its uncompressed size, the bytes after it)."""
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    size = 0
    while not d.eof:
        if not pending:
            pending = fh.read(GZIP_CHUNK)
            if not pending:
                raise EOFError("truncated: the stream ends before its gzip trailer")
        size += len(d.decompress(pending, GZIP_CHUNK))
        pending = d.unconsumed_tail
    return size, d.unused_data + pending


def _gzip_cause(exc: Exception) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("Error ") and ": " in text else text


def _is_time_axis(img) -> bool:
    """A 4th axis counts as time unless the header declares a vector/other intent."""
    intent = img.header.get_intent()[0]
    return intent in ("none", "time series", "")


def load_volume(path: str | os.PathLike, series: str | None = None) -> Volume:
    """Read a scan into a :class:`Volume` in display orientation.

    Parameters
    ----------
    path : str or PathLike
        A 2D, 3D or 4D NIfTI file (2D files become one slice; 4D files with a
        time axis give their first volume, with a warning); a DICOM file; a
        folder holding a DICOM series; an NRRD (.nrrd/.nhdr) or MetaImage
        (.mha/.mhd) file. DICOM CT is in HU (RescaleSlope/Intercept applied) and
        ``description`` starts with ``"DICOM <Modality>"``.
    series : SeriesInstanceUID of the series to load from a folder holding several
        (the error for such a folder lists them).

    Returns
    -------
    Volume
        ``data`` (z, y, x), scaled by ``scl_slope``/``scl_inter``: the file's integer type
        where the scaled values fit it (or int16/int32), float32 otherwise.

    Raises
    ------
    ValueError
        Missing, non-NIfTI, corrupt or unsupported files, with the reason.
    """
    path = Path(path)
    if _read_with_itk(path):
        from .io_itk import read_itk

        raw = read_itk(path, series=series, max_voxels=MAX_VOXELS)
        _check_affine(raw.affine, path)
        return _to_display(raw.data, raw.affine, path, None, raw.description)
    if series is not None:
        raise ValueError(f"{path}: series= chooses a series in a DICOM folder; this is not one")
    _check_readable(path)
    unpacked = verify_gzip(path) if str(path).lower().endswith(".gz") else None
    img = _load_image(path)
    index = _reduce_to_3d(img, path, unpacked)
    affine = np.asarray(img.affine, dtype=np.float64)
    _check_affine(affine, path)
    try:
        data = _read_voxels(img.dataobj, index)
    except Exception as exc:
        raise ValueError(f"{path}: could not read the voxels ({type(exc).__name__}: {exc}); "
                         "the file may be truncated") from None
    if data.ndim == 2:
        data = data[:, :, None]
    header = img.header.copy()
    return _to_display(data, affine, path, header, _descrip(header))


def _read_voxels(proxy, index: tuple) -> np.ndarray:
    """The voxels at ``index`` in the file's own integer type where the scaling allows, else float32.

    A CT stored as int16 with slope 1 and a whole-number intercept stays int16 (half the memory of
    float32; every value exact). Only slices being explained are converted to float32, one at a time.
    """
    slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    if slope == 1.0 and inter == 0.0:
        return native_voxels(np.asarray(proxy[index]))
    if slope == 1.0 and inter.is_integer() and np.dtype(proxy.dtype).kind in "iu":
        shifted = _shift_integers(_own_part(np.asarray(proxy.get_unscaled()), index), int(inter))
        if shifted is not None:
            return shifted
    return np.asarray(proxy[index], dtype=np.float32)


def native_voxels(data: np.ndarray) -> np.ndarray:
    """Integers (booleans as uint8) kept as they are; any float type as float32."""
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype.kind in "iu" and data.dtype.itemsize <= 4:
        return data
    return data.astype(np.float32, copy=False)


def _own_part(array: np.ndarray, index: tuple) -> np.ndarray:
    """``array[index]``, writable, not keeping the rest of ``array`` (a 4D file's other volumes) alive."""
    part = array[index]
    return part.copy() if part.size < array.size or not part.flags.writeable else part


def _shift_integers(raw: np.ndarray, inter: int) -> np.ndarray | None:
    """``raw + inter`` in the narrowest of (raw's type, int16, int32) that holds it; None if none does."""
    lo, hi = int(raw.min()) + inter, int(raw.max()) + inter
    for dtype in (raw.dtype, np.dtype(np.int16), np.dtype(np.int32)):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max and dtype.itemsize >= raw.dtype.itemsize:
            out = raw if dtype == raw.dtype else raw.astype(dtype)
            out += np.asarray(inter, dtype)
            return out
    return None


def _check_affine(affine: np.ndarray, path: Path) -> None:
    # singular relative to its own scale: 1e-5 mm voxels are valid, a rank-2 matrix is not
    sv = np.linalg.svd(affine[:3, :3], compute_uv=False) if np.all(np.isfinite(affine)) else np.zeros(3)
    if not sv[-1] > 0 or sv[-1] < 1e-8 * sv[0]:
        raise ValueError(f"{path}: the voxel-to-world affine is not invertible:\n{affine}")


def _to_display(data: np.ndarray, affine: np.ndarray, path: Path, header, description: str) -> Volume:
    """Voxels in the file's own axis order plus its RAS affine -> a Volume in display order."""
    from nibabel import orientations as ornt

    src_ornt = ornt.io_orientation(affine)
    transform = ornt.ornt_transform(src_ornt, ornt.axcodes2ornt(DISPLAY_AXCODES))
    # flips and a transpose: a view of the voxels as read, not a second copy of the volume
    display = ornt.apply_orientation(native_voxels(data), transform)
    display_affine = affine @ ornt.inv_ornt_aff(transform, data.shape)
    return Volume(display, display_affine, affine, tuple(data.shape), transform, header, str(path),
                  description=description)


def _descrip(header) -> str:
    try:
        raw = header["descrip"]
        return (raw.item() if hasattr(raw, "item") else raw).decode("latin-1").strip("\x00 ")
    except (KeyError, ValueError, AttributeError):
        return ""


def _back_to_source(array: np.ndarray, like: Volume) -> np.ndarray:
    from nibabel import orientations as ornt

    if like.source_ornt is None:
        return array
    inverse = ornt.ornt_transform(ornt.axcodes2ornt(DISPLAY_AXCODES), _orientation_of(like))
    return ornt.apply_orientation(array, inverse)


def to_source_order(array: np.ndarray, like: Volume) -> np.ndarray:
    """A (z, y, x) display-order array put back into ``like``'s source file's axis order and shape."""
    out = _back_to_source(np.asarray(array), like)
    if like.source_shape is not None and len(like.source_shape) == 3:
        out = out.reshape(like.source_shape)
    return out


def _orientation_of(like: Volume) -> np.ndarray:
    from nibabel import orientations as ornt

    return ornt.io_orientation(like.source_affine)


def save_volume(path: str | os.PathLike, array: np.ndarray, like: Volume | None = None,
                affine: np.ndarray | None = None) -> None:
    """Write a (z, y, x) array as NIfTI in ``like``'s source geometry, atomically.

    The array is put back into the source file's own axis order and written with
    its affine and header, so it overlays the source voxel for voxel in 3D Slicer
    or ITK-SNAP. Integer arrays are written as integer labels, everything else as
    float32. The file appears only once complete (temporary name, then rename).

    Parameters
    ----------
    path : .nii or .nii.gz destination.
    array : (Z, Y, X) ndarray in napari order, shaped like ``like.data``.
    like : the Volume the array derives from. Without it, ``affine`` (or identity)
        is used with the array written as is.

    Raises
    ------
    ValueError
        Bad path suffix or a shape that does not match ``like``.
    """
    import nibabel as nib

    path = Path(path)
    if not is_nifti_path(path):
        raise ValueError(f"{path}: NIfTI output needs a .nii or .nii.gz name")
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D (z, y, x) array, got shape {array.shape}")
    if like is not None and array.shape != like.data.shape:
        raise ValueError(f"array shape {array.shape} does not match the volume's {like.data.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32)
    elif array.dtype == np.int64 or array.dtype == np.uint64:
        array = array.astype(np.int32)
    if like is not None and like.source_affine is not None:
        out = to_source_order(array, like)
        out_affine = like.source_affine
        header = like.header.copy() if like.header is not None else None
    else:
        out = array
        out_affine = like.affine if like is not None else (np.eye(4) if affine is None else affine)
        header = None
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = image_class(np.ascontiguousarray(out), out_affine, header=_clean_header(header))
    img.set_data_dtype(out.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    if header is None:
        img.set_qform(out_affine, code=1)
        img.set_sform(out_affine, code=1)
    if like is not None and like.description:
        img.header["descrip"] = like.description.encode("latin-1", "replace")[:79]
    _atomic_write(path, lambda tmp: nib.save(img, tmp))


def _clean_header(header):
    """The source header minus what no longer applies (4D dims, intent, scaling)."""
    if header is None:
        return None
    import nibabel as nib

    if not isinstance(header, (nib.Nifti1Header, nib.Nifti2Header)):
        header = nib.Nifti1Header.from_header(header)
    header.set_intent("none")
    return header


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and rename into place; never leave a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else "".join(path.suffixes[-1:]) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        _fsync(tmp)  # the bytes are on disk before the name points at them (a crash leaves old or new)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _fsync(path) -> None:
    """Flush a file or folder to disk; best effort where the file system does not allow it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to ``path`` through a temporary file and a rename."""
    path = Path(path)

    def write(tmp):
        with open(tmp, "wb") as fh:
            fh.write(data)

    _atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def layer_geometry(vol: Volume) -> dict:
    """napari layer keyword arguments (scale, translate, metadata) for a volume."""
    return {
        "scale": vol.spacing,
        "translate": vol.translate,
        "metadata": {"xaiclip_geometry": vol.to_metadata()},
    }


def display_affine(spacing, translate=(0.0, 0.0, 0.0)) -> np.ndarray:
    """RAS affine of a volume in display axes (I, P, L) with napari ``scale`` and ``translate``.

    Inverse of :attr:`Volume.translate` for axis-aligned volumes: world
    coordinates along the display axes are (-S, -A, -R).
    """
    s = np.asarray(spacing, float)[-3:]
    t = np.asarray(translate, float)[-3:]
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = -s[0], -s[1], -s[2], 1.0
    affine[:3, 3] = [-t[2], -t[1], -t[0]]
    return affine


def volume_from_layer_metadata(data: np.ndarray, metadata: dict | None,
                               scale=None, translate=None) -> Volume:
    """Rebuild a Volume's geometry from a layer's metadata (or from its scale and translate alone)."""
    geometry = (metadata or {}).get("xaiclip_geometry")
    data = np.asarray(data)
    if geometry is None:
        spacing = np.ones(3) if scale is None else scale
        return Volume(data, display_affine(spacing, (0.0, 0.0, 0.0) if translate is None else translate))
    src = geometry.get("source_affine")
    shape = geometry.get("source_shape")
    src_ornt = geometry.get("source_ornt")
    return Volume(
        data,
        np.asarray(geometry["affine"]),
        None if src is None else np.asarray(src),
        None if shape is None else tuple(shape),
        None if src_ornt is None else np.asarray(src_ornt),
        geometry.get("header"),
        geometry.get("source_path"),
        geometry.get("description") or "",
    )
