"""Command line: ``normwatch report RUN_DIR... [--out DIR]`` (also ``python -m normwatch report``).

A bad command line, a path that is not a run, or a set of runs with nothing to report gets one line on
stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    """argparse that says what is wrong with a command line in one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> _Parser:
    parser = _Parser(prog="normwatch", description="normwatch command-line tools.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    report = sub.add_parser(
        "report",
        help="figures and verdicts from normwatch runs",
        description=(
            "Read the TensorBoard event files of normwatch runs and write PNG figures, report.md and a "
            "self-contained report.html. A RUN_DIR holds event files; any other directory is a study whose "
            "subdirectories are runs."
        ),
    )
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run or study directory")
    report.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output directory (default: RUN_DIR/report, or report/ in the common parent of several)",
    )
    return parser


def _report(run_dirs: list[Path], out: Path | None) -> int:
    """``normwatch report``: write it, print report.html's path; one line on stderr for each skipped set of
    runs, and one line and status 1 (bad input) or 2 (``normwatch[report]`` missing) when it cannot."""
    from normwatch.report import MissingReportDependencyError, SkippedRunsWarning, write_report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedRunsWarning)
        try:
            path = write_report(run_dirs, out)
        except MissingReportDependencyError as err:
            print(err, file=sys.stderr)
            return 2
        except (FileNotFoundError, ValueError) as err:
            print(f"normwatch report: {err}", file=sys.stderr)
            return 1
        except OSError as err:  # the output directory cannot be written
            print(f"normwatch report: cannot write into {err.filename}: {err.strerror}.", file=sys.stderr)
            return 1
    for warning in caught:
        if issubclass(warning.category, SkippedRunsWarning):
            print(f"normwatch report: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    print(path.with_name("report.html"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 bad input, 2 bad command line or missing
    ``normwatch[report]``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("expected a command: report")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file: pass a folder for the report (it is created if missing)")
    return _report(args.run_dirs, args.out)


if __name__ == "__main__":
    sys.exit(main())
