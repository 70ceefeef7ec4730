import math

import numpy as np
import pytest
import torch

from centerclip.metrics import (
    ann_recall_at_k,
    chunked_retrieval_ranks,
    ranks_from_similarity,
    recall_at_k_curve,
    recall_metrics,
    retrieval_metrics,
    retrieval_ranks,
)


def _reference_ranks(sim: torch.Tensor, target: torch.Tensor) -> list[int]:
    """The tie policy spelled out per entry: 1 + strictly greater + other columns equal."""
    ranks = []
    for q in range(sim.shape[0]):
        own = sim[q, target[q]]
        greater = sum(1 for v in range(sim.shape[1]) if sim[q, v] > own)
        other_equal = sum(1 for v in range(sim.shape[1]) if v != target[q] and sim[q, v] == own)
        ranks.append(1 + greater + other_equal)
    return ranks


def _reference_v2t(sim: torch.Tensor, caption_video: torch.Tensor) -> dict[int, int]:
    per_caption = _reference_ranks(sim.T[caption_video], torch.arange(sim.shape[0]))
    best: dict[int, int] = {}
    for q, v in enumerate(caption_video.tolist()):
        best[v] = min(best.get(v, math.inf), per_caption[q])
    return best


def test_perfect_diagonal_ranks_first_everywhere():
    sim = torch.eye(4)
    result = retrieval_ranks(sim, torch.arange(4))
    assert result.t2v.tolist() == [1, 1, 1, 1]
    assert result.v2t.tolist() == [1, 1, 1, 1]
    assert retrieval_metrics(sim, torch.arange(4))["t2v"] == {
        "R@1": 100.0,
        "R@5": 100.0,
        "R@10": 100.0,
        "MdR": 1.0,
        "MnR": 1.0,
    }


def test_reversed_order():
    # Every query scores the columns in the same increasing order, so query q's target (column q)
    # has 3 - q columns above it.
    sim = torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 4)
    ranks = ranks_from_similarity(sim, torch.arange(4))
    assert ranks.tolist() == [4, 3, 2, 1]
    expected = {"R@1": 25.0, "R@5": 100.0, "R@10": 100.0, "MdR": 2.5, "MnR": 2.5}
    assert recall_metrics(ranks) == expected


def test_all_equal_scores_give_the_worst_rank():
    sim = torch.zeros(3, 5)
    assert ranks_from_similarity(sim, torch.tensor([0, 2, 4])).tolist() == [5, 5, 5]
    result = retrieval_ranks(sim, torch.tensor([0, 2, 4]))
    assert result.v2t.tolist() == [3, 3, 3]
    assert recall_metrics(result.t2v)["R@1"] == 0.0


def test_partial_ties_count_other_equal_columns():
    sim = torch.tensor([[0.5, 0.9, 0.5, 0.1], [0.2, 0.2, 0.2, 0.3]])
    # Row 0: 0.9 is above, column 2 ties -> 3. Row 1: 0.3 above, columns 0 and 2 tie -> 4.
    assert ranks_from_similarity(sim, torch.tensor([0, 1])).tolist() == [3, 4]


def test_multi_caption_videos_both_directions():
    # 5 captions, 4 videos; video 3 has no caption.
    caption_video = torch.tensor([0, 0, 1, 2, 2])
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.0],  # caption 0 of video 0: first
            [0.3, 0.8, 0.4, 0.5],  # caption 1 of video 0: 0.8 and 0.4 and 0.5 above -> 4
            [0.7, 0.6, 0.1, 0.0],  # caption 2 of video 1: 0.7 above -> 2
            [0.2, 0.2, 0.2, 0.9],  # caption 3 of video 2: 0.9 above, two ties -> 4
            [0.0, 0.3, 0.6, 0.1],  # caption 4 of video 2: first
        ]
    )
    result = retrieval_ranks(sim, caption_video)
    assert result.t2v.tolist() == [1, 4, 2, 4, 1]
    # Video 0, column [0.9, 0.3, 0.7, 0.2, 0.0]: caption 0 is first -> 1.
    # Video 1, column [0.1, 0.8, 0.6, 0.2, 0.3]: its caption 2 (0.6) is below 0.8 -> 2.
    # Video 2, column [0.2, 0.4, 0.1, 0.2, 0.6]: caption 4 (0.6) is first -> 1; caption 3 alone
    # would rank 4 (0.6 and 0.4 above, caption 0 ties), the best of the two is taken.
    # Video 3 has no caption and is left out.
    assert result.v2t.tolist() == [1, 2, 1]
    assert result.v2t_video.tolist() == [0, 1, 2]
    assert result.num_videos_without_captions == 1
    metrics = result.metrics()
    assert metrics["num_queries"] == 5
    assert metrics["num_videos"] == 4
    assert metrics["num_videos_without_captions"] == 1
    assert metrics["t2v"] == {"R@1": 40.0, "R@5": 100.0, "R@10": 100.0, "MdR": 2.0, "MnR": 2.4}
    assert metrics["v2t"]["R@1"] == pytest.approx(200 / 3)
    assert metrics["v2t"]["MdR"] == 1.0
    assert metrics["v2t"]["MnR"] == pytest.approx(4 / 3)


