"""The evaluation's recall@K plot and fine-tuning's training curves, built from plausible data
without Ray: what they show (K range, chance level, ticks, limits), and that they save as PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from centerclip.metrics import chance_recall_at_k_curve
from pipelines.evaluate import AnnRanks, k_ticks, plot_recall_at_k, recall_at_k_figure
from pipelines.finetune import training_curves_figure, write_history

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANCE_LABEL = "chance (random ranking)"


def _ann(ranks: np.ndarray, k: int = 10) -> AnnRanks:
    """What a top-``k`` search that returns the exact top ``k`` would report for ``ranks``."""
    found = ranks <= k
    return AnnRanks(
        ranks=np.where(found, ranks, 0), found=found, top=np.zeros((len(ranks), k), int), k=k
    )


def _recall_figure(captions_per_video: np.ndarray, t2v: np.ndarray, v2t: np.ndarray):
    return recall_at_k_figure(
        exact={"t2v": t2v, "v2t": v2t},
        ann={"t2v": _ann(t2v), "v2t": _ann(v2t)},
        captions_per_video=captions_per_video,
        title="tiny@untrained-seed0",
    )


def _line(axis, label: str):
    (line,) = [line for line in axis.get_lines() if line.get_label() == label]
    return line


def test_k_ticks_are_the_1_2_5_sequence() -> None:
    assert k_ticks(10) == [1, 2, 5, 10]
    assert k_ticks(11) == [1, 2, 5, 10]
    assert k_ticks(299) == [1, 2, 5, 10, 20, 50, 100, 200]


def test_recall_plot_shares_one_k_range_and_shows_chance_in_both_panels(tmp_path: Path) -> None:
    # 8 videos with 2 captions each (16 captions); v2t's worst rank (11) is past t2v's (8).
    captions_per_video = np.full(8, 2)
    t2v = np.array([1] * 12 + [2, 3, 5, 8])
    v2t = np.array([1, 1, 1, 2, 2, 4, 7, 11])
    figure = _recall_figure(captions_per_video, t2v, v2t)

    t2v_axis, v2t_axis = figure.axes
    assert t2v_axis.get_xlim() == v2t_axis.get_xlim()
    left, right = t2v_axis.get_xlim()
    assert left < 1 and 11 < right < 13  # every K from 1 to the worst rank, markers whole
    assert [t.get_text() for t in t2v_axis.get_xticklabels()] == ["1", "2", "5", "10"]
    for axis in figure.axes:
        assert axis.get_xscale() == "log"
        assert axis.get_ylim()[0] == 0 and 100 < axis.get_ylim()[1] <= 110
        assert _line(axis, "exact").get_xdata().tolist() == list(range(1, 12))
        assert axis.get_xlabel() and "recall@K" in t2v_axis.get_ylabel()
    # Chance: K / 8 for text-to-video; for video-to-text, a video's better caption of 16.
    t2v_chance = _line(t2v_axis, CHANCE_LABEL).get_ydata()
    assert t2v_chance[:3].tolist() == [12.5, 25.0, 37.5] and t2v_chance[7:].tolist() == [100] * 4
    v2t_chance = _line(v2t_axis, CHANCE_LABEL).get_ydata()
    assert v2t_chance[0] == pytest.approx(12.5)
    assert v2t_chance.tolist() == chance_recall_at_k_curve(16, [2] * 8, range(1, 12))
    assert [t.get_text() for t in figure.legends[0].get_texts()] == [
        "exact", "ANN (top 10)", CHANCE_LABEL,
    ]  # fmt: skip

    path = tmp_path / "recall_at_k.png"
    plot_recall_at_k(
        path,
        exact={"t2v": t2v, "v2t": v2t},
        ann={"t2v": _ann(t2v), "v2t": _ann(v2t)},
        captions_per_video=captions_per_video,
        title="tiny@untrained-seed0",
    )
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_recall_plot_runs_to_the_anns_k_when_every_rank_is_smaller() -> None:
    figure = _recall_figure(np.array([1, 1, 1, 0]), np.array([1, 2, 1]), np.array([1, 1, 3]))
    for axis in figure.axes:
        assert _line(axis, "exact").get_xdata().tolist() == list(range(1, 11))
        assert _line(axis, "ANN (top 10)").get_xdata().tolist() == list(range(1, 11))
    # The uncaptioned video is a text-to-video candidate: chance is K / 4, not K / 3.
    assert _line(figure.axes[0], CHANCE_LABEL).get_ydata()[0] == 25.0


def _history(epochs: int, *, videos: int, captions: int) -> list[dict]:
    """``history.json`` records as fine-tuning writes them: epoch 0 validates the base model."""

    def val(recall: float) -> dict:
        t2v = {"R@1": recall / 2, "R@5": recall, "R@10": min(100.0, recall * 2), "MdR": 2.0,
               "MnR": 3.0}  # fmt: skip
        return {"t2v": t2v, "v2t": dict(t2v), "num_queries": captions, "num_videos": videos,
                "num_videos_without_captions": 0}  # fmt: skip

    history = [{"epoch": 0, "step": 0, "val": val(20.0)}]
    for epoch in range(1, epochs + 1):
        history.append(
            {"epoch": epoch, "step": 3 * epoch, "loss": 3.0 / epoch, "lr": 1e-3 / epoch,
             "logit_scale": 14.0 + epoch, "decode_failures": 0, "seconds": 1.0,
             "val": val(20.0 + 20 * epoch)}
        )  # fmt: skip
    return history


def test_training_curves_have_integer_epochs_unclipped_recall_lr_and_temperature(
    tmp_path: Path,
) -> None:
    history = _history(3, videos=8, captions=16)
    figure = training_curves_figure(history)
    loss, recall, lr, scale = figure.axes
    for axis in figure.axes:
        ticks = [t for t in axis.get_xticks() if axis.get_xlim()[0] <= t <= axis.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    assert recall.get_ylim()[0] == 0 and recall.get_ylim()[1] > 100  # R@10 reaches 100%
    assert _line(recall, "t2v R@10").get_ydata().tolist() == [40.0, 80.0, 100.0, 100.0]
    assert lr.get_lines()[0].get_ydata().tolist() == pytest.approx([1e-3, 5e-4, 1e-3 / 3])
    assert scale.get_lines()[0].get_ydata().tolist() == [15.0, 16.0, 17.0]
    assert loss.get_lines()[0].get_xdata().tolist() == [1, 2, 3]
    assert "temperature" in scale.get_title() and "learning rate" in lr.get_title()
    # Chance of 8 videos, a dotted line per R@K: R@1 12.5%, R@5 62.5%, R@10 100%.
    dotted = sorted(
        line.get_ydata()[0]
        for line in recall.get_lines()
        if line.get_linestyle() == ":" and len(line.get_ydata())
    )
    assert dotted == [12.5, 62.5, 100.0]

    write_history(tmp_path, history)
    assert json.loads((tmp_path / "history.json").read_text()) == history
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_SIGNATURE


def test_training_curves_of_a_run_without_validation() -> None:
    history = [record for record in _history(2, videos=8, captions=16) if record["epoch"]]
    for record in history:
        del record["val"]
    loss, recall, _, _ = training_curves_figure(history).axes
    assert loss.get_lines()[0].get_ydata().tolist() == [3.0, 1.5]
    assert not [line for line in recall.get_lines() if len(line.get_xdata())]
