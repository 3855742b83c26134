"""DICOM (a file or a series folder), NRRD and MetaImage through SimpleITK.

Every format ends up as what :func:`napari_xaiclip.io.load_volume` needs to
treat it exactly like NIfTI: the voxels in ITK index order (i, j, k) and the
RAS affine of that index order. ITK geometry (direction, origin, spacing) is in
LPS millimetres, so ``RAS = diag(-1, -1, 1) @ LPS``; the reorientation into the
display axes is then the same code as for NIfTI, and ``save_volume(like=vol)``
writes NIfTI outputs in the source's own voxel grid.

DICOM is checked against its own tags (read with pydicom) before it is trusted:
the slice positions of a series, or the per-frame positions of an enhanced
multi-frame file, must be what SimpleITK's geometry predicts, else the file is
refused with the reason rather than shown in the wrong place. SimpleITK and
pydicom are imported inside the functions so that importing this module (from
the napari reader hook) stays cheap.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ITK_SUFFIXES", "RawImage", "SeriesInfo", "SeveralSeries", "folder_has_dicom", "is_itk_path",
           "is_nrrd_path", "looks_like_dicom_file", "read_itk", "write_itk"]

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
META_SUFFIXES = (".mha", ".mhd")
ITK_SUFFIXES = DICOM_SUFFIXES + NRRD_SUFFIXES + META_SUFFIXES
#: LPS (ITK, DICOM) to RAS (NIfTI, this package).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: DICOM objects with pixels that are not a scan of the patient.
NOT_SCANS = {
    "SEG": "a segmentation (DICOM SEG), not a scan",
    "RTDOSE": "an RT dose grid, not a scan",
    "RTSTRUCT": "RT structures (contours), not a scan",
}


@dataclass
class RawImage:
    """Voxels in ITK index order (i, j, k) and the RAS affine of that order."""

    data: np.ndarray
    affine: np.ndarray
    description: str = ""


def is_itk_path(path) -> bool:
    """A name this module reads (DICOM, NRRD, MetaImage suffix)."""
    return str(path).lower().endswith(ITK_SUFFIXES)


def looks_like_dicom_file(path) -> bool:
    """A file with the DICOM preamble ('DICM' at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def folder_has_dicom(folder, limit: int = 64) -> bool:
    """Whether one of the first ``limit`` files of ``folder`` looks like DICOM (cheap, for the reader hook)."""
    try:
        with os.scandir(folder) as entries:
            for n, entry in enumerate(entries):
                if n >= limit:
                    break
                if entry.is_file() and (entry.name.lower().endswith(DICOM_SUFFIXES)
                                        or looks_like_dicom_file(entry.path)):
                    return True
    except OSError:
        return False
    return False


def read_itk(path, series: str | None = None, max_voxels: int = 2_000_000_000) -> RawImage:
    """Read a DICOM file or series folder, NRRD or MetaImage; ValueError with the reason if not."""
    path = Path(path)
    if path.is_dir():
        return _read_dicom_folder(path, series, max_voxels)
    if series is not None:
        raise ValueError(f"{path}: series= chooses a series in a DICOM folder; this is a single file")
    name = str(path).lower()
    if name.endswith(NRRD_SUFFIXES):
        return _read_plain(path, "NRRD", max_voxels)
    if name.endswith(META_SUFFIXES):
        return _read_plain(path, "MetaImage", max_voxels)
    return _read_dicom_file(path, max_voxels)


# --------------------------------------------------------------------------- SimpleITK helpers


def _itk_message(exc: Exception) -> str:
    """The useful line of an ITK exception (they run over many lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("Description:"):
            return ln[len("Description:"):].strip()
    for ln in reversed(lines):
        if not ln.startswith(("sitk::ERROR", "itk::ERROR")) or len(lines) == 1:
            return ln[:300]
    return lines[-1][:300] if lines else type(exc).__name__


class _quiet_itk:
    """Keep ITK's warnings (printed on stderr) out of the terminal while reading."""

    def __enter__(self):
        import SimpleITK as sitk

        self.was = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)

    def __exit__(self, *exc):
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalWarningDisplay(self.was)
        return False


