"""Retrieval ranks: exact ones, ``chunk_rows`` captions at a time, and those a top-``k`` (ANN)
search can tell."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from centerclip.metrics import (
    ChunkedRanks,
    TextToVideoChunk,
    VideoToTextChunk,
    chunk_bounds,
    chunked_retrieval_ranks,
    recall_metrics,
    text_to_video_chunk,
    video_to_text_chunk,
)
from pipelines import schema
from pipelines.evaluate.config import EXACT_CHUNK_SCORES, MIN_ANN_K, connect_ray

log = logging.getLogger(__name__)


def exact_ranks(
    text: np.ndarray,
    video: np.ndarray,
    caption_video: np.ndarray,
    *,
    chunk_rows: int,
    ray_min_scores: int | None = None,
    address: str | None = None,
) -> ChunkedRanks:
    """Exact ranks and top :data:`MIN_ANN_K` of ``text [Q, D]`` against ``video [V, D]`` (cosine:
    both unit norm); ``caption_video [Q]`` is each caption's video row.

    Scored a chunk at a time: at most ``chunk_rows`` captions against every video, or as many
    videos against every caption, and never more than :data:`EXACT_CHUNK_SCORES` scores, so
    memory is ``O(min(chunk_rows * V, EXACT_CHUNK_SCORES))`` and not ``O(Q * V)``. Above
    ``ray_min_scores`` scores (``Q * V``) the chunks are Ray tasks spread over the cluster at
    ``address`` (see :func:`~pipelines.evaluate.config.connect_ray`).
    """
    num_queries, num_videos = len(text), len(video)
    rows = max(1, min(chunk_rows, EXACT_CHUNK_SCORES // num_videos))
    columns = max(1, rows * num_videos // num_queries)
    if ray_min_scores is not None and num_queries * num_videos > ray_min_scores:
        connect_ray(address)
        return _exact_ranks_on_ray(text, video, caption_video, rows=rows, columns=columns)
    texts, videos = torch.from_numpy(text), torch.from_numpy(video)

    def caption_block(start: int, stop: int) -> torch.Tensor:
        _return_freed_memory()
        return texts[start:stop] @ videos.T  # [C, V]

    def video_block(start: int, stop: int) -> torch.Tensor:
        _return_freed_memory()
        return texts @ videos[start:stop].T  # [Q, Vc]

    return chunked_retrieval_ranks(
        caption_block,
        video_block,
        caption_video,
        num_videos=num_videos,
        chunk_rows=rows,
        chunk_columns=columns,
        top_k=MIN_ANN_K,
    )


def _exact_ranks_on_ray(
    text: np.ndarray, video: np.ndarray, caption_video: np.ndarray, *, rows: int, columns: int
) -> ChunkedRanks:
    """:func:`exact_ranks` with each chunk a one-CPU Ray task; the matrices go to the object
    store once and every task on a node reads the same copy."""
    import ray

    text_ref, video_ref = ray.put(text), ray.put(video)
    caption_ref = ray.put(np.ascontiguousarray(caption_video, dtype=np.int64))
    by_rows = ray.remote(num_cpus=1)(_text_to_video_task)
    by_columns = ray.remote(num_cpus=1)(_video_to_text_task)
    row_chunks = chunk_bounds(len(text), rows)
    column_chunks = chunk_bounds(len(video), columns)
    log.info(
        "exact ranks: %d caption chunks and %d video chunks on Ray",
        len(row_chunks),
        len(column_chunks),
    )
    t2v = [by_rows.remote(text_ref, video_ref, caption_ref, a, b) for a, b in row_chunks]
    v2t = [by_columns.remote(text_ref, video_ref, caption_ref, a, b) for a, b in column_chunks]
    return ChunkedRanks.from_chunks(ray.get(t2v), ray.get(v2t))


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:
    libc = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None


def _return_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere a
    no-op), before each chunk.

    A chunk's temporaries (comparison masks, top-k work: each below glibc's 32 MB threshold for
    mapping memory of its own) come from the heap, and the small results kept between them pin
    it: the peak RSS of the exact step for 100k captions x 11,280 videos (inputs included)
    ranged from 1.2 to 6.0 GiB over runs of the same input, and was 1.24 GiB in each of three
    runs with a trim before every chunk.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _read_only(array: np.ndarray) -> torch.Tensor:
    """A tensor over an object-store array, which is read-only; nothing here writes to it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(array)


def _text_to_video_task(
    text: np.ndarray, video: np.ndarray, caption_video: np.ndarray, start: int, stop: int
) -> TextToVideoChunk:
    torch.set_num_threads(1)  # the task holds one CPU
    _return_freed_memory()
    block = _read_only(text)[start:stop] @ _read_only(video).T  # [C, V]
    return text_to_video_chunk(block, _read_only(caption_video)[start:stop], top_k=MIN_ANN_K)


def _video_to_text_task(
    text: np.ndarray, video: np.ndarray, caption_video: np.ndarray, start: int, stop: int
) -> VideoToTextChunk:
    torch.set_num_threads(1)
    _return_freed_memory()
    block = _read_only(text) @ _read_only(video)[start:stop].T  # [Q, Vc]
    return video_to_text_chunk(block, _read_only(caption_video), start=start, top_k=MIN_ANN_K)


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
