"""The command line of every job: help that helps, and misuse that gets one line with a remedy.

Everything here runs in-process without Ray (a stand-in ``ray`` module fails any test whose job
touches Ray before reporting the misuse), except two subprocess runs that prove no traceback
reaches a real terminal.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from jobs import _cli, cli, demo, evaluate, finetune, index, sample, search, serve

JOBS = {
    "demo": demo,
    "sample": sample,
    "index": index,
    "search": search,
    "serve": serve,
    "finetune": finetune,
    "evaluate": evaluate,
}
VERSION = importlib.metadata.version("centerclip-indexer")
REPO = Path(__file__).resolve().parents[1]


class _NoRay(types.ModuleType):
    """Stands in for ``ray``: a job that uses it has started work before reporting a misuse.
    Asking whether Ray runs is not using it (the console asks, to stop a Ray the job started)."""

    @staticmethod
    def is_initialized() -> bool:
        return False

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AssertionError(f"ray.{name} was used before the misuse was reported")


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", _NoRay("ray"))


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    """An existing (empty) manifest folder, a db and an out folder that do not exist yet, a file
    that is neither, and a checkpoint path that does not exist."""
    (tmp_path / "manifest").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    return {
        "manifest": str(tmp_path / "manifest"),
        "db": str(tmp_path / "db"),
        "out": str(tmp_path / "out"),
        "file": str(tmp_path / "a-file"),
        "missing": str(tmp_path / "nowhere" / "model.pt"),
    }


def base_argv(job: str, p: dict[str, str]) -> list[str]:
    """The job's required flags, all valid."""
    model = ["--model", "tiny"]
    return {
        "demo": ["--out", p["out"]],
        "sample": ["--out", p["out"], "--videos", "2"],
        "index": ["--manifest", p["manifest"], "--db", p["db"], "--table", "t", *model],
        "search": ["--db", p["db"], "--table", "t", *model, "a red circle"],
        "serve": ["--db", p["db"], "--table", "t", *model],
        "finetune": ["--manifest", p["manifest"], "--out", p["out"], *model],
        "evaluate": ["--manifest", p["manifest"], "--db", p["db"], "--table", "t", *model,
                     "--out", p["out"]],
    }[job]  # fmt: skip


def call(
    main: Callable[[Sequence[str]], int], argv: Sequence[str], capsys: pytest.CaptureFixture
) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``main(argv)``, whether it returns or exits."""
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    return lines[0]


def with_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag``'s value replaced (or the flag added in front of positionals)."""
    if flag in argv:
        argv = list(argv)
        argv[argv.index(flag) + 1] = value
        return argv
    return [flag, value, *argv]


# --------------------------------------------------------------------------------------------
# --help, --version


@pytest.mark.parametrize("job", JOBS)
def test_every_flag_has_help_and_defaults_show(job: str) -> None:
    module = JOBS[job]
    parser = _cli.build_parser(f"python -m jobs.{job}", module.__doc__, module.add_arguments)
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        assert action.help, f"{job}: {action.option_strings or action.dest} has no help"
        default = action.default
        if default in (None, False, "", argparse.SUPPRESS):
            continue
        help_text = " ".join(action.help.split())
        if "default" in help_text.lower():  # states its default in words, once
            assert f"{help_text} (default:" not in text
        else:
            assert f"{help_text} (default: {default})" in text, action.option_strings
    assert "``" not in text  # reStructuredText markup of the module docstrings is stripped
    assert "--verbose show other libraries' warnings and logs on the terminal" in text
    assert "--version print the version and exit" in text


def test_help_examples() -> None:
    parser = _cli.build_parser("python -m jobs.index", index.__doc__, index.add_arguments)
    text = " ".join(parser.format_help().split())
    assert "rows per LanceDB commit (a commit also happens every 30 s) (default: 4096)" in text
    assert "seconds per video (default: 60.0)" in text
    assert "fail (default 1: never)" in text and "never) (default" not in text
    assert "errors table <table>_errors;" in text
    parser = _cli.build_parser("python -m jobs.finetune", finetune.__doc__, finetune.add_arguments)
    text = " ".join(parser.format_help().split())
    assert "passes over the training split (default: 5)" in text
    assert "a checkpoint file that jobs.index --model and jobs.evaluate --model take" in text


