"""``python -m pytest_dsocr COMMAND``: tools that work on saved runs, without a pytest session.

Each command is a module with ``add_arguments(parser)`` and ``run(args) -> exit status``,
registered below in one line; only the chosen command's module is imported.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pytest_dsocr.errors import DsocrError

PROG = "python -m pytest_dsocr"
DESCRIPTION = "pytest-dsocr tools that work on saved runs, without a pytest session."
EXIT_USAGE = 2

# name -> (module with add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("pytest_dsocr.report.compare", "compare two saved runs stage by stage; exit 1 on a regression"),
    "nsys-report": ("pytest_dsocr.profilers.nsys_cli", "fold an Nsight Systems report into GPU time per stage"),
    "report": ("pytest_dsocr.report.rebuild", "rebuild metrics.json, the summary and report.md from a run's records"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default sys.argv[1:]), run the command, return its exit status.

    A DsocrError (bad path, bad option value, runs not comparable) is printed as one line on
    stderr with exit status 2, like argparse's own usage errors.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = argv[0] if argv else None
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except DsocrError as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
