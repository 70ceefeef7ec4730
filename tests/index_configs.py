"""The index job's configuration as the tests run it: the tiny preset, encoded on CPUs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pipelines.encode import ModelSpec
from pipelines.index import IndexConfig
from pipelines.resources import ResourceRequest

TINY = ModelSpec("tiny")


def cpu_index_config(manifest: Path, db: Path, table: str, **changes: object) -> IndexConfig:
    """An index of ``manifest`` into ``db``/``table`` with the tiny model and no GPU; ``changes``
    replace any other field."""
    base = IndexConfig(
        manifest=str(manifest),
        db=str(db),
        table=table,
        model=TINY,
        resources=ResourceRequest(gpus_per_actor=0),
    )
    return replace(base, **changes)