def test_tie_between_two_own_captions_counts_against_the_video():
    caption_video = torch.tensor([0, 0, 1])
    sim = torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.1, 0.9]])
    assert retrieval_ranks(sim, caption_video).v2t.tolist() == [2, 1]


def test_recall_metrics_values():
    assert recall_metrics([1, 2, 3, 10]) == {
        "R@1": 25.0,
        "R@5": 75.0,
        "R@10": 100.0,
        "MdR": 2.5,
        "MnR": 4.0,
    }
    odd = recall_metrics(np.array([20, 1, 7]))
    assert odd["MdR"] == 7.0
    assert odd["MnR"] == pytest.approx(28 / 3)
    assert odd["R@1"] == pytest.approx(100 / 3)
    assert odd["R@10"] == pytest.approx(200 / 3)
    assert list(odd) == ["R@1", "R@5", "R@10", "MdR", "MnR"]
    assert all(type(value) is float for value in odd.values())


def test_recall_at_k_curve():
    curve = recall_at_k_curve([1, 2, 3, 10], [1, 2, 5, 9, 10, 50])
    assert curve == [25.0, 50.0, 75.0, 75.0, 100.0, 100.0]


@pytest.mark.parametrize("block_rows", [1, 4, 7, None])
def test_blocked_path_matches_reference_on_random_data(block_rows):
    generator = torch.Generator().manual_seed(0)
    num_queries, num_videos = 37, 11
    # Rounding to one decimal makes ties common, so the tie policy is exercised too.
    sim = torch.round(torch.rand(num_queries, num_videos, generator=generator) * 10) / 10
    caption_video = torch.randint(0, num_videos - 1, (num_queries,), generator=generator)
    caption_video[: num_videos - 1] = torch.arange(num_videos - 1)  # last video stays uncaptioned

    result = retrieval_ranks(sim, caption_video, block_rows=block_rows)
    assert result.t2v.tolist() == _reference_ranks(sim, caption_video)
    expected_v2t = _reference_v2t(sim, caption_video)
    assert result.v2t_video.tolist() == sorted(expected_v2t)
    assert result.v2t.tolist() == [expected_v2t[v] for v in sorted(expected_v2t)]
    assert result.num_videos_without_captions == 1

    unblocked = retrieval_ranks(sim, caption_video, block_rows=num_queries * num_videos)
    assert torch.equal(result.t2v, unblocked.t2v)
    assert torch.equal(result.v2t, unblocked.v2t)


