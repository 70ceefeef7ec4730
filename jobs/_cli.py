"""The one command-line style every job shares.

A job module defines ``add_arguments(parser)`` and ``run(args) -> int`` and ends with::

    def main(argv: Sequence[str] | None = None) -> int:
        return _cli.main(__name__, __doc__, add_arguments, run, argv)

so it runs as ``python -m jobs.NAME``, as ``centerclip NAME`` and through ``ray job submit``.
Flag values are checked by the ``type=`` helpers below, so a bad flag fails before any work with a
message that names it. Every misuse is one line on stderr with a remedy, never a traceback: a
command-line mistake (a misspelled or missing flag, a bad value) exits with status 2 through
:class:`Parser`, a mistake found by the job (a missing manifest, an unknown preset) with status 1
through :class:`JobError`. ``--help`` shows every flag with its default; ``--version`` the
package's version.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import logging
import math
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

DISTRIBUTION = "centerclip-indexer"
# LanceDB computes "now - N days"; far beyond this it overflows (the date range ends near
# 262,000 years), and anything this long already keeps every version.
MAX_KEEP_DAYS = 36500
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# argparse reads these as values, not flags, when no flag of the parser looks like a number.
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


class JobError(Exception):
    """A failure the user can fix (bad input, bad setting): printed as one line, exit status 1."""


def version() -> str:
    """The installed package's version, or pyproject.toml's in a source tree not installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    except OSError:
        return "unknown"
    found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return found.group(1) if found else "unknown"


def summary(doc: str | None) -> str:
    """The first paragraph of a module docstring as one line of plain text."""
    first = plain_text(doc or "").strip().split("\n\n")[0]
    return " ".join(first.split())


def plain_text(doc: str) -> str:
    """A docstring without its reStructuredText markup (``literal`` -> literal), for --help."""
    return doc.replace("``", "")


# --- type= helpers: each names what it wants in the error, which argparse prefixes with the flag.


def _number(text: str, convert: Callable[[str], float], wanted: str) -> float:
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(_number(text, int, "a positive integer"))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(_number(text, int, "an integer, zero or more"))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def at_least(minimum: int) -> Callable[[str], int]:
    """An integer of at least ``minimum``."""

    def check(text: str) -> int:
        value = int(_number(text, int, f"an integer of at least {minimum}"))
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    check.__name__ = f"at_least_{minimum}"
    return check


def positive_float(text: str) -> float:
    value = _number(text, float, "a positive finite number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float, "a finite number, zero or more")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def fraction(text: str) -> float:
    value = _number(text, float, "a number between 0 and 1")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def fraction_below_one(text: str) -> float:
    value = _number(text, float, "a number from 0 up to (not including) 1")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 up to (not including) 1, got {text}")
    return value


def days(text: str) -> float:
    wanted = f"a positive finite number of days, at most {MAX_KEEP_DAYS}"
    value = _number(text, float, wanted)
    if not 0 < value <= MAX_KEEP_DAYS:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
    return value


def _local_path(text: str) -> Path | None:
    """The local path ``text`` names (a plain path or ``file://``); None for other URIs (s3://)."""
    if not _SCHEME.match(text):
        return Path(text)
    url = urllib.parse.urlparse(text)
    return Path(urllib.parse.unquote(url.path)) if url.scheme == "file" else None


def _check_folder(text: str, what: str) -> None:
    path = _local_path(text)
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} is a file, not a folder; name a folder for {what} (created if missing)"
        )
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(
                    f"{text} is inside {parent}, which is a file; name a folder for {what}"
                )
            break


def database(text: str) -> str:
    """A LanceDB folder or URI: a local one must not be a file."""
    _check_folder(text, "the LanceDB database")
    return text


def output_folder(text: str) -> Path:
    """A local output folder, created if missing: it must not be a file."""
    if _local_path(text) != Path(text):
        raise argparse.ArgumentTypeError(f"must be a local folder, got {text}")
    _check_folder(text, "the results")
    return Path(text)


def output_location(text: str) -> str:
    """A local output folder (as :func:`output_folder`) or an ``s3://`` prefix, as given."""
    if text.startswith("s3://"):
        return text
    return str(output_folder(text))


def check_manifest_exists(sources: Sequence[str]) -> None:
    """Fail (:class:`JobError`) when a local ``--manifest`` path does not exist.

    Called first in ``run()``, not as a ``type=`` helper: a mistaken path is missing input, not
    a malformed flag, so it is reported after every flag value has been checked.
    """
    for source in sources:
        path = _local_path(source)
        if path is not None and not path.exists():
            raise JobError(
                f"--manifest {source} does not exist; name Parquet shards or folders of them "
                "(python -m jobs.sample --out DIR writes a sample to DIR/manifest)"
            )


