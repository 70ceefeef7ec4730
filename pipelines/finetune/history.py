"""The run's per-epoch records: the log line of each, ``history.json`` and ``curves.png``, kept
current while the run goes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.fs as pafs

from centerclip.metrics import chance_recall_metrics
from pipelines.finetune.checkpoints import HISTORY_FILE, read_checkpoint_json

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CURVES_FILE = "curves.png"


def format_epoch(record: dict) -> str:
    """One line per epoch record: loss, temperature, validation recall."""
    parts = [f"epoch {record['epoch']:>3}", f"step {record['step']:>6}"]
    if "loss" in record:
        parts.append(f"loss {record['loss']:.4f}")
        parts.append(f"scale {record['logit_scale']:.1f}")
    if "val" in record:
        t2v, v2t = record["val"]["t2v"], record["val"]["v2t"]
        parts.append(
            f"val t2v R@1 {t2v['R@1']:.1f} R@5 {t2v['R@5']:.1f} R@10 {t2v['R@10']:.1f} "
            f"MdR {t2v['MdR']:g} | v2t R@1 {v2t['R@1']:.1f}"
        )
    if "seconds" in record:
        parts.append(f"{record['seconds']:.1f} s")
    return "  ".join(parts)


def training_curves_figure(history: list[dict]) -> Figure:
    """Per epoch: training loss, validation text-to-video recall against its chance level, the
    learning rate and CLIP's logit scale (1 / temperature).

    Args:
        history: the ``history.json`` records: ``epoch``, and ``loss``, ``lr`` (of the epoch's
            last step), ``logit_scale`` for trained epochs, ``val`` (as
            :func:`centerclip.metrics.retrieval_metrics`) for validated ones (epoch 0: the base
            model).

    Returns:
        A matplotlib ``Figure`` (not attached to pyplot) with 2 x 2 axes sharing integer epochs.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, MaxNLocator

    trained = [r for r in history if "loss" in r]
    validated = [r for r in history if "val" in r]
    figure = Figure(figsize=(11, 7), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2, sharex=True)
    (loss_axis, recall_axis), (lr_axis, scale_axis) = axes
    epochs = [r["epoch"] for r in trained]

    loss_axis.plot(epochs, [r["loss"] for r in trained], marker="o")
    loss_axis.set(ylabel="symmetric InfoNCE", title="training loss")

    colours = {"R@1": "C0", "R@5": "C1", "R@10": "C2"}
    for k, colour in colours.items():
        recall_axis.plot(
            [r["epoch"] for r in validated],
            [r["val"]["t2v"][k] for r in validated],
            marker="o",
            color=colour,
            label=f"t2v {k}",
        )
    latest = validated[-1]["val"] if validated else {}
    if "num_videos" in latest and "num_queries" in latest:
        # Validation is always the same videos, so one chance level holds for every epoch.
        chance = chance_recall_metrics(
            latest["num_videos"], np.ones(latest["num_queries"], np.int64)
        )
        for k, colour in colours.items():
            recall_axis.axhline(chance[k], color=colour, linestyle=":", linewidth=1.2)
        recall_axis.plot(
            [], [], color="0.35", linestyle=":", label=f"chance ({latest['num_videos']} videos)"
        )
    # Room above 100% so that markers at 100% are not cut by the frame.
    recall_axis.set_ylim(0, 105)
    recall_axis.yaxis.set_major_locator(FixedLocator(range(0, 101, 20)))
    recall_axis.set(ylabel="%", title="validation text-to-video recall")
    if validated:
        recall_axis.legend(loc="best", fontsize=9)

    lr_axis.plot(epochs, [r.get("lr", np.nan) for r in trained], marker="o")
    lr_axis.set_ylim(bottom=0)
    lr_axis.set(ylabel="learning rate", title="learning rate (the epoch's last step)")
    lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    scale_axis.plot(epochs, [r["logit_scale"] for r in trained], marker="o")
    scale_axis.set(ylabel="exp(logit_scale)", title="logit scale (1 / temperature)")

    for axis in axes.flat:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(True, alpha=0.3)
    for axis in axes[1]:
        axis.set_xlabel("epoch")
    return figure


def write_history(
    out: Path | str, history: list[dict], filesystem: pafs.FileSystem | None = None
) -> None:
    """``history.json`` and ``curves.png`` (:func:`training_curves_figure`) in the folder
    ``out``, local (``filesystem`` ``None``) or a path in ``filesystem`` (an ``s3://`` prefix)."""
    text = json.dumps(history, indent=2) + "\n"
    if filesystem is None:
        out = Path(out)
        (out / HISTORY_FILE).write_text(text)
        training_curves_figure(history).savefig(out / CURVES_FILE, dpi=100)
        return
    image = io.BytesIO()
    training_curves_figure(history).savefig(image, format="png", dpi=100)
    for name, data in ((HISTORY_FILE, text.encode()), (CURVES_FILE, image.getvalue())):
        with filesystem.open_output_stream(f"{out}/{name}") as file:
            file.write(data)


def progress_callback(out: Path | str, filesystem: pafs.FileSystem | None = None) -> Any:
    from ray.train.v2.api.callback import UserCallback

    class ProgressWriter(UserCallback):
        """Keeps ``history.json`` and ``curves.png`` current after every report; runs in Ray
        Train's controller, which lives on the driver's node, so a local ``out`` is reachable;
        ``filesystem`` (pickled with its endpoint and credentials) reaches an ``s3://`` one."""

        def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
            if checkpoint is not None:
                write_history(out, read_checkpoint_json(checkpoint, HISTORY_FILE), filesystem)

    return ProgressWriter()
