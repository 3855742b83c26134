"""``xaiclip batch``: explain a cohort listed in a CSV manifest on Dask (see :mod:`napari_xaiclip.batch`)."""

from __future__ import annotations

__all__ = ["add", "cmd_batch"]


def add(sub):
    p = sub.add_parser(
        "batch", help="explain a cohort from a CSV manifest on a local or remote Dask cluster",
        description="One explanation job per manifest row, run as Dask tasks. Finished cases are skipped "
                    "when the command is run again; a failed case is recorded and the others go on. "
                    "Writes OUT/cases/<case>/, OUT/summary.csv, OUT/aggregates.csv and OUT/report.md. "
                    "Exit status 0 when every case finished, 1 when some failed, 2 for a bad manifest.")
    p.add_argument("manifest", help="CSV manifest (columns: case, volume, labels, organ, box, slices, axis, "
                                    "prompt, roi, methods, modes, model, localizer, seed, params, ...)")
    p.add_argument("--out", required=True, help="output folder")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None,
                       help="worker processes of a local cluster (default: min(2, cores))")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="address of a running `dask scheduler`, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--retries", type=int, default=2, help="retries of a case whose worker died (default: 2)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch threads per task (default: cores // workers on each worker machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_batch)


def cmd_batch(args) -> int:
    from ..batch import run_batch

    if args.retries < 0:
        raise ValueError(f"--retries must be 0 or more, got {args.retries}")
    summary = run_batch(args.manifest, args.out, workers=args.workers, scheduler=args.scheduler,
                        retries=args.retries, progress=not args.no_progress, torch_threads=args.torch_threads)
    return 1 if summary["failed"] else 0

