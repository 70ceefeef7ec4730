"""What a job shows its user: its own story (plan, live progress, summary), and nothing else.

Ray, Ray Train, LanceDB and torch print warnings, C++ log lines and tracebacks of their own
(token-auth notices, ``lancedb fork support is experimental``, ``core_worker.cc`` errors,
``PlacementGroupCleaner`` tracebacks), some from native code, some from the processes a job
starts. Filtering them line by line is a game of whack-a-mole, so a job points its process's
file descriptors 1 and 2 (inherited by every process it starts) at a log file, keeps duplicates
of the terminal's, and writes its story through those alone. ``--verbose`` leaves the
descriptors alone, so everything reaches the terminal as before.

The redirection only happens for a process's real standard streams: a caller that replaced
``sys.stdout`` (pytest's ``capsys``, a notebook) keeps getting the story there, while logs
still go to the file.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

# Where the log files go unless CENTERCLIP_LOG_DIR names another folder.
LOG_DIR_VARIABLE = "CENTERCLIP_LOG_DIR"
# Without a terminal (logs, ``ray job submit``), progress is a line this often.
PROGRESS_LINE_EVERY_S = 10.0
# On a terminal, the bar is redrawn at most this often, and at least this often while waiting.
_BAR_REDRAW_S = 0.2
_BAR_TICK_S = 1.0
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class Console:
    """The job's terminal: ``out`` for its story, ``err`` for warnings and errors."""

    out: TextIO
    err: TextIO
    log_path: Path | None
    is_terminal: bool
    redirected: bool = False
    """Whether other output goes to ``log_path`` (the process's descriptors 1 and 2 point there)."""

    preface: str = ""
    """Printed before the first line of the story (the log's path): a job that fails before
    it has anything to say prints one line, its error."""

    def say(self, text: str = "") -> None:
        self.print_preface()
        print(text, file=self.out, flush=True)

    def print_preface(self) -> None:
        if self.preface:
            preface, self.preface = self.preface, ""
            print(preface, file=self.out, flush=True)

    def warn(self, text: str) -> None:
        print(f"warning: {text}", file=self.err, flush=True)

    def error(self, text: str) -> None:
        print(f"error: {text}", file=self.err, flush=True)


_active: Console | None = None


def current() -> Console:
    """The running job's console; outside a job, the process's own streams."""
    if _active is not None:
        return _active
    return Console(sys.stdout, sys.stderr, None, _is_terminal(sys.stdout))


def current_or_none() -> Console | None:
    """The running job's console, or None outside a job."""
    return _active


def say(text: str = "") -> None:
    """Print one line of the job's story."""
    current().say(text)


def warn(text: str) -> None:
    """Print ``warning: text`` where the user sees it."""
    current().warn(text)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _new_log_path(job: str) -> Path:
    folder = Path(os.environ.get(LOG_DIR_VARIABLE) or Path(tempfile.gettempdir(), "centerclip"))
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return folder / f"{job}-{stamp}-{os.getpid()}.log"


@contextlib.contextmanager
def job_console(job: str, *, verbose: bool, log_level: str = "INFO") -> Iterator[Console]:
    """Set up the terminal for one job run (see the module docstring); nested runs (the demo
    runs the other jobs in-process) share the outer run's console and log file."""
    global _active
    if _active is not None:
        yield _active
        return
    if verbose:
        logging.basicConfig(level=log_level, format=_LOG_FORMAT, stream=sys.stderr, force=True)
        _active = Console(sys.stdout, sys.stderr, None, _is_terminal(sys.stdout))
        try:
            yield _active
        finally:
            _active = None
        return

    log_path = _new_log_path(job)
    real_streams = sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__
    with contextlib.ExitStack() as stack:
        if real_streams:
            console = stack.enter_context(_redirected_descriptors(log_path))
        else:
            console = Console(sys.stdout, sys.stderr, log_path, _is_terminal(sys.stdout))
        log_file = stack.enter_context(open(log_path, "a", buffering=1))
        handler = logging.StreamHandler(log_file)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        root = logging.getLogger()
        saved = (root.handlers[:], root.level)
        root.handlers[:] = [handler]
        root.setLevel(log_level)
        stack.callback(_restore_logging, root, *saved)
        stack.enter_context(_warnings_to(log_file))
        _active = console
        stack.callback(_clear_active)
        # A Ray the job started itself (the embedded local one) stops with the job, while its
        # output still goes to the log: its log monitor would otherwise print workers' last
        # lines on the terminal after the summary.
        if not _ray_is_initialized():
            stack.callback(_shutdown_ray_if_started)
        stack.callback(_drop_colour_reset_at_exit)
        yield console


def _ray_is_initialized() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _shutdown_ray_if_started() -> None:
    if _ray_is_initialized():
        sys.modules["ray"].shutdown()


def _drop_colour_reset_at_exit() -> None:
    """Ray's bundled colorama, initialised when Ray is imported, registers an exit handler that
    writes a colour reset code to the terminal after the job's summary; no job prints colour."""
    colorama = sys.modules.get("colorama.initialise")
    if colorama is not None:
        atexit.unregister(colorama.reset_all)


def _clear_active() -> None:
    global _active
    _active = None


def _restore_logging(root: logging.Logger, handlers: list[logging.Handler], level: int) -> None:
    root.handlers[:] = handlers
    root.setLevel(level)


@contextlib.contextmanager
def _warnings_to(log_file: TextIO) -> Iterator[None]:
    import warnings

    shown = warnings.showwarning

    def to_log(message, category, filename, lineno, file=None, line=None) -> None:
        log_file.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = to_log
    try:
        yield
    finally:
        warnings.showwarning = shown


