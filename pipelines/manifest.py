"""Reading and validating a sharded Parquet manifest, and fingerprinting the files it names.

A manifest is one or more Parquet shards, one row per video:

==============  =========================  ==================================================
column          type                       meaning
==============  =========================  ==================================================
``video_id``    string, required, unique   the key of the video everywhere downstream
``uri``         string, required           local path, ``file://`` or any URI Arrow opens
                                           (``s3://bucket/key``); a relative local path is
                                           resolved against the folder holding its shard
``caption``     string or list of strings  normalised to ``list<string>``
``split``       string                     ``train`` / ``test`` / ...
``start_s``     number                     clip start in seconds (optional, with ``end_s``)
``end_s``       number                     clip end in seconds
``fingerprint`` string                     kept if given (an S3 ETag inventory, a hash...)
==============  =========================  ==================================================

Any other column is carried through unchanged. :func:`read_manifest` validates everything before
returning, so a bad manifest fails before a single video is decoded, with a message that names
the shard and the row (0-based within the shard). :func:`attach_fingerprints` adds the
``fingerprint`` the index job compares against its table to find new and changed videos.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines import schema
from pipelines.storage import StorageOptions

Source = str | os.PathLike[str]

_SCHEME = r"^[A-Za-z][A-Za-z0-9+.-]*://"
_SCHEME_RE = re.compile(_SCHEME)


class ManifestError(ValueError):
    """The manifest cannot be used as it is; the message names the shard and row at fault."""


@dataclass(frozen=True)
class _Location:
    """Where a file lives: its filesystem, its path there, and how to spell it as a URI."""

    fs: pafs.FileSystem
    path: str
    prefix: str  # prepended to a path to rebuild a URI ("" for local, "s3://" for S3)
    query: str  # the source URI's "?..." part, handed down to URIs resolved against it

    @property
    def uri(self) -> str:
        return f"{self.prefix}{self.path}"

    def child(self, path: str) -> _Location:
        return _Location(self.fs, path, self.prefix, self.query)


def _locate(source: Source, storage: StorageOptions) -> _Location:
    text = os.fspath(source)
    if not _SCHEME_RE.match(text):
        return _Location(pafs.LocalFileSystem(), os.path.abspath(text), "", "")
    try:
        fs, path = storage.filesystem(text)
    except (ValueError, OSError) as err:
        raise ManifestError(f"cannot open manifest location {text}: {err}") from None
    if isinstance(fs, pafs.LocalFileSystem):
        return _Location(fs, path, "", "")
    base, _, query = text.partition("?")
    base = base.rstrip("/")
    stripped = path.rstrip("/")
    if stripped and base.endswith(stripped):
        prefix = base[: len(base) - len(stripped)]
    else:
        prefix = base.split("://", 1)[0] + "://"
    return _Location(fs, path, prefix, f"?{query}" if query else "")


def _shards(sources: Sequence[Source], storage: StorageOptions) -> list[_Location]:
    """Every Parquet shard named by ``sources`` (files, or folders searched recursively)."""
    shards: list[_Location] = []
    for source in sources:
        loc = _locate(source, storage)
        try:
            info = loc.fs.get_file_info(loc.path)
        except OSError as err:
            raise ManifestError(f"cannot open manifest location {loc.uri}: {err}") from None
        if info.type == pafs.FileType.NotFound:
            raise ManifestError(f"manifest not found: {loc.uri}")
        if info.type == pafs.FileType.File:
            shards.append(loc)
            continue
        selector = pafs.FileSelector(loc.path, recursive=True)
        found = sorted(
            i.path
            for i in loc.fs.get_file_info(selector)
            if i.type == pafs.FileType.File
            and i.path.endswith(".parquet")
            and not i.base_name.startswith((".", "_"))
        )
        if not found:
            raise ManifestError(f"no *.parquet files under {loc.uri}")
        shards.extend(loc.child(path) for path in found)
    return shards


def _first(mask: pa.Array | pa.ChunkedArray) -> tuple[int, int] | None:
    """``(index of the first true, number of trues)`` of a boolean mask, None when all false."""
    hits = pc.indices_nonzero(pc.fill_null(mask, False))
    return (hits[0].as_py(), len(hits)) if len(hits) else None


def _more(count: int, noun: str) -> str:
    return f" ({count - 1} more {noun} like it)" if count > 1 else ""


def _is_stringish(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _as_string(column: pa.ChunkedArray, name: str, shard: str, *, allow_int: bool) -> pa.Array:
    t = column.type
    if _is_stringish(t) or pa.types.is_null(t) or (allow_int and pa.types.is_integer(t)):
        return column.combine_chunks().cast(pa.string())
    raise ManifestError(f"{shard}: column {name!r} must hold strings, got {t}")


def _as_caption_list(column: pa.ChunkedArray, shard: str) -> pa.Array:
    t = column.type
    if _is_stringish(t) or pa.types.is_null(t):
        text = column.combine_chunks().cast(pa.string())
        offsets = pa.array(np.arange(len(text) + 1, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, text, mask=pc.is_null(text))
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
        _is_stringish(t.value_type) or pa.types.is_null(t.value_type)
    ):
        return column.combine_chunks().cast(pa.list_(pa.string()))
    raise ManifestError(
        f"{shard}: column {schema.CAPTION!r} must be a string or a list of strings, got {t}"
    )


def _as_seconds(column: pa.ChunkedArray, name: str, shard: str) -> pa.Array:
    t = column.type
    if (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or (pa.types.is_null(t))
    ):
        return column.combine_chunks().cast(pa.float64())
    raise ManifestError(f"{shard}: column {name!r} must hold numbers of seconds, got {t}")


def _normalise_dots(paths: pa.Array) -> pa.Array:
    """Drop ``.`` segments and fold ``name/..`` pairs, as object stores take keys literally."""
    paths = pc.replace_substring_regex(paths, r"/(?:\./)+", "/")
    for _ in range(64):
        folded = pc.replace_substring_regex(
            paths, r"/[^/]*[^/.][^/]*/\.\./", "/", max_replacements=1
        )
        if folded.equals(paths):
            break
        paths = folded
    return paths


def _resolve_relative(uris: pa.Array, shard: _Location) -> pa.Array:
    """Rewrite relative local paths as paths (or URIs) in the folder that holds ``shard``."""
    relative = pc.invert(pc.or_(pc.starts_with(uris, "/"), pc.match_substring_regex(uris, _SCHEME)))
    if not pc.any(relative).as_py():
        return uris
    folder = f"{shard.prefix}{posixpath.dirname(shard.path)}"
    joined = _normalise_dots(pc.binary_join_element_wise(folder, uris, "/"))
    if shard.query:
        joined = pc.binary_join_element_wise(joined, shard.query, "")
    return pc.if_else(relative, joined, uris)


def _validate_shard(table: pa.Table, shard: _Location) -> pa.Table:
    name = shard.uri
    missing = [c for c in schema.REQUIRED_MANIFEST_COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(
            f"{name}: missing required column(s) {', '.join(map(repr, missing))}; "
            f"found {table.column_names}"
        )
    ids = _as_string(table[schema.VIDEO_ID], schema.VIDEO_ID, name, allow_int=True)
    uris = _as_string(table[schema.URI], schema.URI, name, allow_int=False)
    for column, values in ((schema.VIDEO_ID, ids), (schema.URI, uris)):
        hit = _first(pc.is_null(values))
        if hit:
            raise ManifestError(f"{name} row {hit[0]}: null {column}{_more(hit[1], 'rows')}")
        hit = _first(pc.equal(values, ""))
        if hit:
            raise ManifestError(f"{name} row {hit[0]}: empty {column}{_more(hit[1], 'rows')}")

    columns = {schema.VIDEO_ID: ids, schema.URI: _resolve_relative(uris, shard)}
    if schema.CAPTION in table.column_names:
        columns[schema.CAPTION] = _as_caption_list(table[schema.CAPTION], name)
    for column in (schema.SPLIT, schema.FINGERPRINT):
        if column in table.column_names:
            columns[column] = _as_string(table[column], column, name, allow_int=False)
    for column in (schema.START_S, schema.END_S):
        if column in table.column_names:
            columns[column] = _as_seconds(table[column], column, name)
    _check_clip_ranges(columns, name)
    for column, values in columns.items():
        table = table.set_column(table.schema.get_field_index(column), column, values)
    return table


def _check_clip_ranges(columns: dict[str, pa.Array], shard: str) -> None:
    """Refuse every ``start_s``/``end_s`` that names no clip: not finite, negative, or an end at
    or before the start (0 where ``start_s`` is null or absent). An ``end_s`` past the video's end
    is no error: the decoder knows the duration and clamps the clip to it."""
    start, end = columns.get(schema.START_S), columns.get(schema.END_S)
    for column, values in ((schema.START_S, start), (schema.END_S, end)):
        if values is None:
            continue
        hit = _first(pc.invert(pc.is_finite(values)))
        if hit:
            value = values[hit[0]].as_py()
            raise ManifestError(
                f"{shard} row {hit[0]}: {column} is {value}, not a number of seconds"
                f"{_more(hit[1], 'rows')}"
            )
        hit = _first(pc.less(values, 0))
        if hit:
            raise ManifestError(
                f"{shard} row {hit[0]}: negative {column} ({values[hit[0]].as_py():g})"
                f"{_more(hit[1], 'rows')}"
            )
    if end is None:
        return
    from_start = pc.fill_null(start, 0.0) if start is not None else pa.scalar(0.0)
    hit = _first(pc.less_equal(end, from_start))
    if hit:
        row = hit[0]
        begin = start[row].as_py() if start is not None else None
        where = f"start_s {begin:g}" if begin is not None else "the video's start (start_s is null)"
        raise ManifestError(
            f"{shard} row {row}: {schema.END_S} {end[row].as_py():g} is not after {where}"
            f"{_more(hit[1], 'rows')}"
        )


def read_manifest(
    source: Source | Sequence[Source], *, storage: StorageOptions | None = None
) -> pa.Table:
    """Read and validate a manifest: a folder of Parquet shards, one shard, or a list of either.

    Folders are searched recursively for ``*.parquet`` (names starting with ``.`` or ``_`` are
    skipped) and shards are read in sorted path order, rows in file order. Locations may be local
    paths, ``file://`` URIs, ``s3://`` URIs (reached with ``storage``, by default
    :meth:`StorageOptions.from_env`) or any other URI :meth:`pyarrow.fs.FileSystem.from_uri` opens.

    Checked, each failure naming the shard and 0-based row within it: the required columns
    ``video_id`` and ``uri`` exist; neither is null or empty; ``video_id`` is unique across all
    shards (the error names both occurrences); ``caption``, ``split``, ``start_s``, ``end_s``
    have usable types; clip bounds are finite, ``start_s >= 0`` and ``end_s`` after ``start_s``
    (after 0 where ``start_s`` is null or absent).

    Normalised: ``video_id`` (strings or integers), ``uri``, ``split`` and ``fingerprint`` become
    ``string``; ``caption`` becomes ``list<string>`` (a single string becomes a one-element list);
    ``start_s`` / ``end_s`` become ``float64``; relative local ``uri`` values are resolved against
    the folder that holds their shard (in the shard's own URI form, so a relative path in an S3
    shard names an object beside it; ``.`` and ``..`` segments are folded). Other columns pass
    through untouched; a column missing from some shards is null in their rows.

    Raises:
        ManifestError: on any of the problems above, or a shard that cannot be read.
    """
    if isinstance(source, (str, os.PathLike)):
        sources: Sequence[Source] = [source]
    else:
        sources = list(source)
        if not sources:
            raise ManifestError("no manifest given")
    shards = _shards(sources, storage if storage is not None else StorageOptions.from_env())
    tables = []
    for shard in shards:
        try:
            table = pq.read_table(shard.path, filesystem=shard.fs)
        except (pa.ArrowException, OSError) as err:
            raise ManifestError(f"cannot read manifest shard {shard.uri}: {err}") from None
        tables.append(_validate_shard(table, shard))
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as err:
        raise ManifestError(f"manifest shards have incompatible columns: {err}") from None
    _check_unique(table, tables, shards)
    return table.combine_chunks()


def _check_unique(table: pa.Table, tables: list[pa.Table], shards: list[_Location]) -> None:
    ids = table[schema.VIDEO_ID]
    counts = pc.value_counts(ids)
    duplicated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(duplicated) == 0:
        return
    first, _ = _first(pc.is_in(ids, value_set=duplicated))
    video_id = ids[first].as_py()
    where = pc.indices_nonzero(pc.equal(ids, video_id)).to_numpy()[:2]
    ends = np.cumsum([t.num_rows for t in tables])

    def position(row: int) -> str:
        k = int(np.searchsorted(ends, row, side="right"))
        return f"{shards[k].uri} row {row - (ends[k] - tables[k].num_rows)}"

    raise ManifestError(
        f"duplicate video_id {video_id!r}: {position(where[0])} and {position(where[1])}"
        f"{_more(len(duplicated), 'duplicated ids')}"
    )


# HEAD requests in flight at once when fingerprinting S3 objects: each waits on a round trip.
ETAG_LOOKUPS_IN_FLIGHT = 32


def _fingerprint(info: pafs.FileInfo) -> str | None:
    if info.type != pafs.FileType.File:
        return None
    return f"{info.size}:{info.mtime_ns}" if info.mtime_ns is not None else f"{info.size}"


def _s3_fingerprint(fs: pafs.FileSystem, info: pafs.FileInfo) -> str | None:
    """``"<size>:<etag>"``: opening the object by path makes Arrow send a ``HEAD`` (no ``GET``),
    whose headers its metadata carries."""
    if info.type != pafs.FileType.File:
        return None
    try:
        etag = fs.open_input_file(info.path).metadata().get("ETag")
    except FileNotFoundError:
        return None  # deleted between the listing and the HEAD
    if not etag:
        return _fingerprint(info)
    return _etag_fingerprint(info.size, etag.decode())


def _etag_fingerprint(size: int, etag: str) -> str:
    """``"<size>:<etag>"``, the ETag without the quotes S3 sends it in (``HEAD`` and listing
    alike)."""
    unquoted = etag.strip('"')
    return f"{size}:{unquoted}"


def _fingerprints(fs: pafs.FileSystem, infos: Sequence[pafs.FileInfo]) -> list[str | None]:
    if not isinstance(fs, pafs.S3FileSystem) or not infos:
        return [_fingerprint(info) for info in infos]
    with ThreadPoolExecutor(min(ETAG_LOOKUPS_IN_FLIGHT, len(infos))) as pool:
        return list(pool.map(functools.partial(_s3_fingerprint, fs), infos))


def _list_folder(
    fs: pafs.FileSystem, path: str, s3_client: Any | None, names: set[str]
) -> dict[str, str | None] | None:
    """The fingerprint of each file of ``names`` found in folder ``path``, from one listing;
    ``None`` where the folder cannot be listed (permissions, odd object stores).

    With an S3 client, ``ListObjectsV2`` returns each object's ETag beside its size, 1,000 objects
    a request; Arrow's listing drops the ETag and would leave a ``HEAD`` per object to make."""
    if s3_client is not None:
        listing = _s3_listing(s3_client, path, names)
        if listing is not None:
            return listing
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return None
    infos = [info for info in infos if info.base_name in names]
    return dict(zip([info.base_name for info in infos], _fingerprints(fs, infos), strict=True))


