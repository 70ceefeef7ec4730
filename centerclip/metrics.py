"""Retrieval metrics over a similarity matrix, shared by evaluation and by fine-tuning's validation.

Conventions:

- ``sim`` is ``[Q, V]``: one row per caption (query), one column per video; higher is more similar.
- ``caption_video`` is ``[Q]``: the column of each caption's own video. A video may own several
  captions (MSR-VTT gives each video 20) or none.
- Ranks are 1-based: rank 1 means the right item scored highest.

Tie policy: ties count against the query. The rank of the right column is
``1 + #(columns scoring strictly higher) + #(other columns scoring exactly the same)``, which is the
number of columns scoring at least as high as the right one. A model whose scores are all equal
therefore gets the worst rank (the number of columns) everywhere instead of a perfect score, and a
model cannot gain from collapsing distinct items onto one embedding. Scores that are NaN raise an
error rather than producing a meaningless rank.

Every function accepts torch tensors or numpy arrays. Ranks are computed in row blocks, so memory
beyond ``sim`` itself stays at a few megabytes whatever ``Q`` and ``V`` are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray | Sequence[int] | Sequence[float]

# About 4M scores per block: 16 MB of float32 and 4 MB of comparison mask, whatever the shape.
_BLOCK_ELEMENTS = 1 << 22


def _as_tensor(x: ArrayLike) -> Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    return torch.as_tensor(x)


def _as_similarity(sim: ArrayLike) -> Tensor:
    sim = _as_tensor(sim)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be 2-D [Q, V], got shape {tuple(sim.shape)}")
    if sim.shape[0] == 0 or sim.shape[1] == 0:
        raise ValueError(f"similarity needs at least one row and column, got {tuple(sim.shape)}")
    return sim if sim.is_floating_point() else sim.double()


def _as_columns(index: ArrayLike, num_rows: int, num_cols: int, name: str) -> Tensor:
    index = _as_tensor(index)
    if index.ndim != 1 or index.shape[0] != num_rows:
        raise ValueError(f"{name} must have shape [{num_rows}], got {tuple(index.shape)}")
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer column indices, got {index.dtype}")
    index = index.long()
    if int(index.min()) < 0 or int(index.max()) >= num_cols:
        raise ValueError(f"{name} must lie in [0, {num_cols}), got [{index.min()}, {index.max()}]")
    return index


def _count_at_least(sim: Tensor, threshold: Tensor, block_rows: int | None) -> Tensor:
    """Per row, how many entries of ``sim [R, C]`` are ``>= threshold [R]``; ``[R]`` long."""
    num_rows, num_cols = sim.shape
    if block_rows is None:
        block_rows = max(1, _BLOCK_ELEMENTS // num_cols)
    if block_rows < 1:
        raise ValueError(f"block_rows must be positive, got {block_rows}")
    threshold = threshold.to(sim.dtype).unsqueeze(1)
    counts = torch.empty(num_rows, dtype=torch.long, device=sim.device)
    for start in range(0, num_rows, block_rows):
        rows = slice(start, start + block_rows)
        block = sim[rows]
        if torch.isnan(block).any():
            raise ValueError("similarity contains NaN; the encoder produced invalid embeddings")
        counts[rows] = (block >= threshold[rows]).sum(dim=1)
    return counts


def ranks_from_similarity(
    sim: ArrayLike, target: ArrayLike, *, block_rows: int | None = None
) -> Tensor:
    """1-based rank of each row's target column, ties counted against the query.

    Args:
        sim: ``[Q, V]`` scores, higher is better.
        target: ``[Q]`` integer column of the right answer of each row.
        block_rows: rows compared at once; by default enough for about 4M scores per block.

    Returns:
        ``[Q]`` long tensor on ``sim``'s device: ``#(columns with score >= sim[q, target[q]])``,
        i.e. one plus the columns scoring strictly higher plus the other columns tying.
    """
    sim = _as_similarity(sim)
    target = _as_columns(target, sim.shape[0], sim.shape[1], "target").to(sim.device)
    own = sim.gather(1, target.unsqueeze(1)).squeeze(1)
    return _count_at_least(sim, own, block_rows)


@dataclass(frozen=True, eq=False)
class RetrievalRanks:
    """Ranks in both directions for one similarity matrix; see :func:`retrieval_ranks`.

    Attributes:
        t2v: ``[Q]`` rank of each caption's own video among all ``V`` videos.
        v2t: ``[Vc]`` rank of each captioned video's best-ranked own caption among all ``Q``.
        v2t_video: ``[Vc]`` the video column each entry of ``v2t`` belongs to (ascending).
        num_videos: ``V``, captioned or not.
    """

    t2v: Tensor
    v2t: Tensor
    v2t_video: Tensor
    num_videos: int

    @property
    def num_queries(self) -> int:
        return int(self.t2v.shape[0])

    @property
    def num_videos_without_captions(self) -> int:
        """Videos that own no caption and so are left out of video-to-text."""
        return self.num_videos - int(self.v2t_video.shape[0])

    def metrics(self) -> dict:
        """``{"t2v": {...}, "v2t": {...}, "num_queries", "num_videos",
        "num_videos_without_captions"}``, each direction as in :func:`recall_metrics`."""
        return {
            "t2v": recall_metrics(self.t2v),
            "v2t": recall_metrics(self.v2t),
            "num_queries": self.num_queries,
            "num_videos": self.num_videos,
            "num_videos_without_captions": self.num_videos_without_captions,
        }


def retrieval_ranks(
    sim: ArrayLike, caption_video: ArrayLike, *, block_rows: int | None = None
) -> RetrievalRanks:
    """Text-to-video and video-to-text ranks under the MSR-VTT multi-caption protocol.

    Text-to-video: each caption is a query and its rank is that of its own video among all ``V``
    videos. Video-to-text: each video is a query over ``sim.T [V, Q]``; every one of its captions
    is a right answer, so its rank is the best (smallest) rank among its captions' ranks over all
    ``Q`` captions. Videos without a caption have no right answer and are left out of
    video-to-text; :attr:`RetrievalRanks.num_videos_without_captions` says how many.

    Args:
        sim: ``[Q, V]`` caption-to-video scores.
        caption_video: ``[Q]`` integer video column of each caption.
        block_rows: rows compared at once; by default enough for about 4M scores per block.

    Returns:
        :class:`RetrievalRanks` with tensors on ``sim``'s device.
    """
    sim = _as_similarity(sim)
    num_queries, num_videos = sim.shape
    caption_video = _as_columns(caption_video, num_queries, num_videos, "caption_video")
    caption_video = caption_video.to(sim.device)

    own = sim.gather(1, caption_video.unsqueeze(1)).squeeze(1)
    t2v = _count_at_least(sim, own, block_rows)

    # A caption's rank among the captions is monotone in its score, so the best rank among a
    # video's captions is the rank of its highest-scoring one; ties between two of its own
    # captions each count against the other, as the tie policy says.
    best_own = torch.full((num_videos,), float("-inf"), dtype=sim.dtype, device=sim.device)
    best_own = best_own.scatter_reduce(0, caption_video, own, reduce="amax")
    captioned = torch.bincount(caption_video, minlength=num_videos) > 0
    v2t_all = _count_at_least(sim.T, best_own, block_rows)
    v2t_video = torch.nonzero(captioned).squeeze(1)
    return RetrievalRanks(
        t2v=t2v, v2t=v2t_all[v2t_video], v2t_video=v2t_video, num_videos=num_videos
    )


SimilarityBlock = Callable[[int, int], Tensor]
"""``rows(start, stop)`` gives the ``[stop - start, V]`` similarity rows of captions
``start..stop``; ``columns(start, stop)`` the ``[Q, stop - start]`` columns of videos
``start..stop``."""


@dataclass(frozen=True, eq=False)
class TextToVideoChunk:
    """Text-to-video results of a chunk of captions; see :func:`text_to_video_chunk`.

    Attributes:
        t2v: ``[C]`` rank of each caption's own video among all ``V`` videos.
        top: ``[C, k]`` video columns of each caption's ``k`` best videos, best first.
    """

    t2v: Tensor
    top: Tensor


@dataclass(frozen=True, eq=False)
class VideoToTextChunk:
    """Video-to-text results of a chunk of videos; see :func:`video_to_text_chunk`.

    Attributes:
        v2t: ``[Vc]`` rank of each video's best own caption among all ``Q`` (meaningless where
            ``captioned`` is False).
        top: ``[Vc, k]`` caption rows of each video's ``k`` best captions, best first.
        captioned: ``[Vc]`` whether the video owns a caption.
    """

    v2t: Tensor
    top: Tensor
    captioned: Tensor


def text_to_video_chunk(block: Tensor, caption_video: Tensor, *, top_k: int) -> TextToVideoChunk:
    """Ranks and top ``top_k`` videos of a chunk of captions.

    Args:
        block: ``[C, V]`` the chunk's captions against every video.
        caption_video: ``[C]`` video column of each of the chunk's captions.
    """
    block = _as_similarity(block)
    caption_video = caption_video.to(block.device)
    own = block.gather(1, caption_video.unsqueeze(1)).squeeze(1)
    top = block.topk(min(top_k, block.shape[1]), dim=1).indices
    return TextToVideoChunk(t2v=_count_at_least(block, own, None), top=top)


def video_to_text_chunk(
    block: Tensor, caption_video: Tensor, *, start: int, top_k: int
) -> VideoToTextChunk:
    """Ranks and top ``top_k`` captions of the videos ``start..start + Vc``.

    Every score a video's rank depends on (its own captions' and all others') is in ``block``,
    so the rank compares values computed once, whoever computed the other chunks.

    Args:
        block: ``[Q, Vc]`` every caption against the chunk's videos.
        caption_video: ``[Q]`` video column of every caption.
        start: the column of the chunk's first video.
    """
    block = _as_similarity(block)
    num_queries, num_videos = block.shape
    local = caption_video.to(block.device) - start
    mine = torch.nonzero((local >= 0) & (local < num_videos)).squeeze(1)  # own captions' rows
    own = block[mine, local[mine]]
    # A caption's rank among the captions is monotone in its score, so the best rank among a
    # video's captions is the rank of its highest-scoring one; ties between two of its own
    # captions each count against the other, as the tie policy says.
    best_own = torch.full((num_videos,), float("-inf"), dtype=block.dtype, device=block.device)
    best_own = best_own.scatter_reduce(0, local[mine], own, reduce="amax")
    top = block.topk(min(top_k, num_queries), dim=0).indices.T  # [Vc, k]
    return VideoToTextChunk(
        v2t=_count_at_least(block.T, best_own, None),
        top=top,
        captioned=torch.bincount(local[mine], minlength=num_videos) > 0,
    )


@dataclass(frozen=True, eq=False)
class ChunkedRanks:
    """:class:`RetrievalRanks` plus each query's top ``k``, from :func:`chunked_retrieval_ranks`.

    Attributes:
        ranks: the ranks in both directions, as :func:`retrieval_ranks` gives them.
        t2v_top: ``[Q, k]`` video columns of each caption's ``k`` best videos, best first.
        v2t_top: ``[Vc, k]`` caption rows of each captioned video's ``k`` best captions, best
            first, in the order of ``ranks.v2t_video``.
    """

    ranks: RetrievalRanks
    t2v_top: Tensor
    v2t_top: Tensor

    @classmethod
    def from_chunks(
        cls, t2v: Sequence[TextToVideoChunk], v2t: Sequence[VideoToTextChunk]
    ) -> ChunkedRanks:
        """The ranks of every caption and video from their chunks, each in order."""
        captioned = torch.cat([chunk.captioned for chunk in v2t])
        v2t_video = torch.nonzero(captioned).squeeze(1)
        ranks = RetrievalRanks(
            t2v=torch.cat([chunk.t2v for chunk in t2v]),
            v2t=torch.cat([chunk.v2t for chunk in v2t])[v2t_video],
            v2t_video=v2t_video,
            num_videos=int(captioned.shape[0]),
        )
        return cls(
            ranks=ranks,
            t2v_top=torch.cat([chunk.top for chunk in t2v]),
            v2t_top=torch.cat([chunk.top for chunk in v2t])[v2t_video],
        )


def chunk_bounds(total: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` cutting ``0..total`` into runs of at most ``size``."""
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def chunked_retrieval_ranks(
    similarity_rows: SimilarityBlock,
    similarity_columns: SimilarityBlock,
    caption_video: ArrayLike,
    *,
    num_videos: int,
    chunk_rows: int,
    chunk_columns: int,
    top_k: int,
) -> ChunkedRanks:
    """:func:`retrieval_ranks` without the ``[Q, V]`` matrix: it is produced a chunk at a time
    and never held whole.

    Text-to-video goes over chunks of ``chunk_rows`` captions (each against every video),
    video-to-text over chunks of ``chunk_columns`` videos (each against every caption): every
    rank is counted within one chunk, from the very values its right answer's score came from,
    so the chunks may be computed anywhere, in any order. Ranks equal :func:`retrieval_ranks`'s
    on the same scores exactly, ties included.

    Args:
        similarity_rows, similarity_columns: see :data:`SimilarityBlock`.
        caption_video: ``[Q]`` integer video column of each caption.
        num_videos: ``V``.
        chunk_rows, chunk_columns: memory is ``O(chunk_rows * V + Q * chunk_columns +
            (Q + V) * top_k)``.
        top_k: results kept per query in each direction (at most ``V`` / ``Q``).

    Returns:
        :class:`ChunkedRanks`, on the device the blocks are on.
    """
    if min(chunk_rows, chunk_columns, top_k, num_videos) < 1:
        raise ValueError("chunk_rows, chunk_columns, top_k and num_videos must be at least 1")
    caption_video = _as_tensor(caption_video)
    num_queries = int(caption_video.shape[0]) if caption_video.ndim == 1 else 0
    if num_queries == 0:
        raise ValueError("caption_video must be a non-empty 1-D sequence")
    caption_video = _as_columns(caption_video, num_queries, num_videos, "caption_video")

    def checked(block: ArrayLike, shape: tuple[int, int], call: str) -> Tensor:
        block = _as_similarity(block)
        if block.shape != shape:
            raise ValueError(f"{call} gave shape {tuple(block.shape)}, not {shape}")
        return block

    t2v = [
        text_to_video_chunk(
            checked(similarity_rows(a, b), (b - a, num_videos), f"similarity_rows({a}, {b})"),
            caption_video[a:b],
            top_k=top_k,
        )
        for a, b in chunk_bounds(num_queries, chunk_rows)
    ]
    v2t = [
        video_to_text_chunk(
            checked(
                similarity_columns(a, b), (num_queries, b - a), f"similarity_columns({a}, {b})"
            ),
            caption_video,
            start=a,
            top_k=top_k,
        )
        for a, b in chunk_bounds(num_videos, chunk_columns)
    ]
    return ChunkedRanks.from_chunks(t2v, v2t)


