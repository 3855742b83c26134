"""The ``xaiclip`` command.

One module per subcommand, each with an ``add(subparsers)`` function, listed in
:data:`COMMANDS`. Errors in the input print one ``error:`` line on stderr and
exit with status 2 (a traceback only with ``--debug``); no partial output files
are left behind.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import time
import warnings

from . import batch, components, demo, explain, gui, models, train, warmup
from ._errors import UsageError

__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]

#: Subcommands in the order ``xaiclip --help`` lists them.
COMMANDS = (gui.add, demo.add, explain.add, batch.add, components.add, models.add, warmup.add,
            train.add_segmenter, train.add_localizer)


#: Arguments argparse must read as values, not options: negative numbers in any float spelling
#: (``-1e308``, ``-.5``, ``-inf``) and slice ranges (``-1:2``), so a bad value gets the value's own error.
NEGATIVE_VALUE = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-(inf|infinity|nan)$|^-\d*:-?\d*(:-?\d*)?$",
                            re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    """argparse with the command's error contract: one ``error:`` line and exit status 2."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_VALUE

    def error(self, message):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xaiclip", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    """The contract is one line: join a multi-line message rather than cut it."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def _os_message(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or _one_line(exc)}"


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """A library's warning as one ``warning:`` line, when it happens (not a source excerpt)."""
    print(f"warning: {_one_line(message)}", file=sys.stderr, flush=True)


def _interrupt(signum, frame):
    # SIGTERM/SIGHUP unwind like Ctrl-C, so staging folders are removed on the way out
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    t0 = time.time()
    in_main = threading.current_thread() is threading.main_thread()  # signals can only be caught there
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)} if in_main else {}
    try:
        with warnings.catch_warnings():  # restores the process's warning settings afterwards
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except (UsageError, ValueError) as exc:
        if args.debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # missing input, an --out that cannot be written, a full disk
        if args.debug:
            raise
        print(f"error: {_os_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        why = f" by {exc.args[0]}" if exc.args else ""
        print(f"error: interrupted{why} after {time.time() - t0:.0f} s", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