def test_numpy_inputs_and_float16():
    sim = np.array([[0.2, 0.8], [0.6, 0.4]], dtype=np.float16)
    assert retrieval_ranks(sim, np.array([1, 0])).t2v.tolist() == [1, 1]
    assert ranks_from_similarity(sim, np.array([0, 1])).tolist() == [2, 2]


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="NaN"):
        ranks_from_similarity(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        ranks_from_similarity(torch.zeros(1, 2), torch.tensor([2]))
    with pytest.raises(ValueError, match="shape"):
        retrieval_ranks(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="1-based"):
        recall_metrics([0, 1])
    with pytest.raises(ValueError, match="non-empty"):
        recall_metrics([])


def test_ann_recall_at_k():
    exact = torch.tensor([[1, 2, 3], [4, 5, 6]])
    approx = torch.tensor([[3, 1, 9], [6, 5, 4]])
    assert ann_recall_at_k(exact, approx) == pytest.approx((2 / 3 + 1) / 2)
    assert ann_recall_at_k(exact, exact) == 1.0
    short = torch.tensor([[1, -1, -1], [-1, -1, -1]])
    assert ann_recall_at_k(exact, short) == pytest.approx(1 / 6)
    assert ann_recall_at_k(np.array([[7, 8]]), np.array([[8, 7, 0, 1]])) == 1.0


@pytest.mark.parametrize(("chunk_rows", "chunk_columns"), [(1, 1), (3, 2), (7, 4), (40, 40)])
def test_chunked_ranks_equal_the_dense_ranks_with_ties_and_multi_caption_videos(
    chunk_rows: int, chunk_columns: int
) -> None:
    generator = torch.Generator().manual_seed(chunk_rows)
    num_queries, num_videos, k = 23, 9, 4
    # Scores drawn from 5 values: ties everywhere, between own and other columns alike.
    sim = torch.randint(0, 5, (num_queries, num_videos), generator=generator).float() / 4
    # Videos 0..6 own 1 to 5 captions each; videos 7 and 8 own none.
    caption_video = torch.tensor([i % 7 for i in range(num_queries)])
    caption_video = caption_video[torch.randperm(num_queries, generator=generator)]

    chunked = chunked_retrieval_ranks(
        lambda start, stop: sim[start:stop],
        lambda start, stop: sim[:, start:stop],
        caption_video,
        num_videos=num_videos,
        chunk_rows=chunk_rows,
        chunk_columns=chunk_columns,
        top_k=k,
    )
    dense = retrieval_ranks(sim, caption_video)
    assert torch.equal(chunked.ranks.t2v, dense.t2v)
    assert torch.equal(chunked.ranks.v2t, dense.v2t)
    assert torch.equal(chunked.ranks.v2t_video, dense.v2t_video)
    assert chunked.ranks.metrics() == dense.metrics()
    assert chunked.ranks.num_videos_without_captions == 2
    # Top k: the same scores as a dense top k (which ids win a tie is either's choice).
    t2v_scores = sim.gather(1, chunked.t2v_top)
    assert torch.equal(t2v_scores, sim.topk(k, dim=1).values)
    assert all(len(set(row)) == k for row in chunked.t2v_top.tolist())
    by_video = sim.T[dense.v2t_video]  # [Vc, Q]
    assert torch.equal(by_video.gather(1, chunked.v2t_top), by_video.topk(k, dim=1).values)
    assert all(len(set(row)) == k for row in chunked.v2t_top.tolist())


def test_chunked_ranks_on_real_scores_equal_the_dense_ranks() -> None:
    generator = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(50, 16, generator=generator), dim=1)
    video = torch.nn.functional.normalize(torch.randn(12, 16, generator=generator), dim=1)
    caption_video = torch.arange(50) % 12
    sim = text @ video.T
    chunked = chunked_retrieval_ranks(
        lambda start, stop: sim[start:stop],
        lambda start, stop: sim[:, start:stop],
        caption_video,
        num_videos=12,
        chunk_rows=8,
        chunk_columns=5,
        top_k=10,
    )
    dense = retrieval_ranks(sim, caption_video)
    assert torch.equal(chunked.ranks.t2v, dense.t2v)
    assert torch.equal(chunked.ranks.v2t, dense.v2t)
    assert torch.equal(chunked.t2v_top, sim.topk(10, dim=1).indices)


@pytest.mark.parametrize(
    ("videos_per_row", "captions_per_column", "wrong"),
    [(3, 2, "similarity_rows"), (4, 3, "similarity_columns")],
)
def test_chunked_ranks_reject_a_chunk_of_the_wrong_shape(
    videos_per_row: int, captions_per_column: int, wrong: str
) -> None:
    with pytest.raises(ValueError, match=rf"{wrong}\(0, 1\) gave shape"):
        chunked_retrieval_ranks(
            lambda start, stop: torch.zeros(stop - start, videos_per_row),
            lambda start, stop: torch.zeros(captions_per_column, stop - start),
            torch.tensor([0, 1]),
            num_videos=4,
            chunk_rows=1,
            chunk_columns=1,
            top_k=2,
        )