def _check_info(path: Path, kind: str, dim: int, size, components: int, max_voxels: int) -> None:
    size = tuple(int(s) for s in size)
    if components != 1:
        raise ValueError(f"{path}: {components} components per voxel (RGB or vector {kind}); "
                         "expected a grey-level scan")
    if any(s <= 0 for s in size):
        raise ValueError(f"{path}: empty image dimension in shape {size}")
    if float(np.prod(size, dtype=np.float64)) > max_voxels:
        raise ValueError(f"{path}: header claims {size} voxels, more than this tool reads")
    if dim not in (2, 3) and not (dim == 4 and size[3] == 1):
        raise ValueError(f"{path}: {dim}D {kind} image of shape {size}; expected a 3D volume")


def _narrowest(array: np.ndarray) -> np.ndarray:
    """int32 voxels as int16 when they fit (GDCM widens int16 CT with an intercept to int32)."""
    if array.dtype != np.int32 or not array.size:
        return array
    info = np.iinfo(np.int16)
    return array.astype(np.int16) if info.min <= array.min() and array.max() <= info.max else array


def _to_raw(img, description: str = "") -> RawImage:
    """SimpleITK image (2D, 3D, or 4D with one volume) -> voxels (i, j, k) and RAS affine."""
    import SimpleITK as sitk

    dim = img.GetDimension()
    from .io import native_voxels

    array = _narrowest(native_voxels(sitk.GetArrayFromImage(img)))  # (k, j, i) or (j, i); owns its memory
    direction = np.asarray(img.GetDirection(), float).reshape(dim, dim)
    spacing = np.asarray(img.GetSpacing(), float)
    origin = np.asarray(img.GetOrigin(), float)
    if dim == 4:
        array, direction, spacing, origin = array[0], direction[:3, :3], spacing[:3], origin[:3]
    if dim == 2:
        array = array[None]
        d3 = np.eye(3)
        d3[:2, :2] = direction
        direction, spacing, origin = d3, np.append(spacing, 1.0), np.append(origin, 0.0)
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing[None, :]
    lps[:3, 3] = origin
    # a view, and so is the reorientation into display order: no second copy of the volume
    return RawImage(array.transpose(2, 1, 0), LPS_TO_RAS @ lps, description)


def _read_plain(path: Path, kind: str, max_voxels: int) -> RawImage:
    import SimpleITK as sitk

    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a readable {kind} file ({_itk_message(exc)})") from None
    _check_info(path, kind, reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents(), max_voxels)
    reader.SetOutputPixelType(sitk.sitkUnknown)   # the file's own type; native_voxels narrows floats to float32
    try:
        with _quiet_itk():
            img = reader.Execute()
    except RuntimeError as exc:
        raise ValueError(f"{path}: could not read the voxels ({_itk_message(exc)}); "
                         "the file (or its data file) may be truncated or missing") from None
    return _to_raw(img, "")


# --------------------------------------------------------------------------- DICOM


def _header(path: Path):
    """pydicom dataset without pixels, or ValueError naming the file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except InvalidDicomError:
        pass
    except Exception as exc:
        raise ValueError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    try:  # DICOM written without the 128-byte preamble and file meta (older software)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
        if "SOPClassUID" in ds and ("Modality" in ds or "Rows" in ds):
            return ds
    except Exception:
        pass
    raise ValueError(f"{path}: not a DICOM file (no DICOM header)")


def _describe(ds) -> str:
    modality = str(ds.get("Modality", "") or "").strip() or "OT"
    text = str(ds.get("SeriesDescription", "") or "").strip()
    return f"DICOM {modality} {text}".strip()


def _sop_name(ds) -> str:
    uid = ds.get("SOPClassUID")
    name = getattr(uid, "name", "") if uid is not None else ""
    return name or str(uid or "unknown SOP class")


def _check_kind(path: Path, ds) -> None:
    """Refuse DICOM objects that are not a grey-level image of the patient, naming what they are."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS or modality == "SEG":
        raise ValueError(f"{path}: DICOM {NOT_SCANS['SEG']} ({_sop_name(ds)}); open the image series it annotates")
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError(f"{path}: DICOM {modality or 'object'} ({_sop_name(ds)}) holds no pixel data; "
                         "expected an image (CT, MR, ...)")
    if modality in NOT_SCANS:
        raise ValueError(f"{path}: DICOM {modality} is {NOT_SCANS[modality]} ({_sop_name(ds)})")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        photometric = str(ds.get("PhotometricInterpretation", "") or "colour")
        raise ValueError(f"{path}: colour DICOM ({photometric}, {samples} samples per pixel); "
                         "expected a grey-level scan")


