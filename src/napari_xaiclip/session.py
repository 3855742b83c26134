"""Session folders: autosaved ROIs and heatmaps, so a crash or a closed window
loses at most the last edit.

One folder per source volume under ``$XAICLIP_SESSION_DIR`` or
``~/.local/share/napari-xaiclip/sessions``, keyed by the volume's absolute path,
shape and a fingerprint of its content (:func:`volume_fingerprint`): per-patient
folders that all hold ``ct.nii.gz``, or a file replaced by another patient's at the
same path, never share a session. Each saved layer is one ``.npz`` (the array and
its plain-value metadata as JSON), written atomically.

Example
-------
>>> import numpy as np, tempfile
>>> from napari_xaiclip.session import SessionStore
>>> store = SessionStore("scan.nii.gz", (2, 3, 4), root=tempfile.mkdtemp())
>>> path = store.save("ROI", np.ones((2, 3, 4), np.uint8), {"kind": "labels"})
>>> [(name, arr.shape, meta["kind"]) for name, arr, meta in store.load()]
[('ROI', (2, 3, 4), 'labels')]
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from .io import atomic_write_bytes
from .utils import to_plain

__all__ = ["SessionStore", "autosave_enabled", "session_root", "source_key", "volume_fingerprint"]

#: Bytes hashed at each end of a source file.
HASHED_BYTES = 1 << 20
#: Voxels sampled (evenly) into the fingerprint: catches a change in the middle of an uncompressed file.
SAMPLED_VOXELS = 1 << 20


def session_root() -> Path:
    env = os.environ.get("XAICLIP_SESSION_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "napari-xaiclip" / "sessions"


def autosave_enabled() -> bool:
    """Autosave is on unless ``XAICLIP_AUTOSAVE=0``."""
    return os.environ.get("XAICLIP_AUTOSAVE", "1") not in ("0", "false", "no", "off")


def source_key(path) -> str:
    """A source path as one string whatever the working directory: absolute, links resolved."""
    try:
        return str(Path(path).expanduser().resolve())
    except (OSError, RuntimeError):  # a loop of links, an unreadable parent
        return os.path.abspath(str(path))


def volume_fingerprint(path, data, affine) -> str:
    """What a volume holds, cheaply: its source's bytes (size, first and last MiB; for a
    folder such as a DICOM series, every file's name and size), its shape and affine, and
    an even sample of its voxels. Same path and size alone would not do: a file replaced
    by another patient's of the same size keeps both."""
    h = hashlib.sha1()
    if path is not None:
        _hash_source(h, Path(path))
    data = np.asarray(data)
    h.update(repr(tuple(data.shape)).encode())
    if affine is not None:
        h.update(np.round(np.asarray(affine, np.float64), 6).tobytes())
    # the same voxels in C order whatever the memory layout (reshape would copy a reoriented view),
    # as float32 so an int16 scan hashes as it did when volumes were held as float32
    picks = np.unravel_index(np.arange(0, data.size, max(1, data.size // SAMPLED_VOXELS)), data.shape)
    h.update(np.ascontiguousarray(data[picks], dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _hash_source(h, path: Path) -> None:
    try:
        if path.is_dir():
            for f in sorted(p for p in path.iterdir() if p.is_file()):
                h.update(f"{f.name}|{f.stat().st_size}\n".encode())
            return
        size = path.stat().st_size
        h.update(str(size).encode())
        with open(path, "rb") as fh:
            h.update(fh.read(HASHED_BYTES))
            if size > HASHED_BYTES:
                fh.seek(max(HASHED_BYTES, size - HASHED_BYTES))
                h.update(fh.read(HASHED_BYTES))
    except OSError:
        h.update(b"unreadable")  # gone since it was read: the voxel sample still tells volumes apart


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120] or "layer"


class SessionStore:
    """Autosave folder of one source volume.

    ``fingerprint``: what the volume holds (:func:`volume_fingerprint`); volumes with the
    same ``source`` and ``shape`` but another fingerprint get another folder.
    """

    def __init__(self, source: str, shape, root: str | os.PathLike | None = None, fingerprint: str = ""):
        self.source = str(source)
        self.shape = tuple(int(s) for s in shape)
        self.fingerprint = str(fingerprint)
        key = hashlib.sha1(f"{self.source}|{self.shape}|{self.fingerprint}".encode()).hexdigest()[:16]
        self.root = Path(root or session_root())
        self.folder = self.root / key

    def save(self, name: str, array: np.ndarray, meta: dict) -> Path:
        """Write one layer (atomically); returns the file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        info = {"name": name, "source": self.source, "shape": list(self.shape), "saved": time.time(),
                **to_plain(meta)}
        buf = io.BytesIO()
        np.savez_compressed(buf, data=np.asarray(array), meta=np.frombuffer(json.dumps(info).encode(), np.uint8))
        path = self.folder / f"{_safe_name(name)}.npz"
        atomic_write_bytes(path, buf.getvalue())
        atomic_write_bytes(self.folder / "source.json", json.dumps(
            {"source": self.source, "shape": list(self.shape), "fingerprint": self.fingerprint}).encode())
        return path

    def remove(self, name: str) -> None:
        path = self.folder / f"{_safe_name(name)}.npz"
        if path.exists():
            path.unlink()

    def load(self) -> list[tuple[str, np.ndarray, dict]]:
        """Saved layers, oldest first; unreadable files are skipped (and reported in the list's metadata)."""
        out = []
        if not self.folder.is_dir():
            return out
        for path in sorted(self.folder.glob("*.npz"), key=lambda p: p.stat().st_mtime):
            try:
                with np.load(path) as z:
                    data = z["data"]
                    meta = json.loads(bytes(z["meta"]).decode())
            except (OSError, ValueError, KeyError, json.JSONDecodeError):
                continue  # a file cut short by a crash: its previous complete version is gone, skip it
            out.append((meta.get("name", path.stem), data, meta))
        return out

    def clear(self) -> None:
        for path in self.folder.glob("*.npz"):
            path.unlink()
