"""Which stage bounds the index job's throughput, and what would balance it.

Pure arithmetic over measured costs, no Ray: the run loop feeds it the per-row columns the stages
emit (``decode_cpu_s`` from the decode stage, ``encode_s`` from the encode stage) and prints
:meth:`Bottleneck.describe`; the resource plan sizes the decode pool with
:func:`decode_cpus_per_encoder`.

Model: decoding one video costs ``d`` CPU-seconds, wherever it runs, so ``C`` decode CPUs decode
``C / d`` videos/s. An encode actor spends ``e`` seconds per video (one GPU, or its CPUs), so
``A`` actors encode ``A / e`` videos/s. The job runs at the smaller of the two; ``d / e`` decode
CPUs per encode actor make them equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DECODE = "decode"
ENCODE = "encode"
# The two capacities within this ratio of each other: neither stage is said to bound the job.
BALANCED_WITHIN = 1.1


@dataclass(frozen=True)
class Bottleneck:
    """What bounds a run: each stage's capacity and the balance point."""

    stage: str
    """``"decode"``, ``"encode"``, or ``"balanced"`` (capacities within ``BALANCED_WITHIN``)."""
    decode_videos_per_s: float
    encode_videos_per_s: float
    decode_cpu_s_per_video: float
    encode_s_per_video: float
    decode_cpus: float
    encode_actors: int
    balanced_decode_cpus_per_encoder: float
    """Decode CPUs per encode actor (per GPU) at which both stages run at the same rate."""

    @property
    def videos_per_s(self) -> float:
        """The throughput the slower stage allows."""
        return min(self.decode_videos_per_s, self.encode_videos_per_s)

    @property
    def decode_cpus_for_balance(self) -> float:
        """Decode CPUs the whole job needs for decoding to keep up with its encode actors."""
        return self.balanced_decode_cpus_per_encoder * self.encode_actors

    def describe(self) -> str:
        """One line: the bounding stage, both capacities, and the balance point."""
        rates = (
            f"decode {self.decode_videos_per_s:.1f} videos/s ({self.decode_cpus:g} CPUs x "
            f"{self.decode_cpu_s_per_video * 1e3:.1f} core-ms/video), encode "
            f"{self.encode_videos_per_s:.1f} videos/s ({self.encode_actors} actor(s) x "
            f"{self.encode_s_per_video * 1e3:.2f} ms/video)"
        )
        per = f"{self.balanced_decode_cpus_per_encoder:.2g} decode CPUs per encode actor balance it"
        if self.stage == DECODE:
            verdict = (
                f"bound by decode: add CPUs ({self.decode_cpus_for_balance:.0f} would keep up)"
            )
        elif self.stage == ENCODE:
            verdict = "bound by encode: more decode CPUs would not help, more GPUs would"
        else:
            verdict = "balanced"
        return f"{verdict}; {rates}; {per}"


def decode_cpus_per_encoder(decode_cpu_s_per_video: float, encode_s_per_video: float) -> float:
    """Decode CPUs that keep one encode actor busy: ``d / e`` (see the module docstring)."""
    _check_positive(decode_cpu_s_per_video=decode_cpu_s_per_video)
    _check_positive(encode_s_per_video=encode_s_per_video)
    return decode_cpu_s_per_video / encode_s_per_video


def find_bottleneck(
    decode_cpu_s: float | Sequence[float] | np.ndarray,
    encode_s: float | Sequence[float] | np.ndarray,
    *,
    decode_cpus: float,
    encode_actors: int,
) -> Bottleneck:
    """Say which stage bounds the throughput.

    Args:
        decode_cpu_s: CPU-seconds of decoding per video: one mean figure, or the per-row
            ``decode_cpu_s`` column ``[N]`` (failed rows included: they cost decoding too).
        encode_s: seconds an encode actor spends per video: one figure, or the per-row
            ``encode_s`` column ``[M]``.
        decode_cpus: CPUs that decode (the decode pool's reservation, or the encode actors'
            own CPUs where they decode their own videos).
        encode_actors: encode actors working in parallel (one per GPU).
    Returns:
        A :class:`Bottleneck`.
    Raises:
        ValueError: on empty, non-finite or non-positive costs, or no CPUs or actors.
    """
    d = _mean_cost("decode_cpu_s", decode_cpu_s)
    e = _mean_cost("encode_s", encode_s)
    _check_positive(decode_cpus=decode_cpus, encode_actors=encode_actors)
    decode_rate = decode_cpus / d
    encode_rate = encode_actors / e
    if decode_rate * BALANCED_WITHIN < encode_rate:
        stage = DECODE
    elif encode_rate * BALANCED_WITHIN < decode_rate:
        stage = ENCODE
    else:
        stage = "balanced"
    return Bottleneck(
        stage=stage,
        decode_videos_per_s=decode_rate,
        encode_videos_per_s=encode_rate,
        decode_cpu_s_per_video=d,
        encode_s_per_video=e,
        decode_cpus=decode_cpus,
        encode_actors=encode_actors,
        balanced_decode_cpus_per_encoder=decode_cpus_per_encoder(d, e),
    )


def _mean_cost(name: str, values: float | Sequence[float] | np.ndarray) -> float:
    array = np.asarray(values, np.float64).reshape(-1)
    if array.size == 0:
        raise ValueError(f"{name}: no measurements")
    mean = float(array.mean())
    if not math.isfinite(mean) or mean <= 0:
        raise ValueError(f"{name}: the mean cost must be positive and finite, got {mean}")
    return mean


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive and finite, got {value}")
