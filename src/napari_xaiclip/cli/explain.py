"""``xaiclip explain``: explain the segmenter on one slice or a range, traditional and/or ROI-guided."""

from __future__ import annotations

import argparse
import textwrap

from ..explain.registry import method_names, methods, parse_params
from ..jobs import ROI_SOURCES, SEGMENTER_ROI_MARGIN
from ..progress import TerminalProgress
from ._case import add_case_arguments, case_from_args

__all__ = ["add", "cmd_explain", "methods_help"]


def methods_help() -> str:
    """Every registered method with its parameters and defaults, for ``--help``."""
    lines = ["methods and their parameters (--param METHOD.NAME=VALUE):"]
    for spec in methods().values():
        lines += textwrap.wrap(spec.usage(), 100, initial_indent="  ", subsequent_indent="      ")
    return "\n".join(lines)


def add(sub):
    p = sub.add_parser("explain", help="explain a segmentation on a slice of a NIfTI volume",
                       description="Explain the segmenter's output on one slice (or a range) of a volume, "
                                   "traditional and/or ROI-guided; writes heatmaps as NIfTI in the volume's "
                                   "geometry, PNG figures and metrics.json/csv.",
                       epilog=methods_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_arguments(p)
    p.add_argument("--roi", default="localizer", choices=ROI_SOURCES,
                   help="where the ROI for ROI-guided mode comes from: the text-prompt localizer, the "
                        "segmenter's mask of the box (grown by --roi-margin), the labels, or none")
    p.add_argument("--prompt", help="text prompt for the localizer (default: the organ's name); it must name "
                                    "one of the localizer's classes (see `xaiclip models`) or a synonym")
    p.add_argument("--prompt-match", default="exact", choices=("exact", "similar"),
                   help="similar: map an unknown prompt to the nearest class by text similarity (shown)")
    p.add_argument("--roi-margin", type=int, default=None,
                   help=f"dilate the ROI by this many pixels (default 0; {SEGMENTER_ROI_MARGIN} for --roi segmenter)")
    p.add_argument("--method", nargs="+", default=["occlusion"], choices=method_names(), metavar="M",
                   help=f"one or more of: {', '.join(method_names())} (parameters below)")
    p.add_argument("--mode", default="both", choices=("traditional", "roi", "both"))
    p.add_argument("--localizer", default="default",
                   help="default (trained on the synthetic phantom only), a trained localizer file, or clip:MODEL:TAG")
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE",
                   help="a method parameter, e.g. rise.n_samples=500 (repeatable; names below)")
    p.add_argument("--no-curves", action="store_true", help="skip deletion/insertion AUC (saves forward passes)")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args) -> int:
    from ..jobs import CONSOLE_FIELDS, run_case
    from ..reports import format_table

    case = case_from_args(args, roi=args.roi, prompt=args.prompt, prompt_match=args.prompt_match,
                          methods=list(args.method), modes=(args.mode,),
                          localizer=args.localizer, params=parse_params(args.param), roi_margin=args.roi_margin,
                          curves=not args.no_curves)

    progress = TerminalProgress()
    records = run_case(case, args.out, on_progress=progress, on_message=progress.message)
    progress.close()
    print(format_table(records, CONSOLE_FIELDS))
    print("(trivial_*: the same figure for a map that is constant inside the ROI; every column is in metrics.csv)")
    print(f"wrote {args.out}")
    return 0
