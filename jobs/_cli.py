"""The one command-line style every job shares.

A job module defines ``add_arguments(parser)`` and ``run(args) -> int`` and ends with::

    def main(argv: Sequence[str] | None = None) -> int:
        return _cli.main(__name__, __doc__, add_arguments, run, argv)

so it runs as ``python -m jobs.NAME``, as ``centerclip NAME`` and through ``ray job submit``.
Flag values are checked by the ``type=`` helpers below, so a bad flag fails before any work with a
message that names it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


class JobError(Exception):
    """A failure the user can fix (bad input, bad setting): printed as one line, exit status 1."""


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def build_parser(
    prog: str, description: str | None, add_arguments: AddArguments
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser


def execute(run: Run, args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return run(args)
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def main(
    module: str,
    description: str | None,
    add_arguments: AddArguments,
    run: Run,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the job; returns the exit status."""
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else "jobs"
    parser = build_parser(f"python -m {module}", description, add_arguments)
    return execute(run, parser.parse_args(argv))
