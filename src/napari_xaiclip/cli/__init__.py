"""The ``xaiclip`` command.

One module per subcommand, each with an ``add(subparsers)`` function, listed in
:data:`COMMANDS`. Errors in the input print one ``error:`` line on stderr and
exit with status 2 (a traceback only with ``--debug``); no partial output files
are left behind.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import batch, components, demo, explain, gui, models, train
from ._errors import UsageError

__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]

#: Subcommands in the order ``xaiclip --help`` lists them.
COMMANDS = (gui.add, demo.add, explain.add, batch.add, components.add, models.add, train.add_segmenter,
            train.add_localizer)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xaiclip", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


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
