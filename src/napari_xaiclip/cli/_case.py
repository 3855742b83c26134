"""Arguments shared by the commands that explain one case (``explain``, ``components``)."""

from __future__ import annotations

from ..preprocess import PRESETS

__all__ = ["add_case_arguments", "case_from_args"]


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
    p.add_argument("--speed", default="auto", choices=("auto", "eager", "compile", "bf16"),
                   help="execution mode of the segmenter's no-grad forwards: auto (default: fp32 torch.compile "
                        "on CUDA; on a CPU torch.compile once `xaiclip warmup` compiled the model, else bf16 "
                        "where the CPU has it; eager elsewhere), eager (fp32 as loaded), "
                        "bf16 (autocast where the hardware has native bf16, checked against fp32 on a probe), "
                        "compile (torch.compile, cached; the first compile takes minutes on a CPU); "
                        "recorded as speed_* in metrics.json")
    p.add_argument("--preprocess", default="none", choices=PRESETS, help="slice preprocessing before the models")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--box-margin", type=int, default=0, help="pixels added around a box taken from labels")
    p.add_argument("--out", required=True, help="output folder")


def case_from_args(args, **extra):
    from ..jobs import Case, parse_slices

    slices = [args.slice] if args.slice is not None else (parse_slices(args.slices) if args.slices else None)
    return Case(volume=args.volume, slices=slices, axis=args.axis, box=tuple(args.box) if args.box else None,
                labels=args.labels, organ=args.organ, label_names=args.label_names,
                labels_threshold=args.labels_threshold, model=args.model, preprocess=args.preprocess,
                seed=args.seed, box_margin=args.box_margin, series=getattr(args, "series", None),
                speed=getattr(args, "speed", "auto"), **extra)
