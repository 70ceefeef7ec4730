"""One writer per table: a lease the index job holds while it writes a table and its errors table.

Two processes upserting the same keys into a LanceDB table at once both insert: LanceDB 0.40's
commit conflict detection does not see two ``merge_insert`` commits adding the same new key (lance
#4585; measured here, ``bench/concurrent_upserts.py``: two writers of 100 overlapping ids each
left 5 to 55 duplicate rows and neither saw an error). So the index job takes a lease before it
reads anything and holds it until it ends:

- The lease is a small JSON record, ``<db>/<table>.writer-lease.json`` beside the table's folder,
  naming its holder (host, pid, start time, command line) and when it was last renewed.
- It is taken with an atomic create: ``os.open(O_CREAT | O_EXCL)`` on a local filesystem. On
  ``s3://`` pyarrow offers no conditional put (``If-None-Match``), so the record is written when
  absent and read back: two jobs starting within the same few milliseconds can both pass. The
  holder's heartbeat then finds the other's record, and the one that lost stops before its next
  commit (:meth:`WriterLease.check`).
- A thread renews it every ``heartbeat_s`` seconds. A record not renewed for ``expire_s`` seconds
  (several heartbeats) is stale, and so at once is one whose holder ran on this host and whose
  process is gone: a job killed by SIGKILL, or on a machine that went away, blocks the next run
  for ``expire_s`` at most. Staleness across hosts reads their wall clocks: keep them in sync.
- A stale record is taken over by renaming it aside (atomic: of two jobs taking over, one
  renames it), then creating a fresh one.

Read-only jobs (search, evaluate, serve) and ``--dry-run`` never take the lease; a dry run reports
a live holder (:func:`active_writer`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import pyarrow.fs as pafs

from pipelines.storage import S3_SCHEME, StorageOptions

log = logging.getLogger(__name__)

LEASE_SUFFIX = ".writer-lease.json"
DEFAULT_HEARTBEAT_S = 5.0
DEFAULT_EXPIRE_S = 30.0


class WriterBusyError(RuntimeError):
    """Another live job holds the table's lease."""


class LeaseLostError(RuntimeError):
    """The lease this job held was taken over (its heartbeat lapsed past the expiry)."""


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease: the record's contents."""

    token: str
    host: str
    pid: int
    started_at: str
    """UTC, ISO 8601."""
    command: str
    renewed_at: float
    """Wall-clock ``time.time()`` of the last heartbeat."""
    process_start: str = ""
    """The holder's start time in clock ticks since boot (Linux ``/proc``): a recycled pid is
    another process."""

    def describe(self, now: float | None = None) -> str:
        age = (time.time() if now is None else now) - self.renewed_at
        return (
            f"host {self.host}, pid {self.pid}, started {self.started_at}, last heartbeat "
            f"{age:.0f} s ago: {self.command}"
        )

    def is_stale(self, expire_s: float, now: float | None = None) -> bool:
        """Not renewed for ``expire_s`` seconds, or a holder on this host that is gone, or one
        in this very process that no :class:`WriterLease` holds any more (its release could not
        delete the record: the object store was down when an earlier job in this process
        failed)."""
        if (time.time() if now is None else now) - self.renewed_at > expire_s:
            return True
        if self.host == socket.gethostname():
            if _process_start(self.pid) != self.process_start:
                return True
            return self.pid == os.getpid() and self.token not in _HELD_HERE
        return False


# Tokens of the leases this process holds now (acquired and not yet released).
_HELD_HERE: set[str] = set()


def lease_path(db_uri: str, table: str) -> str:
    """The lease record of ``table`` in the database ``db_uri``."""
    return db_uri.rstrip("/") + "/" + table + LEASE_SUFFIX


def active_writer(
    db_uri: str,
    table: str,
    storage: StorageOptions | None = None,
    *,
    expire_s: float = DEFAULT_EXPIRE_S,
) -> LeaseHolder | None:
    """The live holder of ``table``'s lease, or ``None`` (no lease, or a stale one)."""
    holder = _Store(lease_path(db_uri, table), storage).read()
    return holder if holder is not None and not holder.is_stale(expire_s) else None


