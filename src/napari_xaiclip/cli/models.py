"""``xaiclip models``: the models available offline."""

from __future__ import annotations

import json

__all__ = ["add", "cmd_models"]


def add(sub):
    p = sub.add_parser("models", help="list the models available offline")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--card", action="store_true", help="print the shipped models' model card (markdown)")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from ..models import DEFAULT_LOCALIZER, PHANTOM_SEGMENTER, list_models

    if args.card:
        from ..models.card import read_card, render_model_card

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