def _check_syntax(path: Path, ds) -> None:
    """Refuse compressed syntaxes SimpleITK's GDCM decodes wrongly without raising (seen: 12-bit JPEG)."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if str(ts or "") == "1.2.840.10008.1.2.4.51" and int(ds.get("BitsStored", 8) or 8) > 8:
        raise ValueError(f"{path}: compressed DICOM ({ts.name}, {int(ds.BitsStored)}-bit) that SimpleITK "
                         "cannot decode; decompress it first (e.g. gdcmconv --raw or dcmdjpeg)")


def _syntax_error(path: Path, ds, exc: Exception) -> ValueError:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is not None and getattr(ts, "is_compressed", False):
        return ValueError(f"{path}: compressed DICOM ({ts.name or ts}) that SimpleITK cannot decode; "
                          "decompress it first (e.g. gdcmconv --raw or dcmdjpeg)")
    return ValueError(f"{path}: could not read the DICOM pixels ({_itk_message(exc)})")


def _frames(ds) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def _read_dicom_file(path: Path, max_voxels: int) -> RawImage:
    import SimpleITK as sitk

    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    ds = _header(path)
    _check_kind(path, ds)
    _check_syntax(path, ds)
    frames = _frames(ds)
    expected = None
    if frames > 1:
        expected = _enhanced_geometry(path, ds, frames)
    size = (int(ds.Columns), int(ds.Rows), frames)
    _check_info(path, "DICOM", 3, size, 1, max_voxels)
    try:
        with _quiet_itk():
            img = sitk.ReadImage(str(path), _pixel_type([ds]))
    except RuntimeError as exc:
        raise _syntax_error(path, ds, exc) from None
    if img.GetDimension() == 3 and img.GetSize()[2] != frames:
        raise ValueError(f"{path}: SimpleITK read {img.GetSize()[2]} frames, the header says {frames}")
    if expected is not None:
        _check_positions(path, img, *expected, what="frame")
    return _to_raw(img, _describe(ds))


def _pixel_type(headers) -> int:
    """SimpleITK's output type: integers where every slice's rescale keeps values whole
    (slope 1, whole intercept: the usual CT), float32 otherwise."""
    import SimpleITK as sitk

    for ds in headers:
        try:
            slope, inter = float(ds.get("RescaleSlope") or 1), float(ds.get("RescaleIntercept") or 0)
        except (TypeError, ValueError):
            return sitk.sitkFloat32
        if slope != 1.0 or not inter.is_integer():
            return sitk.sitkFloat32
    return sitk.sitkUnknown


def _enhanced_geometry(path: Path, ds, frames: int):
    """Per-frame (row, column) directions, pixel spacing and positions of an enhanced multi-frame file."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame or len(per_frame) != frames:
        raise ValueError(f"{path}: multi-frame DICOM ({frames} frames) without per-frame positions "
                         "(not an enhanced CT/MR volume); its 3D geometry is unknown")
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]

    def item(group, name):
        for source in (group, shared):
            seq = source.get(name) if source is not None else None
            if seq:
                return seq[0]
        return None

    positions, orientations, spacings = [], [], []
    for group in per_frame:
        pos, ori, meas = (item(group, n) for n in ("PlanePositionSequence", "PlaneOrientationSequence",
                                                   "PixelMeasuresSequence"))
        if pos is None or ori is None or meas is None or "ImagePositionPatient" not in pos \
                or "ImageOrientationPatient" not in ori or "PixelSpacing" not in meas:
            raise ValueError(f"{path}: enhanced multi-frame DICOM without a position, orientation and "
                             "pixel spacing for every frame; its 3D geometry is unknown")
        positions.append([float(v) for v in pos.ImagePositionPatient])
        orientations.append([float(v) for v in ori.ImageOrientationPatient])
        spacings.append([float(v) for v in meas.PixelSpacing])
    return np.asarray(positions), np.asarray(orientations), np.asarray(spacings)


