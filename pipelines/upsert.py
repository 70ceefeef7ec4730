"""Upserts keyed on ``video_id`` in one commit, at a cost that does not grow with the table.

LanceDB's ``merge_insert`` (update when matched, insert otherwise) costs more the larger the
table once it replaces rows: a 256-row commit replacing 128 of them took 89 ms on a 1M-row table
against 39 ms at 10k rows (bench/scale.py's rows: 512-d vectors, 4 segments; 2-core EPYC), with
or without the index on ``video_id``. Deleting the replaced rows, then appending the batch, costs
about what each touches (29 and 24 ms), but as two commits a reader between them would miss those
videos, and a kill between them would drop them until the next run.

:class:`IndexedUpsert` does both in one Lance ``Update`` commit: the rows to replace are found
through the BTREE index on the key, marked deleted in their fragments, the batch is written as new
fragments, and one version holds it all. Its dataset handle lives as long as the writer, with the
key's index loaded whole into its cache, so lookups read no index page from storage.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import lancedb
import numpy as np
import pyarrow as pa

from pipelines import schema
from pipelines.plan import newest_per_id

if TYPE_CHECKING:
    import lance

# Keys per lookup filter: one ``IN`` list of a commit's keys, kept short enough to plan quickly.
_KEYS_PER_LOOKUP = 1000
# Tries of an upsert that another writer's commit preempts (Lance's ``CommitConflictError``).
_ATTEMPTS = 5
_FRAGMENT_BITS = 32


def sql_in(column: str, values: Iterable[str]) -> str:
    """A SQL ``column IN (...)`` filter with the values quoted."""
    quoted = ",".join("'" + str(value).replace("'", "''") + "'" for value in values)
    return f"{column} IN ({quoted})"


def conform(rows: pa.Table, target: pa.Schema) -> pa.Table:
    """``rows`` in ``target``'s column order and types; a column ``rows`` lacks is null, as
    ``merge_insert`` leaves it."""
    columns = [
        rows[field.name].cast(field.type)
        if field.name in rows.column_names
        else pa.nulls(rows.num_rows, field.type)
        for field in target
    ]
    return pa.Table.from_arrays(columns, schema=target)


class IndexedUpsert:
    """Upserts into ``table`` keyed on ``video_id``, each in one commit (see the module's text).

    Of the rows of one id in a batch, the newest by ``time_column`` is kept, the last of equal
    times (:func:`pipelines.plan.newest_per_id`). ``storage_options`` reach the table's object
    store (``None`` for a local folder). A table with stable row ids is upserted with
    ``merge_insert``, which carries them over.
    """

    def __init__(
        self,
        table: lancedb.table.Table,
        time_column: str,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        self.table = table
        self.time_column = time_column
        self.storage_options = storage_options
        self._dataset: lance.LanceDataset | None = None
        self._prewarmed: tuple[str, ...] = ()  # the key's index in this handle's cache

    def __call__(self, rows: pa.Table) -> None:
        # Pylance warns at every later fork of the process that imports it: imported here, as
        # LanceDB's ``to_lance`` does, it stays out of processes that never upsert.
        from lance.commit import CommitConflictError

        rows = newest_per_id(rows, self.time_column)
        for attempt in range(1, _ATTEMPTS + 1):
            dataset = self._latest()
            if dataset.has_stable_row_ids:
                (
                    self.table.merge_insert(schema.VIDEO_ID)
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .execute(rows)
                )
                return
            try:
                self._dataset = self._commit(dataset, conform(rows, dataset.schema))
                break
            except CommitConflictError:
                # Another writer committed first (a maintenance, an index build): what this
                # attempt wrote is left unreferenced, and the next one starts from that version.
                if attempt == _ATTEMPTS:
                    raise
                self._dataset = None
        self.table.checkout_latest()

    def _commit(self, dataset: lance.LanceDataset, rows: pa.Table) -> lance.LanceDataset:
        """Replace the rows of ``rows``' keys in ``dataset`` and add the others, in one commit
        on top of ``dataset``'s version; returns the version it made."""
        import lance
        from lance import LanceOperation
        from lance.fragment import write_fragments

        removed, updated = self._deleted_in_fragments(dataset, rows[schema.VIDEO_ID].to_pylist())
        added = write_fragments(
            rows,
            dataset,
            schema=dataset.schema,
            data_storage_version=dataset.data_storage_version,
            storage_options=self.storage_options,
        )
        return lance.LanceDataset.commit(
            dataset,
            LanceOperation.Update(
                removed_fragment_ids=removed, updated_fragments=updated, new_fragments=added
            ),
            read_version=dataset.version,
            storage_options=self.storage_options,
        )

    def _latest(self) -> lance.LanceDataset:
        """The table's latest version, through a handle whose cache holds the key's index whole.

        A commit's lookups of scattered keys would otherwise read an index page each until cached
        (about 160 pages for 256 keys at 1M rows, 25 ms), where the whole index is small (at 1M
        rows, 20 MB of cache, read in 64 ms). It is loaded once per version of the index (a
        maintenance writes a new one), into a new handle, so the version before leaves memory
        with the old handle's cache."""
        if self._dataset is not None:
            latest = self._dataset.latest_version
            if self._dataset.version != latest:
                self._dataset = self._dataset.checkout_version(latest)
            if self._key_index(self._dataset) == self._prewarmed:
                return self._dataset
        dataset = self.table.to_lance()
        latest = dataset.latest_version
        if dataset.version != latest:
            dataset = dataset.checkout_version(latest)
        self._prewarmed = self._key_index(dataset)
        if self._prewarmed:
            dataset.prewarm_index(self._prewarmed[0])
        self._dataset = dataset
        return dataset

    def _key_index(self, dataset: lance.LanceDataset) -> tuple[str, ...]:
        """The name and segment ids of the index on the key (empty without one)."""
        for index in dataset.describe_indices():
            if index.field_names == [schema.VIDEO_ID]:
                return (index.name, *(str(segment.uuid) for segment in index.segments))
        return ()

    def _deleted_in_fragments(
        self, dataset: lance.LanceDataset, keys: list[str]
    ) -> tuple[list[int], list[lance.fragment.FragmentMetadata]]:
        """The rows holding ``keys`` marked deleted, uncommitted: the ids of fragments left
        empty, and the metadata of the others with their new deletion files."""
        addresses = np.concatenate(
            [
                dataset.to_table(
                    columns=[],
                    filter=sql_in(schema.VIDEO_ID, keys[start : start + _KEYS_PER_LOOKUP]),
                    with_row_address=True,
                )["_rowaddr"].to_numpy()
                for start in range(0, len(keys), _KEYS_PER_LOOKUP)
            ]
            or [np.zeros(0, np.uint64)]
        )
        fragment_ids = addresses >> _FRAGMENT_BITS
        offsets = addresses & ((1 << _FRAGMENT_BITS) - 1)
        removed, updated = [], []
        for fragment_id in np.unique(fragment_ids):
            kept = dataset.get_fragment(int(fragment_id)).delete_rows(
                offsets[fragment_ids == fragment_id].tolist()
            )
            if kept is None:
                removed.append(int(fragment_id))
            else:
                updated.append(kept)
        return removed, updated
