"""Storage faults said in one line, with what to do about them.

LanceDB reports a full disk, a refused permission or a table whose files are gone as a generic
``RuntimeError`` carrying the Rust library's message and source location. :func:`storage_fault`
recognises those messages and says what happened and what to do; the jobs print its line
instead of the exception's. Tables commit atomically, so after any of these faults the committed
rows are intact and a rerun does only what is missing.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import lancedb

# How many of a damaged table's latest versions are read back, newest first, in search of one
# whose every file is there (each is a full scan: this runs once, after the job has failed).
VERSIONS_TRIED = 20

_UNREACHABLE = (
    "tcp connect error",
    "Could not connect to server",
    "dns error",
    # LanceDB's object store when the server went away mid-job ("Error performing GET
    # http://host:port/... after 3 retries ... HTTP error: error sending request").
    "error sending request",
)
# The endpoint, as LanceDB's object store (``uri: Some(http://host:port/...``, ``Error performing
# GET http://host:port/...``) or pyarrow's AWS SDK (``Failed to connect to host:port``) names it.
_ENDPOINT = (
    re.compile(r"uri: Some\((?P<at>https?://[^/\s)]+)"),
    re.compile(r"Failed to connect to (?P<at>[\w.-]+:\d+)"),
    re.compile(r"Error performing [A-Z]+ (?P<at>https?://[^/\s]+)"),
)
# A wrong key or secret, as pyarrow's AWS SDK ("AWS Error ACCESS_DENIED during HeadObject") and
# LanceDB's object store (the S3 error code in the response body, or its HTTP status) report it.
_REFUSED_CREDENTIALS = (
    "ACCESS_DENIED",
    "SIGNATURE_DOES_NOT_MATCH",
    "INVALID_ACCESS_KEY_ID",
    "AccessDenied",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "403 Forbidden",
)
_NO_SPACE = ("No space left on device", "os error 28")
_PERMISSION = ("Permission denied", "os error 13")
# "Not found: tmp/db/videos.lance/data/0101....lance, /root/.cargo/...".
_MISSING_FILE = re.compile(
    r"Not found: (?P<table>\S+?\.lance)/(?P<file>(?:data|_indices|_deletions)/[^\s,]+)"
)


def storage_fault(err: BaseException) -> str | None:
    """One line saying which storage fault ``err`` is and its remedy, or None if it is none."""
    text = str(err)
    if any(marker in text for marker in _UNREACHABLE):
        found = [m["at"] for m in (pattern.search(text) for pattern in _ENDPOINT) if m]
        where = f" at {found[0]}" if found else ""
        return (
            f"cannot reach the object store{where}: check AWS_ENDPOINT_URL (or the bucket's "
            "region) and that the server is up, then rerun the same command"
        )
    if any(marker in text for marker in _REFUSED_CREDENTIALS):
        found = [m["at"] for m in (pattern.search(text) for pattern in _ENDPOINT) if m]
        where = f" at {found[0]}" if found else ""
        return (
            f"the object store{where} refused these credentials: check AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN, if set) and that they may read and "
            "write the bucket, then rerun the same command; nothing was written"
        )
    if any(marker in text for marker in _NO_SPACE):
        return (
            "no space left on the device that holds the database (--db): free space there or "
            "give --db another place, then rerun the same command; what was committed is kept "
            "and only the rest is done"
        )
    if any(marker in text for marker in _PERMISSION):
        return (
            "permission denied by the database's storage (--db): give this user write access "
            "to the folder (or the bucket's credentials write rights), then rerun the same "
            "command"
        )
    missing = _MISSING_FILE.search(text)
    if missing:
        # LanceDB drops the leading slash of a local path; an object store's key has none.
        local = Path("/" + missing["table"].lstrip("/"))
        if local.is_dir():
            return damaged_table(str(local), missing["file"])
        return (
            f"the table {missing['table']} is damaged: a file it needs is missing "
            f"({missing['file']}); restore an earlier version (table.list_versions(), "
            "table.restore(N)) and rerun the same command"
        )
    return None


def damaged_table(table_path: str, missing_file: str) -> str:
    """The line for a local table one of whose files is gone: its last version that reads back
    completely, and the command that restores it."""
    path = PurePosixPath(table_path)
    db, name = str(path.parent), path.name.removesuffix(".lance")
    version, latest = last_readable_version(db, name)
    head = f"the table {name} in {db} is damaged: a file it needs is missing ({missing_file})"
    if version is None:
        return (
            f"{head}, and none of its last {VERSIONS_TRIED} versions reads back completely: "
            "index into a new table (another --table or --db)"
        )
    restore = f"import lancedb; lancedb.connect({db!r}).open_table({name!r}).restore({version})"
    return (
        f"{head}; its last complete version is {version} (of {latest}): restore it with "
        f'python -c "{restore}", then rerun the same command'
    )


def last_readable_version(db_uri: str, name: str) -> tuple[int | None, int]:
    """``(version, latest)``: the newest of the table's last :data:`VERSIONS_TRIED` versions
    whose rows all read back (None if none does), and its latest version."""
    table = lancedb.connect(db_uri).open_table(name)
    versions = sorted((v["version"] for v in table.list_versions()), reverse=True)
    for version in versions[:VERSIONS_TRIED]:
        table.checkout(version)
        try:
            for _ in table.search().limit(None).to_batches():
                pass
        except (OSError, RuntimeError, ValueError):
            continue
        return version, versions[0]
    return None, versions[0]