def retrieval_metrics(
    sim: ArrayLike, caption_video: ArrayLike, *, block_rows: int | None = None
) -> dict:
    """Recall metrics in both directions for ``sim [Q, V]`` and ``caption_video [Q]``.

    Returns ``{"t2v": {...}, "v2t": {...}, "num_queries": Q, "num_videos": V,
    "num_videos_without_captions": n}``. Use :func:`retrieval_ranks` to keep the per-query ranks.
    """
    return retrieval_ranks(sim, caption_video, block_rows=block_rows).metrics()


def _as_ranks(ranks: ArrayLike) -> Tensor:
    ranks = _as_tensor(ranks)
    if ranks.ndim != 1 or ranks.shape[0] == 0:
        raise ValueError(f"ranks must be a non-empty 1-D sequence, got shape {tuple(ranks.shape)}")
    if int(ranks.min()) < 1:
        raise ValueError("ranks are 1-based; got a rank below 1")
    return ranks.detach().cpu().double()


def recall_metrics(ranks: ArrayLike) -> dict[str, float]:
    """Summary of 1-based ranks ``[N]``.

    Returns:
        ``{"R@1", "R@5", "R@10"}``: percent of ranks ``<= K``; ``"MdR"``: median rank, the mean
        of the two middle ranks when ``N`` is even (as numpy's median, which MSR-VTT papers use);
        ``"MnR"``: mean rank. All Python floats.
    """
    ranks = _as_ranks(ranks)
    ordered = ranks.sort().values
    n = ordered.shape[0]
    median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    result = {f"R@{k}": float((ranks <= k).double().mean() * 100) for k in (1, 5, 10)}
    result["MdR"] = float(median)
    result["MnR"] = float(ranks.mean())
    return result