@pytest.mark.parametrize("job", JOBS)
def test_help_and_version_exit_zero(job: str, capsys: pytest.CaptureFixture) -> None:
    status, out, err = call(JOBS[job].main, ["--help"], capsys)
    assert status == 0 and "--verbose" in out and not err
    status, out, err = call(JOBS[job].main, ["--version"], capsys)
    assert (status, out, err) == (0, f"centerclip-indexer {VERSION}\n", "")


def test_centerclip_help_lists_each_subcommand_with_a_line(capsys: pytest.CaptureFixture) -> None:
    status, out, _ = call(cli.main, ["--help"], capsys)
    assert status == 0
    text = " ".join(out.split())
    for name in cli.SUBCOMMANDS:
        assert f" {name} {cli.describe(cli.SUBCOMMANDS[name])}" in text
    assert "index Index videos: a Parquet manifest in, a LanceDB table" in text
    assert call(cli.main, ["--version"], capsys) == (0, f"centerclip-indexer {VERSION}\n", "")
    status, out, _ = call(cli.main, ["search", "--help"], capsys)
    assert status == 0 and out.startswith("usage: centerclip search")


def test_version_falls_back_to_pyproject(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert _cli.version() == VERSION


def test_verbose_is_a_flag_of_every_job(paths: dict[str, str]) -> None:
    for job, module in JOBS.items():
        parser = _cli.build_parser(job, module.__doc__, module.add_arguments)
        assert parser.parse_args(base_argv(job, paths)).verbose is False
        assert parser.parse_args([*base_argv(job, paths), "--verbose"]).verbose is True


# --------------------------------------------------------------------------------------------
# misspelled flags and subcommands


def test_misspelled_flag_is_suggested_without_other_complaints(
    paths: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    argv = ["--db", paths["db"], "--table", "t", "--modle", "tiny", "a query"]
    status, _, err = call(search.main, argv, capsys)
    assert status == 2
    assert one_line(err) == (
        "python -m jobs.search: error: unrecognized flag --modle; did you mean --model?"
    )
    status, _, err = call(cli.main, ["search", *argv[:4], "--modle=tiny", "q"], capsys)
    assert status == 2
    assert one_line(err).endswith("error: unrecognized flag --modle; did you mean --model?")


def test_several_unknown_flags_in_one_line(
    paths: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    status, _, err = call(index.main, [*base_argv("index", paths), "--tabel", "x", "--zzz"], capsys)
    assert status == 2
    line = one_line(err)
    assert "unrecognized flags --tabel (did you mean --table?), --zzz;" in line
    assert "--help lists every flag" in line


def test_missing_required_flag_names_it(paths: dict[str, str], capsys: pytest.CaptureFixture):
    status, _, err = call(index.main, base_argv("index", paths)[:-2], capsys)
    assert status == 2
    assert "the following arguments are required: --model" in one_line(err)


def test_negative_values_are_values_not_flags(
    paths: dict[str, str], capsys: pytest.CaptureFixture
) -> None:
    status, _, err = call(search.main, [*base_argv("search", paths), "-k", "-1"], capsys)
    assert status == 2
    assert one_line(err).endswith("error: -k: must be a positive integer, got -1")
    argv = [*base_argv("index", paths), "--keep-versions-days", "-inf"]
    status, _, err = call(index.main, argv, capsys)
    assert status == 2
    assert "--keep-versions-days=VALUE" in one_line(err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["indx"], "centerclip: error: unknown subcommand indx; did you mean index?"),
        (["serch", "q"], "centerclip: error: unknown subcommand serch; did you mean search?"),
        (["nothing-like-it"], "subcommands: demo, sample, index, search, serve, finetune, eval"),
        ([], "centerclip: error: name a subcommand: demo, sample, index"),
        (["--verbose", "index"], "flags go after the subcommand"),
    ],
)
def test_centerclip_misuse(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    status, _, err = call(cli.main, argv, capsys)
    assert status == 2
    assert message in one_line(err)


# --------------------------------------------------------------------------------------------
# bad flag values and paths: argparse rejects them (exit status 2) before the job starts


@pytest.mark.parametrize(
    ("job", "flag", "value", "message"),
    [
        ("index", "--keep-versions-days", "nan", "must be a positive finite number of days"),
        ("index", "--keep-versions-days", "-1", "must be a positive finite number of days"),
        ("index", "--keep-versions-days", "inf", "must be a positive finite number of days"),
        ("index", "--keep-versions-days", "0", "must be a positive finite number of days"),
        ("index", "--keep-versions-days", "1e9", "at most 36500, got 1e9"),
        ("index", "--gpus-per-actor", "nan", "must be a finite number, zero or more"),
        ("index", "--gpus-per-actor", "-1", "must be zero or more"),
        ("index", "--decode-timeout", "inf", "must be a positive finite number"),
        ("index", "--max-error-rate", "nan", "must be a number between 0 and 1"),
        ("index", "--batch-size", "1.5", "must be a positive integer, got 1.5"),
        ("evaluate", "--gpus-per-actor", "inf", "must be a finite number, zero or more"),
        ("evaluate", "-k", "5", "must be at least 10"),
        ("finetune", "--lr", "nan", "must be a positive finite number"),
        ("finetune", "--pretrained-lr", "-0.1", "must be zero or more"),
        ("finetune", "--weight-decay", "inf", "must be a finite number, zero or more"),
        ("finetune", "--grad-clip", "-1", "must be zero or more"),
        ("finetune", "--warmup", "1", "must be from 0 up to (not including) 1"),
        ("finetune", "--batch-size", "1", "must be at least 2"),
        ("finetune", "--seed", "-1", "must be zero or more"),
        ("finetune", "--decode-timeout", "nan", "must be a positive finite number"),
        ("demo", "--lr", "inf", "must be a positive finite number"),
        ("demo", "--batch-size", "1", "must be at least 2"),
        ("sample", "--test-fraction", "nan", "must be a number between 0 and 1"),
        ("sample", "--seed", "-3", "must be zero or more"),
        ("serve", "--port", "70000", "must be a port number (1-65535), got 70000"),
        ("serve", "--port", "0", "must be a positive integer"),
        ("serve", "--replica-cpus", "nan", "must be a positive finite number"),
    ],
)
def test_bad_values_fail_naming_the_flag(
    job: str,
    flag: str,
    value: str,
    message: str,
    paths: dict[str, str],
    capsys: pytest.CaptureFixture,
    no_ray: None,
) -> None:
    status, out, err = call(JOBS[job].main, with_flag(base_argv(job, paths), flag, value), capsys)
    assert status == 2 and not out
    line = one_line(err)
    assert line.startswith(f"python -m jobs.{job}: error: {flag}: ")
    assert message in line and value in line


@pytest.mark.parametrize(
    ("job", "flag", "where", "message"),
    [
        ("index", "--db", "file", "is a file, not a folder; name a folder for the LanceDB"),
        ("search", "--db", "file", "is a file, not a folder"),
        ("serve", "--db", "file", "is a file, not a folder"),
        ("evaluate", "--db", "file", "is a file, not a folder"),
        ("index", "--db", "inside-file", "which is a file"),
        ("evaluate", "--out", "file", "is a file, not a folder; name a folder for the results"),
        ("finetune", "--out", "file", "is a file, not a folder"),
        ("sample", "--out", "file", "is a file, not a folder"),
        ("demo", "--out", "file", "is a file, not a folder"),
        ("sample", "--out", "inside-file", "which is a file"),
    ],
)
def test_a_file_where_a_folder_belongs(
    job: str,
    flag: str,
    where: str,
    message: str,
    paths: dict[str, str],
    capsys: pytest.CaptureFixture,
    no_ray: None,
) -> None:
    path = paths["file"] if where == "file" else str(Path(paths["file"]) / "sub")
    status, _, err = call(JOBS[job].main, with_flag(base_argv(job, paths), flag, path), capsys)
    assert status == 2
    line = one_line(err)
    assert f"error: {flag}: {path} " in line and message in line


# --------------------------------------------------------------------------------------------
# mistakes the job finds: one line, exit status 1, before any work and before Ray


@pytest.mark.parametrize("job", ["index", "search", "serve", "evaluate", "finetune", "demo"])
def test_unknown_preset_names_the_known_ones(
    job: str, paths: dict[str, str], capsys: pytest.CaptureFixture, no_ray: None
) -> None:
    status, _, err = call(JOBS[job].main, [*base_argv(job, paths), "--model", "tinyy"], capsys)
    assert status == 1
    line = one_line(err)
    assert "--model tinyy: unknown preset; did you mean tiny?" in line
    assert "known presets: ViT-B-16-center, ViT-B-32-center" in line
    assert not Path(paths["db"]).exists() and not Path(paths["out"]).exists()


@pytest.mark.parametrize(
    ("job", "extra", "message"),
    [
        ("search", ["--model", "MISSING"], "--model MISSING: no such checkpoint file;"),
        ("index", ["--weights", "MISSING"], "--weights MISSING: no such weights file;"),
        ("evaluate", ["--weights", "pretrained"], "preset tiny has no pretrained weights;"),
        ("finetune", ["--model", "FILE.pt", "--weights", "x.pt"], "carries its own weights"),
        ("search", ["--frames", "5"], "--model tiny --frames 5: frames (5) must divide into"),
        ("demo", ["--frames", "3"], "--model tiny --frames 3 --segments 2: frames (3) must"),
    ],
)
def test_bad_model_flags(
    job: str,
    extra: list[str],
    message: str,
    paths: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    no_ray: None,
) -> None:
    (tmp_path / "FILE.pt").write_bytes(b"")
    replace = {"MISSING": paths["missing"], "FILE.pt": str(tmp_path / "FILE.pt")}
    extra = [replace.get(a, a) for a in extra]
    status, _, err = call(JOBS[job].main, [*base_argv(job, paths), *extra], capsys)
    assert status == 1
    assert message.replace("MISSING", paths["missing"]) in one_line(err)
    assert not Path(paths["db"]).exists() and not Path(paths["out"]).exists()


def test_pretrained_weights_offline_say_how_to_get_them(
    paths: dict[str, str], capsys: pytest.CaptureFixture, no_ray: None
) -> None:
    argv = [*base_argv("search", paths), "--model", "ViT-B-32-center", "--weights", "pretrained"]
    status, _, err = call(search.main, argv, capsys)
    assert status == 1
    line = one_line(err)
    assert "--weights pretrained: preset 'ViT-B-32-center': could not load" in line
    assert "pass its path as the weights (--weights PATH)" in line


@pytest.mark.parametrize("job", ["index", "evaluate", "finetune"])
def test_missing_manifest(
    job: str, paths: dict[str, str], capsys: pytest.CaptureFixture, no_ray: None
) -> None:
    missing = str(Path(paths["manifest"]) / "nope")
    argv = with_flag(base_argv(job, paths), "--manifest", missing)
    status, _, err = call(JOBS[job].main, argv, capsys)
    assert status == 1
    line = one_line(err)
    assert f"--manifest {missing} does not exist;" in line and "jobs.sample" in line
    assert not Path(paths["out"]).exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--videos", "10", "--test-videos", "10"], "--test-videos 10 must be below --videos"),
        (["--videos", "40", "--test-videos", "10"], "--batch-size 64 needs at least as many"),
    ],
)
def test_demo_checks_its_numbers_before_any_work(
    extra: list[str],
    message: str,
    paths: dict[str, str],
    capsys: pytest.CaptureFixture,
    no_ray: None,
) -> None:
    status, _, err = call(demo.main, [*base_argv("demo", paths), *extra], capsys)
    assert status == 1
    assert message in one_line(err)
    assert not Path(paths["out"]).exists()


# --------------------------------------------------------------------------------------------
# a real process: nothing but the line reaches stderr


def run_module(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_a_real_process_prints_one_line(paths: dict[str, str]) -> None:
    done = run_module("jobs.search", *base_argv("search", paths), "--model", "ViT-B-32-centre")
    assert done.returncode == 1 and not done.stdout
    assert "--model ViT-B-32-centre: unknown preset; did you mean ViT-B-32-center?" in one_line(
        done.stderr
    )

    done = run_module("jobs.index", *base_argv("index", paths), "--keep-versions-days", "nan")
    assert done.returncode == 2 and not done.stdout
    assert one_line(done.stderr) == (
        "python -m jobs.index: error: --keep-versions-days: must be a positive finite number "
        "of days, at most 36500, got nan"
    )
