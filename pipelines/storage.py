"""How to reach object storage: decided once, from the environment, and handed to every stage.

The index job touches ``s3://`` from three kinds of process: the driver (manifest, fingerprints,
the LanceDB tables), Ray's decode actors and their decoder children (video bytes). Ray starts
worker processes with the environment of the process that started Ray, not the driver's, so a
variable the driver sees (a job that exports ``AWS_ENDPOINT_URL``, a test that sets it after
``ray.init``) never reaches the actors by itself. So :meth:`StorageOptions.from_env` reads the
driver's environment once, and the resulting value, which pickles, travels explicitly with every
stage that opens a URI. Each library gets it in its own form: :meth:`StorageOptions.filesystem`
for pyarrow (manifests, videos), :meth:`StorageOptions.lancedb_options` for LanceDB (tables).

Variables read (the AWS SDK's names, plus ``AWS_ENDPOINT`` and ``AWS_ALLOW_HTTP`` from the
``object_store`` crate under LanceDB), the first one set of each line winning:

- ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT``: an S3-compatible endpoint
  (MinIO, Ceph, moto). Plain HTTP when it starts with ``http://``, or when it has no scheme and
  ``AWS_ALLOW_HTTP`` is ``true``.
- ``AWS_REGION``, ``AWS_DEFAULT_REGION``: the region.
- ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``: static credentials.

Whatever is unset is left to each library's default chain in the process that uses it (an
instance profile on cluster nodes, ``~/.aws`` on a workstation), so on AWS with instance roles
nothing needs setting and no secret travels. Static credentials, when set, travel in the stages'
constructor arguments, which Ray keeps in its control store for the job's lifetime.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pyarrow.fs as pafs

S3_SCHEME = "s3://"
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    return next((environ[name] for name in names if environ.get(name)), None)


@dataclass(frozen=True)
class StorageOptions:
    """Endpoint, region and credentials for ``s3://`` URIs; ``None`` means the library default.

    ``endpoint`` always carries its scheme (``http://127.0.0.1:9000``). Credentials stay out of
    ``repr`` so that logging a config never prints a secret.
    """

    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StorageOptions:
        """The options the variables in the module docstring describe (``os.environ`` by
        default)."""
        env = os.environ if environ is None else environ
        endpoint = _first(env, ENDPOINT_VARS)
        if endpoint and "://" not in endpoint:
            allow_http = env.get("AWS_ALLOW_HTTP", "").lower() in ("1", "true", "yes")
            endpoint = f"{'http' if allow_http else 'https'}://{endpoint}"
        return cls(
            endpoint=endpoint,
            region=_first(env, REGION_VARS),
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
        )

    def filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """The pyarrow filesystem holding ``uri`` and the path of ``uri`` in it.

        ``s3://bucket/key`` is opened with these options. A URI that configures its filesystem
        itself (``s3://bucket/key?endpoint_override=...``, pyarrow's URI options) and every other
        scheme are opened by :meth:`pyarrow.fs.FileSystem.from_uri` as written.

        Raises:
            ValueError: ``uri`` names no bucket.
        """
        if not uri.startswith(S3_SCHEME) or "?" in uri:
            return pafs.FileSystem.from_uri(uri)
        path, region = self._path_and_region(uri)
        return _s3_filesystem(self, region), path

    def s3_client(self, uri: str) -> Any | None:
        """A boto3 S3 client for the bucket of ``uri`` (``s3://bucket/...``), or ``None`` for
        any other URI and for one that configures its filesystem itself (``?endpoint_override``):
        for the calls pyarrow does not offer, such as a listing with each object's ETag."""
        if not uri.startswith(S3_SCHEME) or "?" in uri:
            return None
        return _boto3_client(self, self._path_and_region(uri)[1])

    def _path_and_region(self, uri: str) -> tuple[str, str | None]:
        """``bucket/key`` of an ``s3://`` URI and the region its clients use.

        Raises:
            ValueError: ``uri`` names no bucket.
        """
        # As from_uri does: keys are percent-decoded, a trailing "/" names the same folder.
        path = unquote(uri[len(S3_SCHEME) :]).rstrip("/")
        bucket = path.split("/", 1)[0]
        if not bucket:
            raise ValueError(f"no bucket in {uri!r}")
        region = self.region
        if region is None and self.endpoint is None:
            # On AWS a client of the wrong region gets redirects its library may not follow.
            region = _bucket_region(bucket)
        return path, region

    def lancedb_options(self, uri: str) -> dict[str, str]:
        """``storage_options`` for ``lancedb.connect(uri)``; empty for anything but ``s3://``."""
        if not uri.startswith(S3_SCHEME):
            return {}
        options = {
            "aws_endpoint": self.endpoint,
            "aws_region": self.region,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "aws_session_token": self.session_token,
        }
        if self.endpoint and self.endpoint.startswith("http://"):
            options["allow_http"] = "true"
        return {key: value for key, value in options.items() if value is not None}


@functools.cache
def _bucket_region(bucket: str) -> str:
    return pafs.resolve_s3_region(bucket)


# One client per setting: a manifest fingerprinted folder by folder, or a decoder child serving
# thousands of videos, would otherwise build an S3 client per call.
@functools.cache
def _s3_filesystem(options: StorageOptions, region: str | None) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        access_key=options.access_key_id,
        secret_key=options.secret_access_key,
        session_token=options.session_token,
        region=region,
        endpoint_override=options.endpoint,
    )


@functools.cache
def _boto3_client(options: StorageOptions, region: str | None) -> Any:
    # Imported here: only listings need boto3, not the decoder processes that import this module.
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=options.endpoint,
        region_name=region,
        aws_access_key_id=options.access_key_id,
        aws_secret_access_key=options.secret_access_key,
        aws_session_token=options.session_token,
    )
