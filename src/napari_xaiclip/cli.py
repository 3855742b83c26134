"""The ``xaiclip`` command.

Errors in the input print one ``error:`` line on stderr and exit with status 2
(a traceback only with ``--debug``); no partial output files are left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]


class UsageError(ValueError):
    """Bad input from the command line (exit status 2)."""


def _add_gui(sub):
    p = sub.add_parser("gui", help="napari with the plugin's widgets docked")
    p.add_argument("volume", nargs="?", help="NIfTI volume to open (default: the CT phantom)")
    p.add_argument("--labels", help="NIfTI label volume to open with it")
    p.add_argument("--mr", action="store_true", help="open the MR phantom instead of the CT one")
    p.set_defaults(func=cmd_gui)


def _add_demo(sub):
    p = sub.add_parser("demo", help="the main job headless, on the phantom with the phantom-trained demo models")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--slice", type=int, default=None, help="axial slice (default: where the liver is largest)")
    p.add_argument("--fast", action="store_true", help="fewer RISE masks and LIME samples (a quick look)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="phantom",
                   help="segmenter: phantom (tiny demo SAM, fast; the default here) or default/litemedsam "
                        "(LiteMedSAM, real, about 2 s per forward on a CPU)")
    p.set_defaults(func=cmd_demo)


def _add_models(sub):
    p = sub.add_parser("models", help="list the models available offline")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--card", action="store_true", help="print the shipped models' model card (markdown)")
    p.set_defaults(func=cmd_models)


def _add_train_segmenter(sub):
    p = sub.add_parser("train-segmenter", help="train the tiny SAM demo segmenter")
    p.add_argument("--out", required=True, help="weights file to write (.pt)")
    p.add_argument("--images", nargs="*", help="NIfTI images (default: phantom seeds)")
    p.add_argument("--labels", nargs="*", help="NIfTI label files, one per image")
    p.add_argument("--modality", default="ct", choices=("ct", "mr"), help="modality of --images")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--init", help="continue from a model saved by train-segmenter (fine-tuning)")
    p.add_argument("--seeds", default="100:116", help="phantom seeds A:B (B excluded) when no --images")
    p.add_argument("--eval-seeds", default="900:902", help="held-out phantom seeds A:B for the model card")
    p.set_defaults(func=cmd_train_segmenter)


def _add_train_localizer(sub):
    p = sub.add_parser("train-localizer", help="train the CLIP region localizer")
    p.add_argument("--out", required=True, help="localizer file to write (.pt)")
    p.add_argument("--images", nargs="*", help="NIfTI images (default: phantom seeds)")
    p.add_argument("--labels", nargs="*", help="NIfTI label files, one per image")
    p.add_argument("--modality", default="ct", choices=("ct", "mr"), help="modality of --images")
    p.add_argument("--classes", default=None,
                   help="comma-separated organ names (FLARE22 numbering) or VALUE:NAME pairs, "
                        "e.g. liver,spleen or 1:liver,3:spleen (default: every phantom organ)")
    p.add_argument("--clip", default="xaiclip-tiny", help="open_clip spec, e.g. ViT-B-16:openai or "
                   "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    p.add_argument("--unfreeze-clip", action="store_true", help="train the CLIP encoders too")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seeds", default="200:216", help="phantom seeds A:B (B excluded) when no --images")
    p.add_argument("--eval-seeds", default="900:902", help="held-out phantom seeds A:B for the model card")
    p.set_defaults(func=cmd_train_localizer)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xaiclip", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_gui, _add_demo, _add_models, _add_train_segmenter, _add_train_localizer):
        add(sub)
    for extra in _extra_commands():
        extra(sub)
    return parser


def _extra_commands():
    """Subcommands defined in other modules (explain, batch, components)."""
    from . import cli_components, cli_explain

    return cli_explain.COMMANDS + cli_components.COMMANDS


# --- commands -----------------------------------------------------------
def cmd_gui(args) -> int:
    from .gui import launch

    launch(volume=args.volume, labels=args.labels, modality="mr" if args.mr else "ct", block=True)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), slice_index=args.slice, fast=args.fast, seed=args.seed, model=args.model)
    return 0


def cmd_models(args) -> int:
    from .models import DEFAULT_LOCALIZER, PHANTOM_SEGMENTER, list_models

    if args.card:
        from .models.card import read_card, render_model_card

        print(render_model_card(read_card(PHANTOM_SEGMENTER), read_card(DEFAULT_LOCALIZER)))
        return 0
    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['kind']:<10} {row['spec']}")
        for key in ("description", "trained_on", "licence", "weights", "input_size", "parameters", "gflops",
                    "classes", "error"):
            if key in row:
                print(f"{'':<10}   {key}: {row[key]}")
    return 0


def _pairs(args):
    images, labels = args.images or [], args.labels or []
    if not images and not labels:
        return None
    if len(images) != len(labels):
        raise UsageError(f"{len(images)} --images but {len(labels)} --labels; give one label file per image")
    for p in [*images, *labels]:
        if not Path(p).is_file():
            raise UsageError(f"{p}: no such file")
    from .models.data import nifti_volumes

    return nifti_volumes(images, labels, modality=args.modality)


def _check_out(path: str, suffixes=(".pt", ".pth")) -> Path:
    out = Path(path)
    if not out.name.endswith(suffixes):
        raise UsageError(f"--out {path}: expected a {' or '.join(suffixes)} file name")
    if out.parent and not out.parent.exists():
        raise UsageError(f"--out {path}: folder {out.parent} does not exist")
    return out


def cmd_train_segmenter(args) -> int:
    from .models.train_segmenter import train_segmenter

    out = _check_out(args.out)
    cases = _pairs(args)
    if args.init and not Path(args.init).is_file():
        raise UsageError(f"--init {args.init}: no such file")
    train_segmenter(out, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, cases=cases,
                    threads=args.threads, seeds=_seed_range(args.seeds),
                    eval_seeds=() if cases is not None else _seed_range(args.eval_seeds), init=args.init)
    print(f"wrote {out}")
    return 0


def _seed_range(text: str) -> tuple[int, ...]:
    """"100:116" -> (100, ..., 115); "7" -> (7,)."""
    from .jobs import parse_slices

    try:
        return tuple(parse_slices(text))
    except ValueError:
        raise UsageError(f"seeds must be N or A:B with B > A, got {text!r}") from None


def parse_classes(text: str | None):
    """``"liver,spleen"`` or ``"1:liver,3:spleen"`` -> (names, name -> label value)."""
    from .phantom import ORGAN_NAMES

    if not text:
        return None, None
    by_name = {v: k for k, v in ORGAN_NAMES.items()}
    names, label_of = [], {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        value, sep, name = item.partition(":")
        if sep:
            if not value.strip().isdigit():
                raise UsageError(f"--classes: {item!r} is not VALUE:NAME")
            names.append(name.strip())
            label_of[name.strip()] = int(value)
        elif item in by_name:
            names.append(item)
            label_of[item] = by_name[item]
        else:
            raise UsageError(f"--classes: unknown organ {item!r}; give VALUE:NAME or one of {sorted(by_name)}")
    return names, label_of


def cmd_train_localizer(args) -> int:
    from .models.train_localizer import train_localizer

    out = _check_out(args.out)
    classes, label_of = parse_classes(args.classes)
    cases = _pairs(args)
    train_localizer(out, clip_spec=args.clip, classes=classes, label_of=label_of, cases=cases,
                    steps=args.steps, batch=args.batch, lr=args.lr,
                    freeze_clip=False if args.unfreeze_clip else None, seed=args.seed, threads=args.threads,
                    seeds=_seed_range(args.seeds), eval_seeds=_seed_range(args.eval_seeds))
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    t0 = time.time()
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, FileNotFoundError) as exc:
        if args.debug:
            raise
        # the contract is one line: join a multi-line message rather than cut it
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted after {time.time() - t0:.0f} s", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
