"""Retrieval ranks: exact ones, ``chunk_rows`` captions at a time, and those a top-``k`` (ANN)
search can tell."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from centerclip.metrics import ChunkedRanks, chunked_retrieval_ranks, recall_metrics
from pipelines import schema
from pipelines.evaluate.config import EXACT_CHUNK_SCORES, MIN_ANN_K


def exact_ranks(
    text: np.ndarray, video: np.ndarray, caption_video: np.ndarray, *, chunk_rows: int
) -> ChunkedRanks:
    """Exact ranks and top :data:`MIN_ANN_K` of ``text [Q, D]`` against ``video [V, D]`` (cosine:
    both unit norm), at most ``chunk_rows`` captions and :data:`EXACT_CHUNK_SCORES` scores at a
    time, so memory is ``O(min(chunk_rows * V, EXACT_CHUNK_SCORES))`` and not ``O(Q * V)``;
    ``caption_video [Q]`` is each caption's video row."""
    texts, videos = torch.from_numpy(text), torch.from_numpy(video)

    def rows(start: int, stop: int) -> torch.Tensor:
        return texts[start:stop] @ videos.T  # [C, V]

    return chunked_retrieval_ranks(
        rows,
        caption_video,
        num_videos=len(video),
        chunk_rows=max(1, min(chunk_rows, EXACT_CHUNK_SCORES // len(video))),
        top_k=MIN_ANN_K,
    )


@dataclass(frozen=True)
class AnnRanks:
    """Ranks from a top-``k`` search: exact where the right answer came back, else unknown.

    Attributes:
        ranks: ``[N]`` 1-based rank (ties count against the query) where ``found``, else 0.
        found: ``[N]`` whether a right answer was among the ``k`` results.
        top: ``[N, k]`` result ids best first, padded with -1 where fewer came back.
    """

    ranks: np.ndarray
    found: np.ndarray
    top: np.ndarray
    k: int

    def lower_bounds(self) -> np.ndarray:
        """``[N]`` ranks with each unknown one replaced by ``k + 1``, a lower bound of it."""
        return np.where(self.found, self.ranks, self.k + 1)

    def metrics(self) -> dict[str, Any]:
        """R@1/5/10 (exact, as ``k >= 10``), MdR and MnR where they are known (else None), their
        lower bounds, and ``beyond_k``: the queries whose right answer was not returned."""
        lower = self.lower_bounds()
        result: dict[str, Any] = recall_metrics(lower)
        ordered = np.sort(lower)
        middle = ordered[[(len(ordered) - 1) // 2, len(ordered) // 2]]
        result["MdR_lower_bound"] = result["MdR"]
        result["MnR_lower_bound"] = result["MnR"]
        if middle.max() > self.k:
            result["MdR"] = None
        if not self.found.all():
            result["MnR"] = None
        result["beyond_k"] = int((~self.found).sum())
        return result


def ann_ranks(
    results: pa.Table, *, num_queries: int, item: np.ndarray, right: np.ndarray, k: int
) -> AnnRanks:
    """Rank of the best right answer among each query's top-``k`` results.

    Args:
        results: :func:`pipelines.search.nearest` rows (``query``, ``score``; best first within
            a query, at most ``k`` per query).
        num_queries: ``N``, queries searched (a query may have no results).
        item: ``[R]`` integer id of each result row (a video column, a caption row).
        right: ``[R]`` whether each result row is a right answer of its query.
        k: results asked per query.

    Returns:
        :class:`AnnRanks`. A found query's rank is the number of its results scoring at least as
        high as its best right one: the tie policy of :mod:`centerclip.metrics`, so wherever the
        ANN returns the exact top ``k`` its ranks equal the exact ranks.
    """
    query = results[schema.QUERY].to_numpy()
    score = results[schema.SCORE].to_numpy()
    best = np.full(num_queries, -np.inf, score.dtype)
    np.maximum.at(best, query[right], score[right])
    found = np.isfinite(best)
    at_least = np.bincount(query, weights=score >= best[query], minlength=num_queries)
    per_query = np.bincount(query, minlength=num_queries)
    position = np.arange(len(query)) - (np.cumsum(per_query) - per_query)[query]
    top = np.full((num_queries, k), -1, np.int64)
    top[query, position] = item
    ranks = np.where(found, at_least, 0).astype(np.int64)
    return AnnRanks(ranks=ranks, found=found, top=top, k=k)
