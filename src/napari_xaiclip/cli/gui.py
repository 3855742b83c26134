"""``xaiclip gui``: napari with the plugin's widgets docked."""

from __future__ import annotations

__all__ = ["add", "cmd_gui"]


def add(sub):
    p = sub.add_parser("gui", help="napari with the plugin's widgets docked")
    p.add_argument("volume", nargs="?", help="NIfTI volume to open (default: the CT phantom)")
    p.add_argument("--labels", help="NIfTI label volume to open with it")
    p.add_argument("--mr", action="store_true", help="open the MR phantom instead of the CT one")
    p.set_defaults(func=cmd_gui)


def cmd_gui(args) -> int:
    from ..gui import launch

    launch(volume=args.volume, labels=args.labels, modality="mr" if args.mr else "ct", block=True)
    return 0
