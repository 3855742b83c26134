"""``xaiclip explain`` (and the other explanation subcommands registered in ``COMMANDS``)."""

from __future__ import annotations

import ast
import sys
import time

from .explain import METHODS
from .jobs import ROI_SOURCES, SEGMENTER_ROI_MARGIN
from .preprocess import PRESETS

__all__ = ["COMMANDS", "parse_params"]


def parse_params(items) -> dict:
    """``["rise.n_masks=500", "occlusion.patch=32"]`` -> {"rise": {"n_masks": 500}, ...}."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"--param {item!r}: expected METHOD.NAME=VALUE, e.g. rise.n_masks=500")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        out.setdefault(method, {})[name] = parsed
    return out


def add_case_arguments(p, slice_required: bool = False) -> None:
    """Arguments shared by ``explain`` and ``components``."""
    p.add_argument("volume", help="scan: NIfTI (.nii / .nii.gz), DICOM file or series folder, NRRD (.nrrd / .nhdr) "
                                  "or MetaImage (.mha / .mhd)")
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID to load from a folder holding several DICOM series")
    where = p.add_mutually_exclusive_group(required=slice_required)
    where.add_argument("--slice", type=int, help="slice index along --axis (default: the organ's largest slice)")
    where.add_argument("--slices", help="range A:B of slices (B excluded)")
    p.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="0 axial, 1 coronal, 2 sagittal")
    p.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                   help="box prompt in slice pixels (columns x, rows y)")
    p.add_argument("--labels", help="label volume (FLARE22 numbering unless --label-names) for the box, the ROI "
                                    "and ground truth")
    p.add_argument("--organ", help="organ in --labels: one of the 13 FLARE22 names (liver, right kidney, spleen, "
                                   "pancreas, aorta, inferior vena cava, right/left adrenal gland, gallbladder, "
                                   "esophagus, stomach, duodenum, left kidney; synonyms such as ivc work), "
                                   "a name from --label-names, or any label number")
    p.add_argument("--label-names", metavar="FILE",
                   help="label table naming --labels' values: CSV 'number,name' lines, JSON {\"1\": \"liver\"}, "
                        "or a 3D Slicer / ITK-SNAP colour table (adds to or overrides the FLARE22 names)")
    p.add_argument("--labels-threshold", type=float, metavar="T",
                   help="--labels is a probability map of the organ: voxels >= T (e.g. 0.5) are the organ")
    p.add_argument("--model", default="default",
                   help="segmenter: default (LiteMedSAM, a real medical model), phantom (tiny demo SAM, "
                        "phantom-trained), litemedsam:PATH, medsam:PATH, sam:vit_b:PATH, ...")
    p.add_argument("--preprocess", default="none", choices=PRESETS, help="slice preprocessing before the models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--box-margin", type=int, default=0, help="pixels added around a box taken from labels")
    p.add_argument("--out", required=True, help="output folder")


class TerminalProgress:
    """One status line on stderr, rewritten when the step changes or every half second."""

    def __init__(self, stream=None, interval: float = 0.5):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.last = (None, 0.0)
        self.t0 = time.perf_counter()

    def __call__(self, text: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if text == self.last[0] and now - self.last[1] < self.interval:
            return
        self.last = (text, now)
        line = f"[{done + 1}/{total}] {text} ({now - self.t0:.0f} s)"
        if self.tty:
            print(f"\r{line:<78}", end="", file=self.stream, flush=True)
        elif text != getattr(self, "_printed", None):
            self._printed = text
            print(line, file=self.stream, flush=True)

    def message(self, level: str, text: str) -> None:
        """A ``warning:`` or ``note:`` line, on a line of its own even mid-progress."""
        if self.tty and self.last[0] is not None:
            print(file=self.stream)
        print(f"{level}: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.stream)


def _add_explain(sub):
    p = sub.add_parser("explain", help="explain a segmentation on a slice of a NIfTI volume",
                       description="Explain the segmenter's output on one slice (or a range) of a volume, "
                                   "traditional and/or ROI-guided; writes heatmaps as NIfTI in the volume's "
                                   "geometry, PNG figures and metrics.json/csv.")
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
    p.add_argument("--method", nargs="+", default=["occlusion"], choices=METHODS, metavar="M",
                   help=f"one or more of: {', '.join(METHODS)}")
    p.add_argument("--mode", default="both", choices=("traditional", "roi", "both"))
    p.add_argument("--localizer", default="default",
                   help="default (trained on the synthetic phantom only), a trained localizer file, or clip:MODEL:TAG")
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE",
                   help="a method parameter, e.g. rise.n_masks=500 (repeatable)")
    p.add_argument("--no-curves", action="store_true", help="skip deletion/insertion AUC (saves forward passes)")
    p.set_defaults(func=cmd_explain)


def case_from_args(args, **extra):
    from .jobs import Case, parse_slices

    slices = [args.slice] if args.slice is not None else (parse_slices(args.slices) if args.slices else None)
    return Case(volume=args.volume, slices=slices, axis=args.axis, box=tuple(args.box) if args.box else None,
                labels=args.labels, organ=args.organ, label_names=args.label_names,
                labels_threshold=args.labels_threshold, model=args.model, preprocess=args.preprocess,
                seed=args.seed, box_margin=args.box_margin, series=getattr(args, "series", None), **extra)


def cmd_explain(args) -> int:
    from .jobs import CONSOLE_FIELDS, run_case
    from .reports import format_table

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


COMMANDS = [_add_explain]

from .cli_batch import _add_batch  # noqa: E402  (xaiclip batch)
COMMANDS.append(_add_batch)
