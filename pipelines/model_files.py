"""A model checkpoint named by an ``s3://`` URI, as a local file that ``centerclip`` loads.

``centerclip.create_model`` takes a preset name or a local checkpoint path and knows nothing of
object storage, so every process that builds a model (the driver, Ray actors on any node)
resolves the URI here first: the object is copied once into a per-machine cache and reused
while it is unchanged. The cache key is the object's URI, size and ETag, read with a ``HEAD``,
so a ``model.pt`` that a new fine-tuning run overwrote is fetched again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from pipelines.storage import S3_SCHEME, StorageOptions

CACHE_ENV = "CENTERCLIP_MODEL_CACHE"  # a folder; the system's temporary folder by default
CHUNK_BYTES = 8 << 20


class ModelFileError(ValueError):
    """The object is missing or the store cannot be reached; the message names the URI."""


def cache_folder() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "centerclip-models")


def local_model_file(name: str, storage: StorageOptions) -> str:
    """``name`` itself unless it is an ``s3://`` URI; then the path of a local copy of it.

    Raises:
        ModelFileError: the object does not exist or cannot be read.
    """
    if not name.startswith(S3_SCHEME):
        return name
    fs, path = storage.filesystem(name)
    try:
        with fs.open_input_file(path) as probe:  # a HEAD: size and ETag, no body
            size = probe.size()
            etag = (probe.metadata().get("ETag") or b"").decode().strip('"')
    except (OSError, ValueError) as err:
        raise ModelFileError(f"--model {name}: cannot read the checkpoint object ({err})") from err
    key = hashlib.sha256(f"{name}\n{size}\n{etag}".encode()).hexdigest()[:32]
    local = cache_folder() / key / Path(path).name
    if local.is_file() and local.stat().st_size == size:
        return str(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    # Another process on this machine may fetch the same object at once: each writes its own
    # temporary file and renames it into place, so a reader never sees a partial copy.
    with tempfile.NamedTemporaryFile(dir=local.parent, delete=False) as partial:
        try:
            with fs.open_input_stream(path) as source:
                while chunk := source.read(CHUNK_BYTES):
                    partial.write(chunk)
        except OSError as err:
            Path(partial.name).unlink()
            raise ModelFileError(f"--model {name}: reading the checkpoint failed ({err})") from err
    os.replace(partial.name, local)
    return str(local)