def _s3_listing(s3_client: Any, path: str, names: set[str]) -> dict[str, str] | None:
    """``"<size>:<etag>"`` of each object of ``names`` directly under ``bucket/prefix`` (``path``);
    ``None`` when the listing fails, which leaves the error to Arrow's own requests."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = path.partition("/")
    prefix = f"{prefix}/" if prefix else ""
    pages = s3_client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, Delimiter="/"
    )
    listing = {}
    try:
        for page in pages:
            for entry in page.get("Contents", ()):
                name = entry["Key"][len(prefix) :]
                if name in names:
                    listing[name] = _etag_fingerprint(entry["Size"], entry["ETag"])
    except (BotoCoreError, ClientError):
        return None
    return listing


def _open_folder(folder: str, storage: StorageOptions) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path of a folder (or file) given as a local path or a URI."""
    if not _SCHEME_RE.match(folder):
        return pafs.LocalFileSystem(), os.path.abspath(folder or ".")
    try:
        return storage.filesystem(folder)
    except (ValueError, OSError) as err:
        raise ManifestError(f"cannot open {folder}: {err}") from None


def attach_fingerprints(
    table: pa.Table, *, list_threshold: int = 8, storage: StorageOptions | None = None
) -> pa.Table:
    """Add a ``fingerprint`` string per row that changes whenever the file's bytes change, or
    the clip of them the row names.

    The fingerprint is ``"<size>:<mtime_ns>"`` from the filesystem's metadata (no file is
    opened), and ``"<size>:<etag>"`` on S3. Rows that already carry a non-null ``fingerprint``
    (an ETag from an S3 Inventory report, a content hash) keep it. Rows with ``start_s``/``end_s``
    append ``@<start>-<end>``. A row whose ``uri`` names no file gets a null fingerprint, which
    the index job turns into a ``missing file`` error without decoding.

    Why the ETag on S3: ``LastModified`` has 1 s resolution, so an object overwritten within the
    same second by one of the same size would keep a size:mtime fingerprint and never be
    re-encoded. The ETag changes with the bytes (and re-uploading identical bytes keeps it).
    A listed folder (below) gets its ETags from the listing itself (``ListObjectsV2`` through
    boto3, 1,000 objects a request): Arrow's listing drops them. A file looked up on its own
    costs one ``HEAD`` (through Arrow's S3 client), :data:`ETAG_LOOKUPS_IN_FLIGHT` at a time.

    Cost: rows are grouped by folder; a folder holding at least ``list_threshold`` of the
    manifest's files is listed once (one ``LIST`` per folder on object stores) rather than
    queried file by file; smaller groups are looked up file by file. Python runs per folder, per
    listed entry and per file looked up; the rest is vectorised Arrow.

    Args:
        table: a manifest as :func:`read_manifest` returns it (``uri`` column required).
        list_threshold: folders with fewer manifest files than this are not listed.
        storage: how to reach ``s3://`` URIs (default :meth:`StorageOptions.from_env`).

    Returns:
        ``table`` with the ``fingerprint`` column added or completed.
    """
    uris = table[schema.URI].combine_chunks().cast(pa.string())
    if schema.FINGERPRINT in table.column_names:
        given = table[schema.FINGERPRINT].combine_chunks().cast(pa.string())
    else:
        given = pa.nulls(table.num_rows, pa.string())
    todo = pc.indices_nonzero(pc.is_null(given))
    if len(todo) == 0:
        return _set_column(table, schema.FINGERPRINT, _with_clip_bounds(table, given))
    storage = storage if storage is not None else StorageOptions.from_env()

    wanted = pc.unique(uris.take(todo))
    # Only a URI has a "?query" part; in a local path "?" is just a character.
    is_uri = pc.match_substring_regex(wanted, _SCHEME)
    stem = pc.if_else(is_uri, pc.replace_substring_regex(wanted, r"\?.*$", ""), wanted)
    query = pc.if_else(is_uri, pc.replace_substring_regex(wanted, r"^[^?]*", ""), "")
    folder = pc.binary_join_element_wise(
        pc.if_else(
            pc.match_substring(stem, "/"), pc.replace_substring_regex(stem, r"/[^/]*$", ""), ""
        ),
        query,
        "",
    )
    name = pc.replace_substring_regex(stem, r"^.*/", "")
    # URIs are percent-encoded ("v%201.mp4"), file names on disk and in listings are not.
    encoded = pc.and_(is_uri, pc.match_substring(name, "%"))
    if pc.any(encoded).as_py():
        plain = [unquote(n) for n in name.filter(encoded).to_pylist()]
        name = pc.replace_with_mask(name, encoded, pa.array(plain, pa.string()))
    # Rows sorted by folder, so each folder is one contiguous run.
    codes = folder.dictionary_encode()
    order = np.argsort(codes.indices.to_numpy(), kind="stable")
    run_codes = codes.indices.to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, run_codes[1:] != run_codes[:-1]])
    stops = np.r_[starts[1:], len(order)]

    found_uri: list[str] = []
    found_fp: list[str | None] = []
    listed_names: list[str] = []
    listed_folders: list[str] = []
    listed_fps: list[str | None] = []
    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        key = codes.dictionary[run_codes[start]].as_py()
        fs, path = _open_folder(key, storage)
        rows = pa.array(order[start:stop])
        names = name.take(rows).to_pylist()
        if stop - start >= list_threshold:
            listing = _list_folder(fs, path, storage.s3_client(key), set(names))
            if listing is not None:
                listed_folders.extend(key for _ in listing)
                listed_names.extend(listing)
                listed_fps.extend(listing.values())
                continue
        paths = [posixpath.join(path, n) for n in names]
        found_uri.extend(wanted.take(rows).to_pylist())
        found_fp.extend(_fingerprints(fs, fs.get_file_info(paths)))

    lookup = pa.table({"folder": folder, "name": name, "uri": wanted})
    listed = pa.table(
        {
            "folder": pa.array(listed_folders, pa.string()),
            "name": pa.array(listed_names, pa.string()),
            "fp": pa.array(listed_fps, pa.string()),
        }
    )
    joined = lookup.join(listed, keys=["folder", "name"], join_type="left outer")
    joined = pa.table({"uri": joined["uri"], "fp": joined["fp"]})
    statted = pa.table(
        {"uri": pa.array(found_uri, pa.string()), "fp": pa.array(found_fp, pa.string())}
    )
    resolved = pa.concat_tables([joined.filter(pc.is_valid(joined["fp"])), statted])
    index = pc.index_in(uris, value_set=resolved["uri"].combine_chunks())
    computed = resolved["fp"].combine_chunks().take(index)
    fingerprints = _with_clip_bounds(table, pc.coalesce(given, computed))
    return _set_column(table, schema.FINGERPRINT, fingerprints)


def _with_clip_bounds(table: pa.Table, fingerprints: pa.Array) -> pa.Array:
    """Fingerprints of rows that name a clip (``start_s``/``end_s``) end in ``@start-end``:
    the same bytes cut another way make another embedding, so a changed clip is re-encoded.
    Null fingerprints (missing files) stay null."""
    if schema.START_S not in table.column_names and schema.END_S not in table.column_names:
        return fingerprints
    start, end = (
        table[c] if c in table.column_names else pa.nulls(table.num_rows, pa.float64())
        for c in (schema.START_S, schema.END_S)
    )
    clipped = pc.binary_join_element_wise(
        fingerprints,
        "@",
        pc.fill_null(pc.cast(start, pa.string()), ""),
        "-",
        pc.fill_null(pc.cast(end, pa.string()), ""),
        "",
    )
    return pc.if_else(pc.or_(pc.is_valid(start), pc.is_valid(end)), clipped, fingerprints)


def _set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.schema.get_field_index(name), name, values)
    return table.append_column(name, values)
