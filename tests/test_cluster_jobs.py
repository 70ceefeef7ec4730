"""The index job on a multi-node Ray cluster and through ``ray job submit``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lancedb
import pytest
from ray.cluster_utils import Cluster

# A Cluster head started after the session's Ray (tests/conftest.py) times out at start-up:
# this module runs first (see pytest_collection_modifyitems there).
pytestmark = pytest.mark.own_ray_cluster

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
# The CLI and the head must agree on authentication; tests on loopback run without tokens. The
# job's entrypoint runs `python` from PATH: this environment's, as with an activated venv.
ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",
    "PYTHONPATH": str(REPO),
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def index_args(corpus: Path, db: Path) -> list[str]:
    return ["--manifest", str(corpus / "manifest"), "--db", str(db), "--table", "videos",
            "--model", "tiny", "--gpus-per-actor", "0", "--batch-size", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def two_node_cluster() -> Iterator[tuple[Cluster, int]]:
    """Two nodes of 2 CPUs, and the head's dashboard port (where ``ray job submit`` goes). The
    dashboard and its agent get free ports: the default ones may be held by another Ray on the
    same machine, and then no job can be submitted."""
    dashboard = free_port()
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 2,
            "env_vars": ENV,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard,
            "dashboard_agent_listen_port": free_port(),
        },
    )
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    yield cluster, dashboard
    cluster.shutdown()


def test_index_job_uses_both_nodes_of_a_cluster(
    two_node_cluster: tuple[Cluster, int], sample_corpus: Path, tmp_path: Path
) -> None:
    cluster, _ = two_node_cluster
    done = subprocess.run(
        [sys.executable, "-m", "jobs.index", *index_args(sample_corpus, tmp_path / "db"),
         "--actors", "2", "--decode-workers", "2", "--address", cluster.address],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    worker_lines = [line for line in done.stdout.splitlines() if "worker node=" in line]
    nodes = {line.split("node=")[1].split()[0] for line in worker_lines}
    assert len(nodes) == 2, done.stdout
    assert lancedb.connect(str(tmp_path / "db")).open_table("videos").count_rows() == 16


def test_ray_job_submit_runs_the_index_job(
    two_node_cluster: tuple[Cluster, int], sample_corpus: Path, tmp_path: Path
) -> None:
    _, dashboard = two_node_cluster
    submit = [RAY, "job", "submit", f"--address=http://127.0.0.1:{dashboard}",
              "--working-dir", str(REPO), "--", "python", "-m", "jobs.index",
              *index_args(sample_corpus, tmp_path / "db")]  # fmt: skip
    # The head answers before its job agent is up; until then a submission is refused
    # (nothing runs), so it is safe to try again.
    for _ in range(60):
        submitted = subprocess.run(
            submit, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600
        )
        refused = ("No available agent", "Connection refused", "Failed to connect")
        if not any(reason in submitted.stdout + submitted.stderr for reason in refused):
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "succeeded" in submitted.stdout
    assert "indexed     16 videos" in submitted.stdout
    assert lancedb.connect(str(tmp_path / "db")).open_table("videos").count_rows() == 16
