"""Command line: ``normwatch report RUN_DIR... [--out DIR]`` (also ``python -m normwatch report``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="normwatch", description="normwatch command-line tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 bad input, 2 missing ``normwatch[report]``)."""
    args = _parser().parse_args(argv)
    if args.command == "report":
        from normwatch.report import MissingReportDependencyError, write_report

        try:
            path = write_report(args.run_dirs, args.out)
        except MissingReportDependencyError as err:
            print(err, file=sys.stderr)
            return 2
        except (FileNotFoundError, ValueError) as err:
            print(f"normwatch report: {err}", file=sys.stderr)
            return 1
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
