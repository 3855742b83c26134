"""Session folders: autosaved ROIs and heatmaps, so a crash or a closed window
loses at most the last edit.

One folder per source volume (keyed by its path and shape) under
``$XAICLIP_SESSION_DIR`` or ``~/.local/share/napari-xaiclip/sessions``. Each
saved layer is one ``.npz`` (the array and its plain-value metadata as JSON),
written atomically.

Example
-------
>>> import numpy as np, tempfile
>>> from napari_xaiclip.session import SessionStore
>>> store = SessionStore("scan.nii.gz", (2, 3, 4), root=tempfile.mkdtemp())
>>> store.save("ROI", np.ones((2, 3, 4), np.uint8), {"kind": "labels"})
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

__all__ = ["SessionStore", "autosave_enabled", "session_root"]


def session_root() -> Path:
    env = os.environ.get("XAICLIP_SESSION_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "napari-xaiclip" / "sessions"


def autosave_enabled() -> bool:
    """Autosave is on unless ``XAICLIP_AUTOSAVE=0``."""
    return os.environ.get("XAICLIP_AUTOSAVE", "1") not in ("0", "false", "no", "off")


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120] or "layer"


class SessionStore:
    """Autosave folder of one source volume."""

    def __init__(self, source: str, shape, root: str | os.PathLike | None = None):
        self.source = str(source)
        self.shape = tuple(int(s) for s in shape)
        key = hashlib.sha1(f"{self.source}|{self.shape}".encode()).hexdigest()[:16]
        self.folder = Path(root or session_root()) / key

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
            {"source": self.source, "shape": list(self.shape)}).encode())
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