def recall_at_k_curve(ranks: ArrayLike, ks: Sequence[int]) -> list[float]:
    """Percent of ranks ``[N]`` that are ``<= k`` for each ``k`` in ``ks``, for a recall@K plot."""
    ordered = _as_ranks(ranks).sort().values
    thresholds = torch.as_tensor(list(ks), dtype=torch.double)
    within = torch.searchsorted(ordered, thresholds, right=True)
    return [float(c) * 100 / ordered.shape[0] for c in within]


def ann_recall_at_k(exact_topk: ArrayLike, approx_topk: ArrayLike) -> float:
    """Mean fraction of the exact top-k ids that the approximate search also returned.

    Args:
        exact_topk: ``[Q, k]`` ids from exact search, distinct within a row.
        approx_topk: ``[Q, k']`` ids from the ANN index; pad rows that came back short with an id
            that cannot occur (e.g. -1). ``k'`` is usually ``k``.

    Returns:
        A fraction in ``[0, 1]``; 1.0 means the index lost nothing at this ``k``.
    """
    exact = _as_tensor(exact_topk)
    approx = _as_tensor(approx_topk).to(exact.device)
    if exact.ndim != 2 or approx.ndim != 2 or exact.shape[0] != approx.shape[0]:
        raise ValueError(
            f"expected [Q, k] and [Q, k'] with the same Q, got {tuple(exact.shape)} "
            f"and {tuple(approx.shape)}"
        )
    if exact.shape[0] == 0 or exact.shape[1] == 0:
        raise ValueError("exact_topk must have at least one query and one id per query")
    if approx.shape[1] == 0:
        return 0.0
    # Sorted rows plus a batched binary search keep memory at O(Q * k) for any k and k'.
    approx = approx.sort(dim=1).values.contiguous()
    position = torch.searchsorted(approx, exact.to(approx.dtype).contiguous())  # [Q, k]
    candidate = approx.gather(1, position.clamp(max=approx.shape[1] - 1))
    found = candidate == exact  # [Q, k]
    return float(found.double().mean())


