"""The search service's logic, without HTTP or Ray: one model and one table, loaded once.

:class:`SearchService` answers text queries, query-by-example and lookups, and turns every
misuse into a :class:`ServiceError` carrying the HTTP status it deserves (the app maps them).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipelines import schema
from pipelines.encode import ModelSpec
from pipelines.search import (
    BY_VECTOR,
    HybridIndexMissingError,
    ModelMismatchError,
    MomentsUnavailableError,
    SearchHit,
    check_model,
    encode_queries,
    hybrid_search,
    open_index,
    search_vectors,
    split_filter,
)
from pipelines.serve.media import ByteRange, MediaReader
from pipelines.storage import StorageOptions
from pipelines.upsert import sql_in

MAX_K = 100
MAX_QUERY_CHARS = 1000
THUMBNAIL_CACHE_SIZE = 2048


@dataclass(frozen=True)
class ServeConfig:
    """One search service: the table, the model that indexed it, and how much it may use."""

    db: str
    table: str
    model: ModelSpec
    torch_threads: int = 1
    """Text encoding threads per replica: one keeps a replica from stalling on a busy core."""
    refresh_s: float = 10.0
    """How often a replica looks for a newer table version (a re-index while it serves)."""
    storage: StorageOptions = dataclasses.field(default_factory=StorageOptions.from_env)


class ServiceError(Exception):
    """A request the service refuses, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SearchService:
    """Search, similar, video bytes and thumbnails over ``config.table``."""

    def __init__(self, config: ServeConfig) -> None:
        torch.set_num_threads(config.torch_threads)
        self.config = config
        self.model = config.model.build("cpu").eval()
        self.table = open_index(config.db, config.table)
        self.media = MediaReader(config.storage)
        self._lock = threading.Lock()
        self._checked_version: int | None = None
        self._checked_at = 0.0
        self._model_rows = 0
        self._mismatch: str | None = None
        self._refresh()
        self.thumbnail = functools.lru_cache(maxsize=THUMBNAIL_CACHE_SIZE)(self._thumbnail)

    # --- state of the table

    def _refresh(self) -> None:
        """Follow the table to its latest version (at most every ``refresh_s``) and check, once
        per version, that it holds this model's vectors."""
        with self._lock:
            now = time.monotonic()
            if self._checked_version is not None and now - self._checked_at < self.config.refresh_s:
                return
            self._checked_at = now
            self.table.checkout_latest()
            version = self.table.version
            if version == self._checked_version:
                return
            try:
                self._model_rows = check_model(self.table, self.model.model_id)
                self._mismatch = None
            except ModelMismatchError as err:
                self._model_rows, self._mismatch = 0, str(err)
            self._checked_version = version

    def _ready(self) -> None:
        self._refresh()
        if self._mismatch is not None:
            raise ServiceError(409, self._mismatch)

    def health(self) -> dict[str, Any]:
        self._refresh()
        return {
            "status": "ok" if self._mismatch is None else "model_mismatch",
            "table": self.config.table,
            "model_id": self.model.model_id,
            "rows": self._model_rows,
            "table_version": self._checked_version,
            "error": self._mismatch,
        }

    # --- queries

    def search(
        self,
        query: str,
        *,
        k: int = 10,
        split: str | None = None,
        hybrid: bool = False,
        by: str = BY_VECTOR,
    ) -> list[SearchHit]:
        """Top ``k`` videos for the text ``query``, ranked ``by`` the video embedding or the
        best segment (see :func:`pipelines.search.search`)."""
        query = query.strip()
        if not query:
            raise ServiceError(400, "empty query: pass q=some words")
        if len(query) > MAX_QUERY_CHARS:
            raise ServiceError(400, f"query longer than {MAX_QUERY_CHARS} characters")
        _check_k(k)
        if hybrid and by != BY_VECTOR:
            raise ServiceError(400, "hybrid=1 fuses the whole-video ranking; drop by=moments")
        self._ready()
        vector = encode_queries(self.model, [query])
        where = split_filter(split)
        if not hybrid:
            try:
                return search_vectors(
                    self.table,
                    vector,
                    model_id=self.model.model_id,
                    k=k,
                    where=where,
                    checked=True,
                    by=by,
                )[0]
            except MomentsUnavailableError as err:
                raise ServiceError(409, str(err)) from err
        try:
            return hybrid_search(
                self.table,
                query,
                vector[0],
                model_id=self.model.model_id,
                k=k,
                where=where,
                checked=True,
            )
        except HybridIndexMissingError as err:
            raise ServiceError(409, str(err)) from err

    def similar(self, video_id: str, *, k: int = 10, split: str | None = None) -> list[SearchHit]:
        """The ``k`` videos nearest to ``video_id``'s stored vector, itself left out; the best
        segment of each is the one nearest to the whole of ``video_id``."""
        _check_k(k)
        self._ready()
        row = self._row(video_id, [schema.VECTOR])
        vector = np.asarray(row[schema.VECTOR], np.float32)[None]  # [1, D]
        hits = search_vectors(
            self.table,
            vector,
            model_id=self.model.model_id,
            k=k + 1,
            where=split_filter(split),
            checked=True,
        )[0]
        return [hit for hit in hits if hit.video_id != video_id][:k]

    def video(self, video_id: str) -> dict[str, Any]:
        """One row's ``video_id``, ``uri``, captions and segment spans."""
        row = self._row(
            video_id, [schema.URI, schema.CAPTION, schema.SEGMENT_START_S, schema.SEGMENT_END_S]
        )
        return row

    # --- media

    def video_size(self, video_id: str) -> tuple[str, int]:
        uri = self._row(video_id, [schema.URI])[schema.URI]
        try:
            return uri, self.media.size(uri)
        except FileNotFoundError as err:
            raise ServiceError(404, f"video {video_id}: its file {uri} is gone") from err

    def video_bytes(self, uri: str, byte_range: ByteRange) -> bytes:
        return self.media.read(uri, byte_range)

    def _thumbnail(self, video_id: str, t: float | None) -> bytes:
        row = self._row(video_id, [schema.URI, schema.SEGMENT_START_S, schema.SEGMENT_END_S])
        if t is None:
            # Without a query there is no best segment: the middle of the indexed clip.
            starts, ends = row[schema.SEGMENT_START_S] or [0.0], row[schema.SEGMENT_END_S] or [0.0]
            t = (min(starts) + max(ends)) / 2
        try:
            return self.media.thumbnail(row[schema.URI], t)
        except FileNotFoundError as err:
            raise ServiceError(404, f"video {video_id}: its file is gone") from err
        except ValueError as err:
            raise ServiceError(422, f"video {video_id}: {err}") from err

    def _row(self, video_id: str, columns: list[str]) -> dict[str, Any]:
        present = [c for c in columns if c in self.table.schema.names]
        rows = (
            self.table.search()
            .where(
                f"{sql_in(schema.VIDEO_ID, [video_id])} AND "
                f"{sql_in(schema.MODEL_ID, [self.model.model_id])}"
            )
            .select([schema.VIDEO_ID, *present])
            .limit(1)
            .to_list()
        )
        if not rows:
            raise ServiceError(404, f"unknown video_id {video_id!r}")
        return rows[0]


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise ServiceError(400, f"k must be between 1 and {MAX_K}, got {k}")


def hit_json(hit: SearchHit) -> dict[str, Any]:
    """A hit as the API returns it (see the README's API table)."""
    out = {
        "video_id": hit.video_id,
        "uri": hit.uri,
        "score": round(hit.score, 6),
        "captions": list(hit.captions),
        "segment": hit.segment,
        "start_s": round(hit.segment_start_s, 3),
        "end_s": round(hit.segment_end_s, 3),
        "segment_score": round(hit.segment_score, 6),
    }
    if hit.fused_score is not None:
        out["fused_score"] = round(hit.fused_score, 6)
    return out
