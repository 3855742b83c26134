"""``xaiclip demo``: the main job headless, on the phantom."""

from __future__ import annotations

from pathlib import Path

__all__ = ["add", "cmd_demo"]


def add(sub):
    p = sub.add_parser("demo", help="the main job headless, on the phantom with the phantom-trained demo models")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--slice", type=int, default=None, help="axial slice (default: where the liver is largest)")
    p.add_argument("--fast", action="store_true", help="fewer RISE masks and LIME samples (a quick look)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="phantom",
                   help="segmenter: phantom (tiny demo SAM, fast; the default here) or default/litemedsam "
                        "(LiteMedSAM, real, about 2 s per forward on a CPU)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from ..demo import run_demo

    run_demo(Path(args.out), slice_index=args.slice, fast=args.fast, seed=args.seed, model=args.model)
    return 0
