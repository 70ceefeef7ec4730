"""``centerclip SUBCOMMAND ...``: every job under one command, with the flags of its module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from jobs import _cli

SUBCOMMANDS = {
    "demo": "jobs.demo",
    "sample": "jobs.sample",
    "index": "jobs.index",
    "search": "jobs.search",
    "finetune": "jobs.finetune",
    "evaluate": "jobs.evaluate",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="centerclip", description=__doc__)
    parser.add_argument("subcommand", choices=sorted(SUBCOMMANDS))
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv[:1])
    module = importlib.import_module(SUBCOMMANDS[argv[0]])
    sub_parser = _cli.build_parser(f"centerclip {argv[0]}", module.__doc__, module.add_arguments)
    return _cli.execute(module.run, sub_parser.parse_args(argv[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