# --------------------------------------------------------------------------------------------
# Chance level: what a random ranking scores, so that a figure can be read against it.
#
# A uniformly random ranking of N candidates, of which c are right answers, puts the best right
# one at rank <= K unless all c fall among the N - K others: P(best rank <= K) = 1 - C(N-c, K) /
# C(N, K) = 1 - prod_{i<c} (N - K - i) / (N - i). With c = 1 this is K / N. The expected best rank
# is (N + 1) / (c + 1). Text-to-video is the case N = V videos, c = 1; video-to-text under the
# MSR-VTT protocol is N = Q captions, c = the video's own captions.

# The chance CDF is a ratio of integers computed in floats; within this of 1/2 it counts as
# exactly 1/2 (e.g. 4 of 8 videos), where the median is the midpoint of two ranks.
_HALF_TOLERANCE = 1e-12


def _as_right_counts(num_candidates: int, num_right: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Distinct right-answer counts ``[U]`` and how many queries have each ``[U]``."""
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be at least 1, got {num_candidates}")
    counts = np.asarray(_as_tensor(num_right).cpu().numpy())
    if counts.ndim != 1 or counts.shape[0] == 0:
        raise ValueError(f"num_right must be a non-empty 1-D sequence, got shape {counts.shape}")
    if not np.issubdtype(counts.dtype, np.integer):
        raise ValueError(f"num_right must hold integer counts, got {counts.dtype}")
    if counts.min() < 1 or counts.max() > num_candidates:
        raise ValueError(
            f"every query needs 1 to {num_candidates} right answers, "
            f"got {counts.min()} to {counts.max()}"
        )
    distinct, queries = np.unique(counts, return_counts=True)
    return distinct, queries


def _chance_recall(
    num_candidates: int, distinct: np.ndarray, queries: np.ndarray, ks: np.ndarray
) -> np.ndarray:
    """Fraction ``[L]`` of queries whose best right answer a random ranking puts within each
    ``ks [L]``, for queries with ``distinct [U]`` right answers, ``queries [U]`` of each."""
    recall = np.zeros(len(ks))
    for right, weight in zip(distinct.tolist(), queries.tolist(), strict=True):
        if right == 1:  # the common case, written so that K / N comes out exact in floats
            recall += weight * np.minimum(ks, num_candidates) / num_candidates
            continue
        i = np.arange(right)
        # [L, right]: the chance that the i-th right answer also misses the top K, given the
        # previous ones did; a factor <= 0 means the top K cannot miss them all.
        factors = (num_candidates - ks[:, None] - i) / (num_candidates - i)
        recall += weight * (1.0 - np.clip(factors, 0.0, None).prod(axis=1))
    return recall / queries.sum()


def chance_recall_at_k_curve(
    num_candidates: int, num_right: ArrayLike, ks: Sequence[int]
) -> list[float]:
    """Expected recall@K (percent) of a uniformly random ranking, for each ``k`` in ``ks``.

    Args:
        num_candidates: ``N``, items every query ranks (videos for text-to-video, captions for
            video-to-text).
        num_right: ``[M]`` right answers of each query (1 for text-to-video; a video's own
            captions for video-to-text, where its best-ranked one counts).
        ks: cut-offs ``>= 1``; beyond ``N`` recall is 100%.

    Returns:
        Per ``k``: the mean over queries of ``1 - C(N - c, k) / C(N, k)`` times 100, where ``c``
        is the query's right answers (``min(k, N) / N`` when ``c == 1``).
    """
    distinct, queries = _as_right_counts(num_candidates, num_right)
    cutoffs = np.asarray(list(ks), dtype=np.int64)
    if cutoffs.ndim != 1 or (cutoffs.size and cutoffs.min() < 1):
        raise ValueError(f"ks must be cut-offs >= 1, got {list(ks)}")
    recall = _chance_recall(num_candidates, distinct, queries, cutoffs)
    return [float(value) * 100 for value in recall]


def chance_recall_metrics(num_candidates: int, num_right: ArrayLike) -> dict[str, float]:
    """The metrics of :func:`recall_metrics` that a uniformly random ranking is expected to get.

    Args:
        num_candidates: ``N``, items every query ranks.
        num_right: ``[M]`` right answers of each query (see :func:`chance_recall_at_k_curve`).

    Returns:
        ``{"R@1", "R@5", "R@10"}``: expected percent within K; ``"MnR"``: expected mean rank, the
        mean over queries of ``(N + 1) / (c + 1)``; ``"MdR"``: the median of the random rank's
        distribution over all queries (the smallest ``m`` with ``P(rank <= m) >= 1/2``, or
        ``m + 0.5`` when that probability is exactly 1/2, as numpy's median of a large sample
        of such ranks would give). With one right answer each, both are ``(N + 1) / 2``.
    """
    distinct, queries = _as_right_counts(num_candidates, num_right)
    result = {
        f"R@{k}": float(_chance_recall(num_candidates, distinct, queries, np.array([k]))[0] * 100)
        for k in (1, 5, 10)
    }

    def at_most(rank: int) -> float:
        return float(_chance_recall(num_candidates, distinct, queries, np.array([rank]))[0])

    # Binary search for the first rank whose CDF reaches 1/2 (the CDF is 1 at rank N).
    low, high = 1, num_candidates
    while low < high:
        middle = (low + high) // 2
        if at_most(middle) >= 0.5 - _HALF_TOLERANCE:
            high = middle
        else:
            low = middle + 1
    exactly_half = abs(at_most(low) - 0.5) <= _HALF_TOLERANCE and low < num_candidates
    result["MdR"] = low + 0.5 if exactly_half else float(low)
    result["MnR"] = float((queries * (num_candidates + 1) / (distinct + 1)).sum() / queries.sum())
    return result


def chance_retrieval_metrics(captions_per_video: ArrayLike) -> dict[str, dict[str, float]]:
    """Chance level of :func:`retrieval_metrics` for a set of ``V`` videos and their captions.

    Args:
        captions_per_video: ``[V]`` captions each video owns (0 for an uncaptioned video, which
            is still a text-to-video candidate but no video-to-text query); at least one caption.

    Returns:
        ``{"t2v": ..., "v2t": ...}``, each as :func:`chance_recall_metrics`: text-to-video ranks
        ``V`` videos with one right answer per caption; video-to-text ranks the ``Q`` captions,
        a video counting its best-ranked own caption.
    """
    counts = np.asarray(_as_tensor(captions_per_video).cpu().numpy())
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0:
        raise ValueError("captions_per_video must be [V] non-negative integer counts")
    num_queries = int(counts.sum())
    if num_queries == 0:
        raise ValueError("chance level needs at least one caption")
    return {
        "t2v": chance_recall_metrics(len(counts), np.ones(num_queries, np.int64)),
        "v2t": chance_recall_metrics(num_queries, counts[counts > 0]),
    }
