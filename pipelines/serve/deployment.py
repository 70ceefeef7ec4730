"""Starting and stopping the search service on Ray Serve, each bounded in time.

``start_service`` runs the app on the Ray the caller connected to (an embedded local Ray for
``jobs.serve``, a cluster under ``ray job submit``). ``serve run
pipelines.serve.deployment:build_app db=... table=... model=...`` (Ray's own CLI) builds the same
application through :func:`build_app`.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from dataclasses import dataclass

from ray import serve
from ray.serve import Application

from pipelines.decode import SAMPLING_UNIFORM
from pipelines.encode import ModelSpec
from pipelines.serve.app import SearchDeployment
from pipelines.serve.service import ServeConfig

APP_NAME = "centerclip-search"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000  # Ray Serve's own default
START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ServiceResources:
    """How many replicas, and the CPUs each reserves (its text encoder uses one thread)."""

    replicas: int = 1
    replica_cpus: float = 1.0


def application(config: ServeConfig, resources: ServiceResources | None = None) -> Application:
    resources = resources or ServiceResources()
    return SearchDeployment.options(
        num_replicas=resources.replicas,
        ray_actor_options={"num_cpus": resources.replica_cpus},
    ).bind(config)


def build_app(args: dict[str, str]) -> Application:
    """Application builder for ``serve run pipelines.serve.deployment:build_app db=D table=T
    model=M [weights=W] [sampling=S] [replicas=N]``: the preset's own settings (use
    ``jobs.serve`` for overrides)."""
    missing = sorted({"db", "table", "model"} - set(args))
    if missing:
        raise ValueError(f"serve run ... build_app needs {', '.join(f'{m}=...' for m in missing)}")
    spec = ModelSpec(
        args["model"], args.get("weights"), sampling=args.get("sampling", SAMPLING_UNIFORM)
    )
    config = ServeConfig(db=args["db"], table=args["table"], model=spec)
    return application(config, ServiceResources(replicas=int(args.get("replicas", 1))))


def start_service(
    config: ServeConfig,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    resources: ServiceResources | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> str:
    """Start Serve's HTTP proxy on ``host:port`` and the search app behind it; returns its
    URL once ``/health`` answers.

    Raises:
        TimeoutError: the app was not up within ``timeout_s`` (Serve is shut down again).
        RuntimeError: a replica failed to start (its error in the message).
    """
    deadline = time.monotonic() + timeout_s
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
    outcome: list[BaseException | None] = []

    def deploy() -> None:
        try:
            serve.run(application(config, resources), name=APP_NAME, route_prefix="/")
            outcome.append(None)
        except BaseException as err:  # handed to the caller's thread
            outcome.append(err)

    thread = threading.Thread(target=deploy, name="serve-run", daemon=True)
    thread.start()
    thread.join(max(deadline - time.monotonic(), 0.0))
    if not outcome:
        stop_service()
        raise TimeoutError(f"the search service did not start within {timeout_s:.0f} s")
    if outcome[0] is not None:
        stop_service()
        raise RuntimeError(f"the search service failed to start: {outcome[0]}") from outcome[0]
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    _wait_for_http(f"{url}/health", deadline)
    return url


def _wait_for_http(url: str, deadline: float) -> None:
    """The proxy starts routing a moment after the app reports running."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError as err:
            if time.monotonic() > deadline:
                stop_service()
                raise TimeoutError(f"{url} did not answer in time: {err}") from err
            time.sleep(0.2)


def stop_service() -> None:
    """Shut Serve down (its controller, proxy and replicas), leaving Ray running."""
    serve.shutdown()