class WriterLease:
    """The lease on ``table`` in ``db_uri``: :meth:`acquire` (or ``with``) takes it and starts the
    heartbeat, :meth:`release` ends both. ``command`` describes this job to a job it refuses
    (default: this process's command line, as typed)."""

    def __init__(
        self,
        *,
        db_uri: str,
        table: str,
        storage: StorageOptions | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        expire_s: float = DEFAULT_EXPIRE_S,
        command: str | None = None,
    ) -> None:
        if expire_s < 2 * heartbeat_s:
            raise ValueError(f"expire_s {expire_s} must span at least two heartbeats")
        self.table = table
        self.path = lease_path(db_uri, table)
        self.heartbeat_s = heartbeat_s
        self.expire_s = expire_s
        self._store = _Store(self.path, storage)
        # As typed (``python -m jobs.index ...``), where sys.argv starts with the module's file.
        self._command = command if command is not None else " ".join(sys.orig_argv)
        self._holder: LeaseHolder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None

    def acquire(self) -> WriterLease:
        """Take the lease, taking over a stale one, and start renewing it.

        Raises:
            WriterBusyError: a live job holds it; the message names that job.
        """
        mine = LeaseHolder(
            token=uuid.uuid4().hex,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            command=self._command,
            renewed_at=time.time(),
            process_start=_process_start(os.getpid()),
        )
        for _ in range(3):  # a stale record taken over by another job in between: look again
            if self._store.create(mine):
                break
            current = self._store.read()
            if current is None:
                continue  # released between our create and our read
            if not current.is_stale(self.expire_s):
                raise WriterBusyError(self._busy_message(current))
            log.warning("taking over the stale writer lease of %s", current.describe())
            self._store.discard(current)
        else:
            raise WriterBusyError(
                f"table {self.table}: could not take the writer lease {self.path}"
            )
        self._holder = mine
        _HELD_HERE.add(mine.token)
        self._thread = threading.Thread(target=self._renew, name="writer-lease", daemon=True)
        self._thread.start()
        log.info("took the writer lease %s", self.path)
        return self

    def _busy_message(self, holder: LeaseHolder) -> str:
        return (
            f"table {self.table} is being written by another index job ({holder.describe()}); "
            f"wait for it to end and rerun (a job that died frees the table within "
            f"{self.expire_s:.0f} s; lease: {self.path})"
        )

    def check(self) -> None:
        """Raise :class:`LeaseLostError` when the heartbeat found the lease taken over; the
        writer calls this before every commit."""
        if self._lost is not None:
            raise LeaseLostError(self._lost)

    def _renew(self) -> None:
        assert self._holder is not None
        renewed = self._holder.renewed_at
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.renew():
                    return
                renewed = time.time()
            except OSError as err:
                # The store is unreachable: try again at the next beat. Past the expiry another
                # job may take the lease over, so this one must not commit again.
                if time.time() - renewed > self.expire_s:
                    self._lost = (
                        f"table {self.table}: this job's writer lease could not be renewed for "
                        f"{self.expire_s:.0f} s ({err}); stopping before the next commit"
                    )
                    log.error("%s", self._lost)
                    return
                log.warning("could not renew the writer lease %s: %s", self.path, err)

    def renew(self) -> bool:
        """One heartbeat: rewrite the record with a fresh ``renewed_at`` if it is still this
        job's; otherwise mark the lease lost (see :meth:`check`). Returns whether it is held."""
        assert self._holder is not None, "renew() of a lease not acquired"
        current = self._store.read()
        if current is None or current.token != self._holder.token:
            self._lost = (
                f"table {self.table}: this job's writer lease was taken over by "
                f"{current.describe() if current else 'nobody'}; stopping before the next "
                "commit (its heartbeat lapsed past the expiry, or two jobs started at once)"
            )
            log.error("%s", self._lost)
            return False
        self._holder = LeaseHolder(**{**asdict(self._holder), "renewed_at": time.time()})
        self._store.write(self._holder)
        return True

    def release(self) -> None:
        """Stop renewing and delete the record (if it is still this job's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder, self._holder = self._holder, None
        if holder is None:
            return
        _HELD_HERE.discard(holder.token)
        if self._lost is None:
            try:
                current = self._store.read()
                if current is not None and current.token == holder.token:
                    self._store.delete()
            except OSError as err:
                # Left behind, it is stale for this process at once and for others after the
                # expiry (LeaseHolder.is_stale).
                log.warning("could not delete the writer lease %s: %s", self.path, err)

    def __enter__(self) -> WriterLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Store:
    """Reads and writes one lease record, on a local filesystem or through pyarrow (``s3://``)."""

    def __init__(self, path: str, storage: StorageOptions | None) -> None:
        self.fs: pafs.FileSystem | None = None
        self.path = path
        if path.startswith(S3_SCHEME):
            storage = storage if storage is not None else StorageOptions.from_env()
            self.fs, self.path = storage.filesystem(path)
        elif path.startswith("file:"):
            self.path = pafs.FileSystem.from_uri(path)[1]
        elif "://" in path:  # another object store: written when absent, as on S3
            self.fs, self.path = pafs.FileSystem.from_uri(path)

    def read(self, path: str | None = None) -> LeaseHolder | None:
        path = path or self.path
        try:
            if self.fs is None:
                with open(path, "rb") as file:
                    data = file.read()
            else:
                with self.fs.open_input_stream(path) as stream:
                    data = stream.read()
        except FileNotFoundError:
            return None
        try:
            return LeaseHolder(**json.loads(data))
        except (ValueError, TypeError):
            # Half-written by a job killed while creating it: as good as stale.
            return LeaseHolder("", "", 0, "", "unreadable lease record", renewed_at=0.0)

    def create(self, holder: LeaseHolder) -> bool:
        """Write ``holder`` unless a record exists; True when this call created it."""
        if self.fs is None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(descriptor, "wb") as file:
                file.write(_encode(holder))
            return True
        if self.read() is not None:
            return False
        self.write(holder)
        current = self.read()
        return current is not None and current.token == holder.token

    def write(self, holder: LeaseHolder) -> None:
        """Replace the record (a heartbeat): whole or not at all."""
        if self.fs is None:
            temporary = f"{self.path}.{uuid.uuid4().hex}.tmp"
            with open(temporary, "wb") as file:
                file.write(_encode(holder))
            os.replace(temporary, self.path)
        else:
            with self.fs.open_output_stream(self.path) as stream:
                stream.write(_encode(holder))

    def discard(self, stale: LeaseHolder) -> None:
        """Remove the record ``stale`` that was judged stale, and nothing newer: it is renamed
        aside, and put back if it turns out another job took it over in between."""
        aside = f"{self.path}.{uuid.uuid4().hex}.stale"
        try:
            if self.fs is None:
                os.rename(self.path, aside)
            else:
                self.fs.move(self.path, aside)
        except FileNotFoundError:
            return
        taken = self.read(aside)
        if taken is not None and taken.token != stale.token and self.fs is None:
            with contextlib.suppress(FileExistsError):  # yet another record appeared: fine
                os.link(aside, self.path)
        self.delete(aside)

    def delete(self, path: str | None = None) -> None:
        path = path or self.path
        try:
            if self.fs is None:
                os.unlink(path)
            else:
                self.fs.delete_file(path)
        except FileNotFoundError:
            pass


def _encode(holder: LeaseHolder) -> bytes:
    return json.dumps(asdict(holder), sort_keys=True).encode()


def _process_start(pid: int) -> str:
    """Start time of process ``pid`` (clock ticks since boot), or ``""`` when it is gone; on
    systems without ``/proc`` a live pid gives ``"alive"``."""
    if os.path.exists("/proc/self/stat"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as file:
                # The command name (field 2) may hold spaces; the start time is field 22.
                return file.read().rsplit(b")", 1)[1].split()[19].decode()
        except FileNotFoundError:
            return ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return ""
    except PermissionError:
        pass
    return "alive"
