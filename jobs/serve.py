"""Serve an index: a search page and a JSON API on Ray Serve, the model loaded once.

    python -m jobs.serve --db corpus/db --table videos --model tiny

then open http://127.0.0.1:8000/ (the page), or ask the API: /search?q=...&k=10[&split=S]
[&hybrid=1], /similar/VIDEO_ID, /video/VIDEO_ID (byte ranges), /thumbnail/VIDEO_ID?t=SECONDS,
/health. Runs until interrupted (Ctrl-C) or sent SIGTERM, then stops Serve cleanly. --model and
its settings must be the ones the table was indexed with.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
from collections.abc import Sequence

from jobs import _cli, _console
from jobs.index import add_decode_arguments, add_model_arguments, model_spec

DEFAULT_PORT = 8000  # Ray Serve's default HTTP port


def port_number(text: str) -> int:
    value = _cli.positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (1-65535), got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, type=_cli.database, help="LanceDB folder or URI")
    parser.add_argument("--table", required=True, help="embeddings table name")
    add_model_arguments(parser)
    add_decode_arguments(parser, decoder=False)
    service = parser.add_argument_group("service")
    service.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0: every interface, e.g. on a cluster's head node)",
    )
    service.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="HTTP port")
    service.add_argument(
        "--replicas", type=_cli.positive_int, default=1, help="replicas, each with the model"
    )
    service.add_argument(
        "--replica-cpus", type=_cli.positive_float, default=1.0, help="CPUs each replica reserves"
    )
    service.add_argument(
        "--address", help="Ray cluster address (default: RAY_ADDRESS or an embedded local Ray)"
    )


def _check_port_free(host: str, port: int) -> None:
    """Fail before starting Ray when something already listens on ``host:port``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise _cli.JobError(f"--host {host}: not an address of this machine ({err})") from None
    family, kind, _, _, address = infos[0]
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise _cli.JobError(
                f"--host {host} --port {port}: cannot listen there ({err.strerror}); "
                "pick another --port"
            ) from None


def run(args: argparse.Namespace) -> int:
    spec = model_spec(args)
    _check_port_free(args.host, args.port)

    from pipelines.search import open_index
    from pipelines.serve.service import ServeConfig

    try:
        open_index(args.db, args.table)
    except (ValueError, FileNotFoundError) as err:
        raise _cli.JobError(str(err)) from err

    import ray

    from pipelines.serve.deployment import ServiceResources, start_service, stop_service

    if not ray.is_initialized():
        ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or "local")
    # After ray.init, which installs its own SIGTERM handler (it aborts the process).
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    config = ServeConfig(db=args.db, table=args.table, model=spec)
    resources = ServiceResources(replicas=args.replicas, replica_cpus=args.replica_cpus)
    try:
        url = start_service(config, host=args.host, port=args.port, resources=resources)
    except (TimeoutError, RuntimeError) as err:
        raise _cli.JobError(str(err)) from err
    _console.say(f"serving {args.table} from {args.db} at {url}/ (Ctrl-C or SIGTERM stops it)")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        _console.say("stopping the search service")
        stop_service()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return _cli.main(__name__, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