def _check_positions(path: Path, img, positions, orientations, spacings, what: str = "slice") -> None:
    """Refuse unless SimpleITK's geometry puts every slice (frame) where its DICOM tags say."""
    n = len(positions)
    if np.abs(orientations - orientations[0]).max() > 1e-3:
        raise ValueError(f"{path}: the {what}s have different orientations; not a single 3D volume")
    if np.abs(spacings - spacings[0]).max() > 1e-3:
        raise ValueError(f"{path}: the {what}s have different pixel spacings; not a single 3D volume")
    row, col = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, col)
    if n > 1:
        along = positions @ normal
        steps = np.diff(along)
        if np.any(np.diff(np.sort(along)) < 1e-3):
            raise ValueError(f"{path}: several {what}s share one position (echoes, phases or time points "
                             "in one series?); expected one 3D volume")
        sideways = positions - positions[0] - np.outer(along - along[0], normal)
        if np.abs(sideways).max() > 1e-2 * max(abs(steps).min(), 1.0) + 1e-3:
            raise ValueError(f"{path}: the {what}s are offset sideways (gantry tilt?); "
                             "resample the series to a regular grid first")
        mean = abs(steps).mean()
        if np.abs(np.abs(steps) - mean).max() > 0.05 * mean:
            raise ValueError(f"{path}: the {what}s are not evenly spaced ({abs(steps).min():.4g} to "
                             f"{abs(steps).max():.4g} mm apart; missing {what}s?)")
    direction = np.asarray(img.GetDirection(), float).reshape(3, 3)
    spacing = np.asarray(img.GetSpacing(), float)
    origin = np.asarray(img.GetOrigin(), float)
    lps = direction * spacing[None, :]
    predicted = origin[None, :] + np.arange(n)[:, None] * lps[:, 2][None, :]
    tol = 0.1 * (float(spacing[2]) if n > 1 else 1.0) + 1e-3
    ok = (np.abs(predicted - positions).max() <= tol
          and np.abs(direction[:, 0] - row).max() < 1e-3 and np.abs(direction[:, 1] - col).max() < 1e-3
          and np.allclose(spacing[:2], spacings[0][::-1], rtol=1e-3, atol=1e-4))
    if not ok:
        raise ValueError(f"{path}: SimpleITK's geometry does not match the DICOM {what} positions; "
                         "refusing to show it in the wrong place")


def _folder_dicom_headers(folder: Path, limit: int = 4096):
    """pydicom headers of the DICOM files directly in ``folder`` (for error messages)."""
    found = []
    for n, entry in enumerate(sorted(os.scandir(folder), key=lambda e: e.name)):
        if n >= limit:
            break
        if entry.is_file() and (entry.name.lower().endswith(DICOM_SUFFIXES) or looks_like_dicom_file(entry.path)):
            try:
                found.append((Path(entry.path), _header(Path(entry.path))))
            except ValueError:
                continue
    return found