# --- the parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` to a flag's help where it has a default its text does not state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is False
            or default is argparse.SUPPRESS
            or default == ""
            or "default" in text.lower()
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line with a remedy: a misspelled flag gets a
    suggestion (``did you mean --model?``) instead of a complaint about the flag it misspells,
    and no usage block is printed (``--help`` has it)."""

    _argv: Sequence[str] = ()

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")  # "--db: ..." rather than "argument --db: ..."
        unknown = self.unknown_flags(self._argv)
        if unknown:
            message = self._describe_unknown(unknown)
        elif "expected one argument" in message or "expected at least one argument" in message:
            flag = message.split(":")[0].split("/")[-1]
            message += f"; a value that starts with '-' goes after '=': {flag}=VALUE"
        elif message.startswith(("the following arguments are required", "unrecognized")):
            message += f"; {self.prog} --help lists every flag"
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _known(self, token: str) -> argparse.Action | None:
        actions = self._option_string_actions
        name = token.split("=", 1)[0]
        if name in actions:
            return actions[name]
        if not name.startswith("--"):  # a short flag with its value attached: -k5
            return actions.get(name[:2])
        if self.allow_abbrev:  # an unambiguous prefix; argparse reports ambiguous ones itself
            matches = [actions[o] for o in actions if o.startswith(name)]
            if matches:
                return matches[0]
        return None

    def unknown_flags(self, argv: Sequence[str]) -> list[str]:
        """The tokens of ``argv`` that look like flags this parser does not have."""
        unknown: list[str] = []
        takes_value = False
        for token in argv:
            if token == "--":
                break
            follows_flag, takes_value = takes_value, False
            if (
                len(token) < 2
                or not token.startswith("-")
                or " " in token
                or _NEGATIVE_NUMBER.match(token)
            ):
                continue
            action = self._known(token)
            if action is None:
                # Right after a flag that takes a value, argparse reports that flag's missing
                # value (and error() says how to pass one that starts with '-').
                if not follows_flag:
                    unknown.append(token.split("=", 1)[0])
                continue
            takes_value = action.nargs != 0 and "=" not in token
        return unknown

    def _describe_unknown(self, unknown: list[str]) -> str:
        flags = sorted(o for o in self._option_string_actions if o.startswith("--"))
        close = [difflib.get_close_matches(flag, flags, n=1) for flag in unknown]
        if len(unknown) == 1 and close[0]:
            return f"unrecognized flag {unknown[0]}; did you mean {close[0][0]}?"
        parts = [
            f"{flag} (did you mean {match[0]}?)" if match else flag
            for flag, match in zip(unknown, close, strict=True)
        ]
        noun = "flag" if len(unknown) == 1 else "flags"
        return f"unrecognized {noun} {', '.join(parts)}; {self.prog} --help lists every flag"


def build_parser(
    prog: str, description: str | None, add_arguments: AddArguments
) -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog,
        description=plain_text(description) if description else None,
        formatter_class=HelpFormatter,
    )
    add_arguments(parser)
    common = parser.add_argument_group("every job")
    common.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the lowest level of log messages shown",
    )
    common.add_argument(
        "--verbose",
        action="store_true",
        help="show other libraries' warnings and logs on the terminal instead of only in the "
        "log file",
    )
    common.add_argument(
        "--version",
        action="version",
        version=f"{DISTRIBUTION} {version()}",
        help="print the version and exit",
    )
    return parser


def execute(run: Run, args: argparse.Namespace, job: str) -> int:
    """Run the job with its console (``jobs/_console.py``): its story on the terminal, other
    libraries' output in a log file unless ``--verbose``. A :class:`JobError` is one line; so
    is an unexpected exception, whose traceback goes to the log file (or, with ``--verbose``, to
    the terminal as usual)."""
    from jobs import _console
    from pipelines.faults import storage_fault

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    verbose = getattr(args, "verbose", False)
    outermost = _console.current_or_none() is None
    with _console.job_console(job, verbose=verbose, log_level=args.log_level) as console:
        if outermost and console.redirected:
            console.preface = (
                f"log: {console.log_path} (other libraries' output; --verbose shows it)"
            )
        try:
            return run(args)
        except JobError as err:
            cause = err.__cause__
            console.error((storage_fault(cause) if cause is not None else None) or str(err))
            return 1
        except KeyboardInterrupt:
            console.error("interrupted; rerun the same command to finish what is missing")
            return 130
        except Exception as err:
            if verbose or console.log_path is None:
                raise
            logging.getLogger(job).exception("the job failed")
            said = storage_fault(err) or f"{type(err).__name__}: {_first_line(err)}"
            console.error(
                f"{said} (the full traceback is in {console.log_path}; --verbose shows it here)"
            )
            return 1


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else "no message"


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
    return execute(run, parser.parse_args(argv), module.rsplit(".", 1)[-1])
