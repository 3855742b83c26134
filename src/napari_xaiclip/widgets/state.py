"""What the plugin remembers per napari viewer, in one place instead of private attributes on napari objects."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

__all__ = ["ViewerState", "state_of"]


@dataclass
class ViewerState:
    """``busy_layers``: names of heatmap layers a worker is writing now; ``watched``: layers whose
    edits a widget already follows (so a second connect does not double every update);
    ``sources``: derived layer -> its source image layer (kept by reference, so renaming the image
    does not lose it); ``identities``: image layer -> its session key, computed once;
    ``restored``: image layers whose autosaved session was already offered."""

    busy_layers: set = field(default_factory=set)
    watched: weakref.WeakSet = field(default_factory=weakref.WeakSet)
    sources: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    identities: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    restored: weakref.WeakSet = field(default_factory=weakref.WeakSet)


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def state_of(viewer) -> ViewerState:
    """The plugin's state for ``viewer`` (created on first use, gone with the viewer)."""
    state = _STATES.get(viewer)
    if state is None:
        state = _STATES[viewer] = ViewerState()
    return state