def _read_dicom_folder(folder: Path, series: str | None, max_voxels: int) -> RawImage:
    import SimpleITK as sitk

    with _quiet_itk():
        ids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    if not ids:
        headers = _folder_dicom_headers(folder)
        if not headers:
            raise ValueError(f"{folder}: is a directory with no DICOM files (expected a NIfTI file, "
                             "a DICOM/NRRD/MetaImage file, or a folder holding a DICOM series)")
        for path, ds in headers:
            _check_kind(path, ds)  # names the first non-image object
        raise ValueError(f"{folder}: holds {len(headers)} DICOM files but no image series SimpleITK can read")
    listing = {}
    for uid in ids:
        with _quiet_itk():
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        listing[uid] = files
    if series is not None:
        if series not in listing:
            raise ValueError(f"{folder}: no DICOM series {series!r} here; it holds "
                             + "; ".join(_series_line(uid, files) for uid, files in listing.items()))
        uid = series
    elif len(listing) > 1:
        raise SeveralSeries(folder, [_series_info(uid, files) for uid, files in listing.items()])
    else:
        uid = ids[0]
    files = listing[uid]
    if len(files) == 1:
        return _read_dicom_file(Path(files[0]), max_voxels)
    headers = [_header(Path(f)) for f in files]
    first = headers[0]
    _check_kind(Path(files[0]), first)
    _check_syntax(Path(files[0]), first)
    for f, ds in zip(files, headers):
        if _frames(ds) > 1:
            raise ValueError(f"{f}: a multi-frame DICOM file inside a series of {len(files)} files; "
                             "open that file on its own")
        if (int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) != (int(first.Rows), int(first.Columns)):
            raise ValueError(f"{folder}: series {uid}: slices of different sizes; not a single 3D volume")
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds:
            raise ValueError(f"{f}: slice without ImagePositionPatient/ImageOrientationPatient/PixelSpacing; "
                             "the series' 3D geometry is unknown")
    _check_info(folder, "DICOM", 3, (int(first.Columns), int(first.Rows), len(files)), 1, max_voxels)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.SetOutputPixelType(_pixel_type(headers))
    try:
        with _quiet_itk():
            img = reader.Execute()
    except RuntimeError as exc:
        raise _syntax_error(folder, first, exc) from None
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    orientations = np.asarray([[float(v) for v in ds.ImageOrientationPatient] for ds in headers])
    spacings = np.asarray([[float(v) for v in ds.PixelSpacing] for ds in headers])
    _check_positions(folder, img, positions, orientations, spacings)
    return _to_raw(img, _describe(first))


@dataclass
class SeriesInfo:
    """One DICOM series in a folder: what a user needs to choose it."""

    uid: str
    modality: str
    description: str
    n_files: int

    def __str__(self) -> str:
        return (f"{self.uid} ({self.modality} {self.description!r}, "
                f"{self.n_files} slice{'s' if self.n_files != 1 else ''})")


class SeveralSeries(ValueError):
    """A folder holding more than one DICOM series; ``series`` lists them for the user to choose."""

    def __init__(self, folder, series: list[SeriesInfo]):
        self.folder, self.series = Path(folder), list(series)
        super().__init__(f"{folder}: holds {len(series)} DICOM series; choose one with series=UID "
                         "(--series UID in the CLI): " + "; ".join(str(s) for s in series))


def _series_info(uid: str, files) -> SeriesInfo:
    try:
        ds = _header(Path(files[0]))
        modality = str(ds.get("Modality", "") or "?")
        text = str(ds.get("SeriesDescription", "") or "").strip()
    except ValueError:
        modality, text = "?", ""
    return SeriesInfo(uid, modality, text, len(files))


def _series_line(uid: str, files) -> str:
    return str(_series_info(uid, files))


def is_nrrd_path(path) -> bool:
    return str(path).lower().endswith(NRRD_SUFFIXES)


def write_itk(path, source_order: np.ndarray, ras_affine: np.ndarray) -> None:
    """Write voxels in ITK index order (i, j, k) with their RAS affine as NRRD or MetaImage (atomically).

    The inverse of :func:`_to_raw`: the file's direction, spacing and origin are
    the affine's, in LPS, so the output overlays its source in 3D Slicer.
    """
    import SimpleITK as sitk

    from .io import _atomic_write

    array = np.asarray(source_order)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D (i, j, k) array, got shape {array.shape}")
    lps = np.linalg.inv(LPS_TO_RAS) @ np.asarray(ras_affine, float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(v) for v in lps[:3, 3]])
    img.SetDirection([float(v) for v in (lps[:3, :3] / spacing[None, :]).ravel()])
    _atomic_write(Path(path), lambda tmp: sitk.WriteImage(img, tmp, True))
