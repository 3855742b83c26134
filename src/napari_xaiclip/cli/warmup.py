"""``xaiclip warmup``: compile a segmenter ahead of time, so the first explanation does not wait for it."""

from __future__ import annotations

import sys
import time

__all__ = ["add", "cmd_warmup"]


def add(sub):
    p = sub.add_parser("warmup", help="compile a segmenter ahead of time (fills the torch.compile cache)")
    p.add_argument("--model", default="default", help="segmenter spec, as for explain (default: LiteMedSAM)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--speed", default="compile", choices=("compile", "auto", "bf16"),
                   help="mode to prepare (default compile; afterwards explain's default auto compiles this model "
                        "on a CPU too)")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="batch size to compile for (default: the one explain uses, the engine's automatic one)")
    p.set_defaults(func=cmd_warmup)


def cmd_warmup(args) -> int:
    from ..models import load_segmenter
    from ..models.speed import apply_speed
    from ._errors import UsageError

    if args.batch is not None and not 1 <= args.batch <= 1024:
        raise UsageError(f"--batch must be 1..1024, got {args.batch}")
    t0 = time.perf_counter()
    seg = load_segmenter(args.model, device=args.device)
    report = apply_speed(seg, args.speed, batch=args.batch)
    print(f"{seg.name} on {report.device}: {report.chosen} ready in {time.perf_counter() - t0:.1f} s "
          f"(asked for {args.speed})")
    for reason in report.reasons:
        print(f"  {reason}")
    if args.speed == "compile" and "compile" not in report.chosen:
        print("error: compile did not take (see the reasons above); explain would run eager", file=sys.stderr)
        return 1
    if report.compile_batch:
        print(f"later runs at batch {report.compile_batch} reuse the compiled kernels; --speed auto now compiles "
              "this model too")
    return 0
