"""``xaiclip train-segmenter`` and ``xaiclip train-localizer``: the demo models."""

from __future__ import annotations

from pathlib import Path

from ._errors import UsageError

__all__ = ["add_localizer", "add_segmenter", "parse_classes"]


def add_segmenter(sub):
    p = sub.add_parser("train-segmenter", help="train the tiny SAM demo segmenter")
    _add_training_data(p, "weights file to write (.pt)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--init", help="continue from a model saved by train-segmenter (fine-tuning)")
    p.add_argument("--seeds", default="100:116", help="phantom seeds A:B (B excluded) when no --images")
    p.add_argument("--eval-seeds", default="900:902", help="held-out phantom seeds A:B for the model card")
    p.set_defaults(func=cmd_train_segmenter)


def add_localizer(sub):
    p = sub.add_parser("train-localizer", help="train the CLIP region localizer")
    _add_training_data(p, "localizer file to write (.pt)")
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


def _add_training_data(p, out_help: str) -> None:
    """The output and training-data options both training commands share."""
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--images", nargs="*", help="NIfTI images (default: phantom seeds)")
    p.add_argument("--labels", nargs="*", help="NIfTI label files, one per image")
    p.add_argument("--modality", default="ct", choices=("ct", "mr"), help="modality of --images")


def _pairs(args):
    images, labels = args.images or [], args.labels or []
    if not images and not labels:
        return None
    if len(images) != len(labels):
        raise UsageError(f"{len(images)} --images but {len(labels)} --labels; give one label file per image")
    for p in [*images, *labels]:
        if not Path(p).is_file():
            raise UsageError(f"{p}: no such file")
    from ..models.data import nifti_volumes

    return nifti_volumes(images, labels, modality=args.modality)


def _check_out(path: str, suffixes=(".pt", ".pth")) -> Path:
    out = Path(path)
    if not out.name.endswith(suffixes):
        raise UsageError(f"--out {path}: expected a {' or '.join(suffixes)} file name")
    if out.parent and not out.parent.exists():
        raise UsageError(f"--out {path}: folder {out.parent} does not exist")
    return out


def cmd_train_segmenter(args) -> int:
    from ..models.train_segmenter import train_segmenter

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
    from ..jobs import parse_slices

    try:
        return tuple(parse_slices(text))
    except ValueError:
        raise UsageError(f"seeds must be N or A:B with B > A, got {text!r}") from None


def parse_classes(text: str | None):
    """``"liver,spleen"`` or ``"1:liver,3:spleen"`` -> (names, name -> label value)."""
    from ..phantom import ORGAN_NAMES

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
    from ..models.train_localizer import train_localizer

    out = _check_out(args.out)
    classes, label_of = parse_classes(args.classes)
    cases = _pairs(args)
    train_localizer(out, clip_spec=args.clip, classes=classes, label_of=label_of, cases=cases,
                    steps=args.steps, batch=args.batch, lr=args.lr,
                    freeze_clip=False if args.unfreeze_clip else None, seed=args.seed, threads=args.threads,
                    seeds=_seed_range(args.seeds), eval_seeds=_seed_range(args.eval_seeds))
    print(f"wrote {out}")
    return 0
