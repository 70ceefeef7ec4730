"""Helpers shared by the benchmark scripts in ``bench/``.

Every benchmark records where and with what it ran (:func:`run_metadata`), writes one JSON file to
``bench/results/`` (:func:`write_results`) and prints a plain-text table (:func:`print_table`).
Importing this module also makes the repository root importable, so a benchmark runs both as
``python -m bench.NAME`` and as ``python bench/NAME.py``.
"""

from __future__ import annotations

import contextlib
import datetime as _datetime
import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# ``python bench/NAME.py`` puts ``bench/`` first on sys.path, not the repository root; put the root
# first so the project's packages (``centerclip``...) resolve to this checkout.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def now_iso() -> str:
    """The current time, ISO 8601 with the UTC offset, to the second."""
    return _datetime.datetime.now(_datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # every processor's block repeats the first's identity
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_identity() -> dict[str, Any]:
    """Family, model and stepping, and the widest vector extension (Linux only; empty elsewhere).

    A cloud VM's "model name" may hide which CPU it runs on, and figures (speed, and the bits of
    a trained model: kernels differ per vector width) differ between hosts of one name."""
    fields = _cpuinfo()
    if not fields:
        return {}
    flags = set(fields.get("flags", "").split())
    widest = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), None)
    return {
        "family": fields.get("cpu family"),
        "model": fields.get("model"),
        "stepping": fields.get("stepping"),
        "widest_vector_extension": widest,
    }


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, else ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_gib() -> float | None:
    """Total RAM in GiB, where ``/proc/meminfo`` says."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: above ``cores``, other processes compete for the
    CPU and timings are noisy."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def system_busy_seconds() -> float | None:
    """CPU seconds all processes of the machine have used since boot (``/proc/stat``: user, nice,
    system, irq, softirq and steal, summed over cores), or ``None`` off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    except (OSError, ValueError, IndexError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def contention_meter() -> Iterator[dict[str, float | None]]:
    """Measure how much CPU *other* processes (and, on a VM, other guests: steal) took while the
    block ran. Yields a dict filled on exit: ``wall_seconds``, ``own_cpu_seconds``,
    ``other_cpu_seconds`` and ``other_busy_cores`` (other processes' CPU time / wall time; near 0
    on a quiet machine, near the core count when the machine is saturated by others)."""
    result: dict[str, float | None] = {}
    wall, busy, own = time.perf_counter(), system_busy_seconds(), os.times()
    try:
        yield result
    finally:
        wall = time.perf_counter() - wall
        end_own = os.times()
        own_seconds = (end_own.user + end_own.system) - (own.user + own.system)
        end_busy = system_busy_seconds()
        other = None if busy is None or end_busy is None else end_busy - busy - own_seconds
        result.update(
            wall_seconds=round(wall, 3),
            own_cpu_seconds=round(own_seconds, 3),
            other_cpu_seconds=None if other is None else round(max(other, 0.0), 3),
            other_busy_cores=None if other is None else round(max(other, 0.0) / wall, 3),
        )


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, torch threads and (if present) the GPU."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_identity": cpu_identity(),
        "cores": usable_cores(),
        "memory_gib": memory_gib(),
        "load_average_1_5_15min": load_average(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            info["gpu"] = props.name
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["gpu_count"] = torch.cuda.device_count()
    except ImportError:
        pass
    return info


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, Any]:
    """Versions of Python, torch (and its CUDA), open_clip, PyAV, torchcodec (None where it is
    not installed) and this project."""
    found: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "open_clip": _version("open_clip_torch"),
        "numpy": _version("numpy"),
        "av": _version("av"),
        "torchcodec": _version("torchcodec"),
        "centerclip_indexer": _version("centerclip-indexer"),
    }
    try:
        import torch

        found["torch"] = torch.__version__
        found["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return found


def git_commit() -> str | None:
    """The checkout's HEAD commit (and ``+dirty`` with uncommitted changes), if git is there;
    else ``BENCH_GIT_COMMIT``, which a copy of the tree made without git (a rented GPU machine)
    is named by."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("BENCH_GIT_COMMIT")
    return head + ("+dirty" if dirty else "")


def run_metadata() -> dict[str, Any]:
    """``date``, ``machine``, ``versions`` and ``git_commit``: the context every result carries."""
    return {
        "date": now_iso(),
        "machine": machine_info(),
        "versions": versions(),
        "git_commit": git_commit(),
    }


def write_results(
    name: str,
    payload: dict[str, Any],
    *,
    directory: Path | None = None,
    output: Path | None = None,
) -> Path:
    """Write ``payload`` as ``<name>.json`` in ``directory`` (default ``bench/results/``), or as
    the file ``output`` when a script's ``--output`` names one (pretty, keys in insertion order).

    Written to a temporary file and renamed, so a reader never sees half a file.
    """
    if output is not None:
        path = Path(output)
    else:
        path = (RESULTS_DIR if directory is None else Path(directory)) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(temporary, path)
    return path


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def print_table(
    rows: Sequence[Sequence[Any]],
    headers: Sequence[str],
    *,
    title: str | None = None,
    file: Any = None,
) -> str:
    """Print ``rows`` as an aligned plain-text table (floats to 3 significant digits) and return
    the text. Strings are printed as given, so callers format figures that need units."""
    cells = [[format_cell(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.ljust(width) for value, width in zip(values, widths, strict=True))

    out = [line(headers), "  ".join("-" * width for width in widths)]
    out += [line(row) for row in cells]
    if title:
        out.insert(0, title)
    text = "\n".join(line.rstrip() for line in out)
    print(text, file=file if file is not None else sys.stdout, flush=True)
    return text
