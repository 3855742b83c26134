"""Messages to the user (napari notifications) and the warnings workers send back."""

from __future__ import annotations


__all__ = ["WorkerWarning", "layer_is_phantom", "notify_error", "notify_info", "notify_warning", "phantom_warnings"]


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


class WorkerWarning(str):
    """A warning a worker yields as its payload, ``(done, total, WorkerWarning(text))``:
    the RunPanel shows it on the GUI thread at once and keeps it in ``panel.warnings``."""


def layer_is_phantom(layer) -> bool:
    """Whether an image layer holds the synthetic phantom (its geometry metadata says so)."""
    from ..io import is_phantom_description

    geometry = (getattr(layer, "metadata", None) or {}).get("xaiclip_geometry") or {}
    return is_phantom_description(geometry.get("description"))


def phantom_warnings(volume_is_phantom: bool, segmenter=None, localizer=None) -> list[WorkerWarning]:
    """:func:`napari_xaiclip.provenance.phantom_model_warnings` as worker payloads (call in the worker)."""
    from ..provenance import phantom_model_warnings

    return [WorkerWarning(w) for w in phantom_model_warnings(volume_is_phantom, segmenter, localizer)]
