"""What the jobs show their user: the plan once, a live progress bar, a summary; other
libraries' output in a log file whose path the job prints, never on the terminal."""

from __future__ import annotations

import argparse
import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import lancedb
import pytest

from jobs import _cli, _console
from pipelines.index import IndexSummary

REPO = Path(__file__).resolve().parents[1]
# What other libraries print on a job's terminal when nothing stops them (issue #12's report).
THIRD_PARTY = (
    "Token authentication",
    "lancedb fork support",
    "RuntimeWarning",
    "core_worker.cc",
    "PlacementGroupCleaner",
    "Traceback",
    "Total Progress",
    "MapWorker",
    "INFO",
    "WARNING",
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _environment(log_dir: Path, *, keep_ray_settings: bool = False) -> dict[str, str]:
    """This process's environment, less the ``RAY_*`` settings the session's Ray left in it
    (its cluster's auth among them) unless the job joins that cluster."""
    env = {
        name: value
        for name, value in os.environ.items()
        if keep_ray_settings or not name.startswith("RAY_")
    }
    env.update(HF_HUB_OFFLINE="1", CENTERCLIP_LOG_DIR=str(log_dir), COLUMNS="120")
    return env


def run_in_terminal(argv: list[str], env: dict[str, str], timeout_s: float) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal (120 columns) as its stdin, stdout and stderr; its
    exit status and everything it wrote, as written."""
    terminal, child_end = pty.openpty()
    fcntl.ioctl(child_end, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        argv, stdin=child_end, stdout=child_end, stderr=child_end, env=env, cwd=REPO,
        start_new_session=True,
    )  # fmt: skip
    os.close(child_end)
    chunks = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if not select.select([terminal], [], [], 1.0)[0]:
                continue
            try:
                data = os.read(terminal, 1 << 16)
            except OSError:  # EIO: every process holding the terminal has closed it
                break
            if not data:
                break
            chunks.append(data)
        else:
            process.kill()
            pytest.fail(f"{argv} did not finish within {timeout_s:g}s")
        status = process.wait(timeout=60)
    finally:
        os.close(terminal)
    return status, b"".join(chunks).decode(errors="replace")


def screen_lines(output: str) -> list[str]:
    """The lines as printed, ANSI codes removed, each redraw of a progress bar (after a carriage
    return) apart."""
    text = _ANSI.sub("", output)
    return [line.rstrip() for line in re.split(r"\r\n|\r|\n", text) if line.strip()]


def test_the_demo_on_a_terminal_tells_each_jobs_story_and_nothing_else(tmp_path: Path) -> None:
    """Every job, run by the demo in one process: its command, progress bar and summary."""
    argv = [
        sys.executable, "-m", "jobs.demo", "--out", str(tmp_path / "demo"),
        "--videos", "24", "--test-videos", "8", "--epochs", "1", "--batch-size", "8",
    ]  # fmt: skip
    status, output = run_in_terminal(argv, _environment(tmp_path / "logs"), timeout_s=540)
    lines = screen_lines(output)
    assert status == 0, output[-3000:]

    def bar(pattern: str) -> None:
        assert any(re.match(r"\[#+\.*\] " + pattern, line) for line in lines), pattern

    bar(r"writing 24/24 videos \(100%\)")
    bar(r"training 2/2 steps \(100%\)")
    bar(r"indexing 8/8 videos \(100%\) \| .*0 failed")
    bar(r"evaluating 4/4 steps \(100%\)")
    for summary in (
        "wrote 24 videos to",  # sample
        "steps:        2 of 2",  # finetune
        "indexed     8 videos with tiny@sha256:",  # index
        "t2v chance",  # evaluate
        'query: "',  # search
        "demo: text-to-video R@1",
    ):
        assert any(line.startswith(summary) for line in lines), summary
    assert sum(line.startswith("plan: ") for line in lines) == 1
    assert not any("random weights" in line for line in lines)  # the demo's model is trained

    assert [line for line in lines if any(text in line for text in THIRD_PARTY)] == []
    # Nothing after the summary: not even the colour reset Ray's colorama writes at exit.
    assert not output.rstrip().endswith("\x1b[0m"), repr(output[-200:])
    logs = [line for line in lines if line.startswith("log: ")]
    assert len(logs) == 1
    log_file = Path(logs[0].split()[1])
    assert log_file.parent == tmp_path / "logs"
    assert "Started a local Ray instance" in log_file.read_text()  # it went here instead


def test_index_without_a_terminal_prints_its_story_and_warns_of_random_weights(
    ray_session: dict, sample_corpus: Path, tmp_path: Path
) -> None:
    """As under ``ray job submit`` (a driver joining a running cluster) or in a log: lines
    instead of a bar, the warning on stderr."""
    db = tmp_path / "db"
    done = subprocess.run(
        [sys.executable, "-m", "jobs.index", "--manifest", str(sample_corpus / "manifest"),
         "--db", str(db), "--table", "videos", "--model", "tiny", "--split", "test",
         "--gpus-per-actor", "0", "--address", ray_session["address"]],
        cwd=REPO, env=_environment(tmp_path / "logs", keep_ray_settings=True),
        capture_output=True, text=True,
        timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout.splitlines()
    assert out[0].startswith("log: ")
    assert [line for line in out if line.startswith("plan: ")] == ["plan: new=3, deleted=0"]
    assert "indexing 3/3 videos (100%) | 0 failed" in out
    assert [line for line in out if any(text in line for text in THIRD_PARTY)] == []
    assert done.stderr.splitlines() == [
        "warning: tiny@untrained-seed0/T8-B2-S4-K32-kmedoids-euclidean-it20 has random weights "
        "(no --weights given): its embeddings mean nothing yet; pass --weights pretrained or a "
        "weights file, or a fine-tuned model.pt as --model"
    ]
    rows = lancedb.connect(str(db)).open_table("videos").count_rows()
    assert f"indexed     {rows} videos with tiny@untrained-seed0" in done.stdout
    assert f"tables      videos: {rows} rows; videos_errors: 0 rows" in done.stdout


def _console_into(out: io.StringIO, *, terminal: bool) -> _console.Console:
    return _console.Console(out, out, None, terminal)


def test_progress_lines_count_rows_failures_and_end_with_a_final_line() -> None:
    out = io.StringIO()
    progress = _console.Progress(
        "indexing", 10, console=_console_into(out, terminal=False), every_s=3600
    )
    for done in (2, 4, 6):
        progress.update(done, failed=1)
    progress.close()
    # The first line is shown at once, the next would be due in an hour: then the final one.
    first, last = out.getvalue().splitlines()
    assert first == "indexing 2/10 videos (20%) | 1 failed"
    assert last.startswith("indexing 6/10 videos (60%) | ") and last.endswith(" | 1 failed")
    assert "videos/s | ETA " in last


def test_progress_on_a_terminal_redraws_one_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    out = io.StringIO()
    with _console.Progress("training", 4, unit="steps", console=_console_into(out, terminal=True)):
        pass
    drawn = out.getvalue()
    assert drawn.startswith("\r[..............................] training 0/4 steps (0%)")
    assert drawn.endswith("\n") and drawn.count("\n") == 1


def test_throughput_is_the_steady_states_and_start_up_is_reported_apart() -> None:
    summary = IndexSummary(model_id="m", plan={}, table="videos", db="db")
    summary.seconds = {"plan": 1.0, "startup": 30.0, "pipeline": 34.0, "total": 35.0}
    summary.results = [(1000.0, 8), (1002.0, 24), (1004.0, 40)]  # (time, rows so far)
    summary.indexed = 40
    assert summary.steady_videos_per_second == 8.0  # 32 rows in 4 s; 40 / 34 s would be 1.2
    text = summary.format()
    assert "throughput  8.00 videos/s in the steady state, after 30.0 s of start-up" in text
    assert "start-up 30.0 s, work 4.0 s" in text


def _job(raise_: BaseException) -> _cli.Run:
    def run(args: argparse.Namespace) -> int:
        raise raise_

    return run


def test_an_unexpected_error_is_one_line_and_its_traceback_goes_to_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv(_console.LOG_DIR_VARIABLE, str(tmp_path))
    args = argparse.Namespace(log_level="INFO", verbose=False)
    assert _cli.execute(_job(RuntimeError("disk on fire\nmore detail")), args, "index") == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: RuntimeError: disk on fire (the full traceback is in ")
    (log_file,) = tmp_path.glob("index-*.log")
    assert "Traceback" in log_file.read_text() and "more detail" in log_file.read_text()

    assert _cli.execute(_job(_cli.JobError("--db x: is a file")), args, "index") == 1
    assert capsys.readouterr().err == "error: --db x: is a file\n"


def test_verbose_leaves_unexpected_errors_alone() -> None:
    args = argparse.Namespace(log_level="INFO", verbose=True)
    with pytest.raises(RuntimeError, match="disk on fire"):
        _cli.execute(_job(RuntimeError("disk on fire")), args, "index")
