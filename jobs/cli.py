"""Every job under one command: centerclip SUBCOMMAND, then the flags of that job."""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from jobs import _cli

SUBCOMMANDS = {
    "demo": "jobs.demo",
    "sample": "jobs.sample",
    "index": "jobs.index",
    "search": "jobs.search",
    "serve": "jobs.serve",
    "finetune": "jobs.finetune",
    "evaluate": "jobs.evaluate",
}


def describe(module: str) -> str:
    """The first paragraph of a job module's docstring, read without importing the module (no
    torch, no Ray), so ``centerclip --help`` answers at once."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ""
    return _cli.summary(ast.get_docstring(ast.parse(Path(spec.origin).read_text())))


def build_parser() -> _cli.Parser:
    width = max(map(len, SUBCOMMANDS)) + 2
    lines = ["subcommands (centerclip SUBCOMMAND --help lists its flags):"]
    for name, module in SUBCOMMANDS.items():
        lines.append(
            textwrap.fill(
                describe(module),
                width=100,
                initial_indent=f"  {name:<{width}}",
                subsequent_indent=" " * (width + 2),
            )
        )
    parser = _cli.Parser(
        prog="centerclip",
        usage="centerclip SUBCOMMAND [flags]",
        description=_cli.summary(__doc__),
        epilog="\n".join(lines),
        formatter_class=_cli.HelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"{_cli.DISTRIBUTION} {_cli.version()}",
        help="print the version and exit",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]])
        sub_parser = _cli.build_parser(
            f"centerclip {argv[0]}", module.__doc__, module.add_arguments
        )
        return _cli.execute(module.run, sub_parser.parse_args(argv[1:]), argv[0])
    parser = build_parser()
    names = ", ".join(SUBCOMMANDS)
    if not argv:
        parser.error(f"name a subcommand: {names}; centerclip --help says what each does")
    if argv[0] in ("-h", "--help", "--version"):
        parser.parse_args(argv)  # prints and exits
    if argv[0].startswith("-"):
        parser.error(
            f"flags go after the subcommand (centerclip SUBCOMMAND {argv[0]} ...); "
            f"subcommands: {names}"
        )
    close = difflib.get_close_matches(argv[0], list(SUBCOMMANDS), n=1)
    hint = f"did you mean {close[0]}?" if close else f"subcommands: {names}"
    parser.error(f"unknown subcommand {argv[0]}; {hint}")


if __name__ == "__main__":
    raise SystemExit(main())
