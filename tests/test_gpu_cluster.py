"""A heterogeneous cluster: decode actors on a CPU-only node feed encode actors on a GPU node.

The GPU node declares a GPU this machine does not have: Ray still pins the encode actor to it
(its own GPU id), and the model computes on the CPU, as it does wherever CUDA is missing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lancedb
import pytest
from ray.cluster_utils import Cluster

# A Cluster head started after the session's Ray (tests/conftest.py) times out at start-up:
# this module runs first (see pytest_collection_modifyitems there).
pytestmark = pytest.mark.own_ray_cluster

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def cpu_and_gpu_nodes() -> Iterator[tuple[Cluster, str, str]]:
    """A CPU-only head node (3 CPUs) and a worker with 2 CPUs and 1 declared GPU."""
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        # The dashboard answers the placement query; ports of its own beside other Rays.
        head_node_args={
            "num_cpus": 3,
            "num_gpus": 0,
            "env_vars": ENV,
            "include_dashboard": True,
            "dashboard_port": free_port(),
            "dashboard_agent_listen_port": free_port(),
        },
    )
    gpu_node = cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    yield cluster, cluster.head_node.node_id, gpu_node.node_id
    cluster.shutdown()


def test_decode_actors_run_on_the_cpu_node_and_encode_actors_on_the_gpu_node(
    cpu_and_gpu_nodes: tuple[Cluster, str, str], sample_corpus: Path, tmp_path: Path
) -> None:
    from ray.util.state import list_actors

    cluster, cpu_node, gpu_node = cpu_and_gpu_nodes
    done = subprocess.run(
        [sys.executable, "-m", "jobs.index", "--manifest", str(sample_corpus / "manifest"),
         "--db", str(tmp_path / "db"), "--table", "videos", "--model", "tiny",
         "--batch-size", "2", "--address", cluster.address],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # The plan: 1 encode actor on the GPU; the 3 CPUs left beside Ray's headroom all decode,
    # all of them on the CPU-only node although the GPU node has a CPU to spare.
    assert "3 decode actor(s) x 1 CPU (3 on CPU-only nodes, 0 beside the GPUs)" in done.stdout
    assert lancedb.connect(str(tmp_path / "db")).open_table("videos").count_rows() == 16

    actors = list_actors(
        address=cluster.address, detail=True, limit=1000, raise_on_missing_output=False
    )
    placed: dict[str, set[str]] = {"DecodeStage": set(), "EncodeStage": set()}
    for actor in actors:
        for stage, nodes in placed.items():
            if stage in actor.class_name:
                nodes.add(actor.node_id)
    assert placed == {"DecodeStage": {cpu_node}, "EncodeStage": {gpu_node}}, actors
    # The encode actor was pinned to the GPU node's GPU, and encoded every video.
    workers = [line for line in done.stdout.splitlines() if "worker node=" in line]
    assert len(workers) == 1 and f"node={gpu_node[:12]} gpus=0 " in workers[0], done.stdout
