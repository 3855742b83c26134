"""``xaiclip components``: ATE of ablating each image-encoder attention block and
mask-decoder layer of a SAM-family segmenter on one slice (PdCR's network view)."""

from __future__ import annotations

import numpy as np

__all__ = ["COMMANDS", "run_components"]


def _add_components(sub):
    from .cli_explain import add_case_arguments

    p = sub.add_parser("components", help="ablate each SAM encoder/decoder component and report its effect",
                       description="Ablate each image-encoder attention block and mask-decoder layer in turn "
                                   "and report the average treatment effect on Dice against the baseline "
                                   "segmentation; writes components.csv/json and components.png.")
    add_case_arguments(p)
    p.add_argument("--ablation", default="zero", choices=("zero", "mean"),
                   help="replace a component's output by zeros, or by its mean over other slices")
    p.add_argument("--fillers", type=int, default=8, help="slices used for --ablation mean")
    p.set_defaults(func=cmd_components)


def run_components(case, out, ablation: str = "zero", n_fillers: int = 8) -> list[dict]:
    """Component effects for the first slice of a :class:`~napari_xaiclip.jobs.Case`; writes the table and chart."""
    from pathlib import Path

    from .explain.components import component_effects, save_component_chart
    from .jobs import prepare_case, slice_box_and_gt
    from .models import load_segmenter
    from .reports import write_metrics
    from .slicing import take_slice

    prep = prepare_case(case)
    index = prep.slices[0]
    image, box, gt = slice_box_and_gt(prep, index)
    seg = load_segmenter(case.model)
    fillers = None
    if ablation == "mean":
        n = prep.volume.data.shape[case.axis]
        picks = [int(i) for i in np.linspace(0, n - 1, n_fillers + 1).round() if int(i) != index][:n_fillers]
        fillers = [take_slice(prep.volume.data, case.axis, i) for i in picks]
    records = component_effects(seg, image, box=box, mode=ablation, filler_slices=fillers)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["component", "kind", "mode", "target", "target_base", "target_ablated", "ate_dice", "ate", "n_forward"]
    write_metrics(out, records, fields, stem="components")
    save_component_chart(records, out / "components.png")
    return records


def cmd_components(args) -> int:
    from .cli_explain import case_from_args
    from .reports import format_table

    case = case_from_args(args, roi="none", methods=["occlusion"], modes=("traditional",), curves=False)
    records = run_components(case, args.out, args.ablation, args.fillers)
    print(format_table(records, ["component", "kind", "target_ablated", "ate"]))
    print(f"wrote {args.out}/components.csv, components.json and components.png")
    return 0


COMMANDS = [_add_components]