@contextlib.contextmanager
def _redirected_descriptors(log_path: Path) -> Iterator[Console]:
    """Point descriptors 1 and 2 at ``log_path``; the console writes to copies of the old ones."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    terminal_out, terminal_err = os.dup(1), os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    is_terminal = os.isatty(terminal_out)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    out = os.fdopen(terminal_out, "w", buffering=1)
    err = os.fdopen(terminal_err, "w", buffering=1)
    try:
        yield Console(out, err, log_path, is_terminal, redirected=True)
    finally:
        for stream in (sys.stdout, sys.stderr, out, err):
            stream.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        out.close()
        err.close()


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3725`` -> ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """A live progress report: ``done`` of ``total`` items, rate, failures and ETA.

    On a terminal, one bar redrawn in place (and ticking while no item arrives, so start-up
    shows its elapsed time); elsewhere, one line every ``every_s`` seconds and a last one at
    the end. The rate is the steady state's: it counts from the first item that arrives, so the
    start-up (Ray, actors loading models) does not dilute it.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        unit: str = "videos",
        console: Console | None = None,
        every_s: float = PROGRESS_LINE_EVERY_S,
        count_failures: bool = True,
    ) -> None:
        self.label = label
        self.count_failures = count_failures
        self.total = total
        self.unit = unit
        self.console = console or current()
        self.every_s = every_s
        self.done = 0
        self.failed = 0
        self.note = ""
        self.started = time.perf_counter()
        self._first: tuple[float, int] | None = None  # (time, done) of the first arrival
        self._drawn = -math.inf  # the first update is shown at once
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()

    def update(self, done: int, failed: int = 0, *, note: str = "") -> None:
        """``done`` items so far, ``failed`` of them; ``note`` (e.g. the latest loss) is shown
        after the figures."""
        now = time.perf_counter()
        with self._lock:
            if self._first is None and done > 0:
                self._first = (now, done)
            self.done, self.failed, self.note = done, failed, note
            if self.console.is_terminal:
                if now - self._drawn >= _BAR_REDRAW_S or done >= self.total:
                    self._draw(now)
            elif now - self._drawn >= self.every_s:
                self._draw(now)

    def say_above(self, text: str) -> None:
        """A line of the story while the bar runs: printed above the bar, which is redrawn."""
        with self._lock:
            if self.console.is_terminal:
                self.console.out.write("\r" + " " * (self._width() - 1) + "\r")
            self.console.say(text)
            if self.console.is_terminal:
                self._draw(time.perf_counter())

    def rate(self, now: float | None = None) -> float | None:
        """Items per second since the first arrival, or None before two points exist."""
        if self._first is None:
            return None
        now = time.perf_counter() if now is None else now
        first_time, first_done = self._first
        if self.done <= first_done or now <= first_time:
            return None
        return (self.done - first_done) / (now - first_time)

    def close(self) -> None:
        self._stop.set()
        self._ticker.join()
        with self._lock:
            self._draw(time.perf_counter())
            if self.console.is_terminal:
                self.console.out.write("\n")
                self.console.out.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tick(self) -> None:
        interval = _BAR_TICK_S if self.console.is_terminal else self.every_s
        while not self._stop.wait(interval):
            with self._lock:
                now = time.perf_counter()
                if now - self._drawn >= interval * 0.9:
                    self._draw(now)

    def text(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        share = min(self.done / max(self.total, 1), 1.0)
        parts = [f"{self.label} {self.done}/{self.total} {self.unit} ({share:.0%})"]
        rate = self.rate(now)
        if self._first is None:
            parts.append(f"starting {format_duration(now - self.started)}")
        elif rate is not None:
            parts.append(f"{rate:.1f} {self.unit}/s")
            if self.done < self.total:
                parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        if self.count_failures:
            parts.append(f"{self.failed} failed")
        if self.note:
            parts.append(self.note)
        return " | ".join(parts)

    def _draw(self, now: float) -> None:
        self._drawn = now
        text = self.text(now)
        if not self.console.is_terminal:
            self.console.say(text)
            return
        self.console.print_preface()
        width = self._width()
        bar_width = min(30, width - len(text) - 4)
        line = text
        if bar_width >= 10:  # the bar goes first when the terminal is narrow
            filled = round(bar_width * min(self.done / max(self.total, 1), 1.0))
            line = f"[{'#' * filled}{'.' * (bar_width - filled)}] {text}"
        self.console.out.write("\r" + line[: width - 1].ljust(width - 1))
        self.console.out.flush()

    def _width(self) -> int:
        try:
            width = os.get_terminal_size(self.console.out.fileno()).columns
        except (AttributeError, OSError, ValueError):
            width = 0
        if width < 20:  # a pseudo-terminal that never got a size
            width = int(os.environ.get("COLUMNS", "100"))
        return width


class ProgressOnDemand:
    """A :class:`Progress` started by its first update, which says how much work there is
    (a pipeline learns it only once it has planned); until then, and if it never starts,
    lines go straight to the console and closing does nothing."""

    def __init__(self, label: str, *, unit: str = "videos", count_failures: bool = True) -> None:
        self.label = label
        self.unit = unit
        self.count_failures = count_failures
        self.progress: Progress | None = None

    def update(self, done: int, total: int, *, failed: int = 0, note: str = "") -> None:
        if self.progress is None:
            self.progress = Progress(
                self.label, total, unit=self.unit, count_failures=self.count_failures
            )
        self.progress.update(done, failed, note=note)

    def say_above(self, text: str) -> None:
        if self.progress is None:
            say(text)
        else:
            self.progress.say_above(text)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
