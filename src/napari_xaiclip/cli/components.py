"""``xaiclip components``: ATE of ablating each image-encoder attention block and
mask-decoder layer of a SAM-family segmenter on one slice (PdCR's network view)."""

from __future__ import annotations

from ._case import add_case_arguments, case_from_args

__all__ = ["add", "cmd_components"]


def add(sub):
    p = sub.add_parser("components", help="ablate each SAM encoder/decoder component and report its effect",
                       description="Ablate each image-encoder attention block and mask-decoder layer in turn "
                                   "and report the average treatment effect on Dice against the baseline "
                                   "segmentation; writes components.csv/json and components.png.")
    add_case_arguments(p)
    p.add_argument("--ablation", default="zero", choices=("zero", "mean"),
                   help="replace a component's output by zeros, or by its mean over other slices")
    p.add_argument("--fillers", type=int, default=8, help="slices used for --ablation mean")
    p.set_defaults(func=cmd_components)


def cmd_components(args) -> int:
    from ..jobs import run_components
    from ..reports import format_table

    case = case_from_args(args, roi="none", methods=["occlusion"], modes=("traditional",), curves=False)
    records = run_components(case, args.out, args.ablation, args.fillers)
    print(format_table(records, ["component", "kind", "target_ablated", "ate"]))
    print(f"wrote {args.out}/components.csv, components.json and components.png")
    return 0

