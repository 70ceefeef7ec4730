"""The recall@K figure (``recall_at_k.png``, and inlined in ``report.html``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from centerclip.metrics import chance_recall_at_k_curve, recall_at_k_curve
from pipelines.evaluate.ranks import AnnRanks

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Factor of empty log-axis room beyond K = 1 and the last K.
_K_MARGIN = 1.1


def k_ticks(max_k: int) -> list[int]:
    """The 1-2-5 sequence up to ``max_k`` (1, 2, 5, 10, 20, 50, ...): readable integer ticks for
    a log K axis."""
    ticks = []
    decade = 1
    while decade <= max_k:
        ticks += [step * decade for step in (1, 2, 5) if step * decade <= max_k]
        decade *= 10
    return ticks


def recall_at_k_figure(
    *,
    exact: dict[str, np.ndarray],
    ann: dict[str, AnnRanks],
    captions_per_video: np.ndarray,
    title: str,
) -> Figure:
    """Recall@K against K, one panel per direction (``t2v``, ``v2t``), over one K range.

    Each panel has the exact curve, the ANN curve (up to its ``k``, the last K its results say
    anything about) and, dotted, the chance level: the expected recall@K of a random ranking
    (:func:`centerclip.metrics.chance_recall_at_k_curve`). For text-to-video that is ``K / V``;
    for video-to-text a video counts its best-ranked caption, so chance is the mean over videos
    of ``1 - C(Q - c, K) / C(Q, K)`` with ``c`` its captions among all ``Q``.

    Args:
        exact: 1-based ranks per direction: ``t2v [Q]``, ``v2t [Vc]``.
        ann: the ANN ranks per direction.
        captions_per_video: ``[V]`` evaluated captions of each gallery video (0 if none).
        title: the figure's title (the model).

    Returns:
        A matplotlib ``Figure`` (not attached to pyplot) with two axes sharing the K range: from
        1 to the worst exact rank in either direction, and never less than the ANN's ``k``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, MultipleLocator, NullFormatter

    captions_per_video = np.asarray(captions_per_video)
    num_videos, num_captions = len(captions_per_video), int(captions_per_video.sum())
    # The chance curves' candidates and right answers per query, per direction.
    chance_inputs = {
        "t2v": (num_videos, np.ones(num_captions, np.int64)),
        "v2t": (num_captions, captions_per_video[captions_per_video > 0]),
    }
    titles = {
        "t2v": f"text-to-video: {len(exact['t2v'])} captions, each ranking {num_videos} videos",
        "v2t": f"video-to-text: {len(exact['v2t'])} videos, each ranking {num_captions} captions",
    }
    max_k = max(
        2, *(int(exact[d].max()) for d in ("t2v", "v2t")), *(ann[d].k for d in ("t2v", "v2t"))
    )
    ks = np.arange(1, max_k + 1)

    figure = Figure(figsize=(11, 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2, sharex=True, sharey=True)
    for axis, direction in zip(axes, ("t2v", "v2t"), strict=True):
        # Wider than the ANN curve, which often lies right on it (an index that loses nothing).
        axis.plot(
            ks, recall_at_k_curve(exact[direction], ks.tolist()), label="exact", linewidth=2.5
        )
        ann_ks = np.arange(1, ann[direction].k + 1)
        axis.plot(
            ann_ks,
            recall_at_k_curve(ann[direction].lower_bounds(), ann_ks.tolist()),
            label=f"ANN (top {ann[direction].k})",
            linestyle="--",
            marker="o",
            markersize=3,
        )
        candidates, right = chance_inputs[direction]
        axis.plot(
            ks,
            chance_recall_at_k_curve(candidates, right, ks.tolist()),
            label="chance (random ranking)",
            linestyle=":",
            linewidth=1.5,
            color="0.35",
            zorder=1.5,  # under the model's curves where they meet (at 100%)
        )
        axis.set_xscale("log")
        # A little room either side so that the markers at K = 1 and at the last K show whole.
        axis.set_xlim(1 / _K_MARGIN, max_k * _K_MARGIN)
        axis.xaxis.set_major_locator(FixedLocator(k_ticks(max_k)))
        axis.xaxis.set_major_formatter("{x:.0f}")
        axis.xaxis.set_minor_formatter(NullFormatter())
        # Room above 100% so that markers and lines at 100% are not cut by the frame.
        axis.set_ylim(0, 105)
        axis.yaxis.set_major_locator(FixedLocator(range(0, 101, 20)))
        axis.yaxis.set_minor_locator(MultipleLocator(10))
        axis.set_xlabel("K (log scale)")
        axis.set_title(titles[direction], fontsize=10)
        axis.grid(True, which="major", alpha=0.4)
        axis.grid(True, which="minor", alpha=0.15)
    axes[0].set_ylabel("recall@K (%)")
    axes[1].tick_params(labelleft=True)
    # One legend for both panels, outside them: inside, it hides whichever curve runs under it.
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3)
    figure.suptitle(title, fontsize=9)
    return figure


def plot_recall_at_k(
    path: Path,
    *,
    exact: dict[str, np.ndarray],
    ann: dict[str, AnnRanks],
    captions_per_video: np.ndarray,
    title: str,
) -> None:
    """Write :func:`recall_at_k_figure` to ``path`` (PNG)."""
    figure = recall_at_k_figure(
        exact=exact, ann=ann, captions_per_video=captions_per_video, title=title
    )
    figure.savefig(path, dpi=120)
