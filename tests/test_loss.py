import math
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from centerclip.loss import distributed_infonce, gather_with_grad, symmetric_infonce

WORLD = 2
FEATURES = 6
EMBED = 4


def _unit(rows: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=generator, dtype=torch.float64), dim=1)


def _reference_infonce(video: torch.Tensor, text: torch.Tensor, logit_scale: float) -> float:
    """CLIP's loss written out entry by entry."""
    batch = video.shape[0]
    logits = [
        [math.exp(logit_scale) * float(video[i] @ text[j]) for j in range(batch)]
        for i in range(batch)
    ]
    video_to_text = -sum(
        logits[i][i] - math.log(sum(math.exp(logits[i][j]) for j in range(batch)))
        for i in range(batch)
    )
    text_to_video = -sum(
        logits[j][j] - math.log(sum(math.exp(logits[i][j]) for i in range(batch)))
        for j in range(batch)
    )
    return (video_to_text + text_to_video) / (2 * batch)


def test_matches_reference_computation():
    video, text = _unit(5, 8, seed=0), _unit(5, 8, seed=1)
    logit_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)
    loss = symmetric_infonce(video, text, logit_scale)
    assert loss.shape == ()
    assert float(loss) == pytest.approx(
        _reference_infonce(video, text, float(logit_scale)), rel=1e-5
    )


def test_logit_scale_is_a_log():
    video, text = _unit(4, 8, seed=2), _unit(4, 8, seed=3)
    at_one = symmetric_infonce(video, text, torch.tensor(0.0))
    assert float(at_one) == pytest.approx(_reference_infonce(video, text, 0.0), rel=1e-5)


def test_symmetric_in_video_and_text():
    video, text = _unit(6, 8, seed=4), _unit(6, 8, seed=5)
    scale = torch.tensor(2.0)
    assert torch.allclose(
        symmetric_infonce(video, text, scale), symmetric_infonce(text, video, scale)
    )


def test_matching_pairs_score_lower_than_random_pairs():
    video = _unit(16, 32, seed=6)
    noisy_copy = F.normalize(video + 0.05 * _unit(16, 32, seed=7), dim=1)
    scale = torch.tensor(math.log(1 / 0.07))
    matched = symmetric_infonce(video, noisy_copy, scale)
    unrelated = symmetric_infonce(video, _unit(16, 32, seed=8), scale)
    assert float(matched) < 0.1
    assert float(unrelated) > math.log(16) / 2


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        symmetric_infonce(torch.zeros(3, 4), torch.zeros(2, 4), torch.tensor(0.0))
    with pytest.raises(ValueError, match="scalar"):
        symmetric_infonce(torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(2))


def test_without_process_group_gather_is_identity():
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x
    video, text = _unit(3, 4, seed=9), _unit(3, 4, seed=10)
    scale = torch.tensor(1.0)
    assert torch.equal(
        distributed_infonce(video, text, scale), symmetric_infonce(video, text, scale)
    )


class _TwoTowers(nn.Module):
    """Stand-in for the CLIP towers: one projection each and CLIP's learned temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.video_proj = nn.Linear(FEATURES, EMBED, dtype=torch.float64)
        self.text_proj = nn.Linear(FEATURES, EMBED, dtype=torch.float64)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07), dtype=torch.float64))

    def forward(
        self, video: torch.Tensor, text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            F.normalize(self.video_proj(video), dim=1),
            F.normalize(self.text_proj(text), dim=1),
            self.logit_scale,
        )


def _step(model: nn.Module, video: torch.Tensor, text: torch.Tensor, distributed: bool) -> dict:
    video = video.clone().requires_grad_(True)
    text = text.clone().requires_grad_(True)
    embedded = model(video, text)
    loss = distributed_infonce(*embedded) if distributed else symmetric_infonce(*embedded)
    loss.backward()
    return {
        "loss": loss.detach(),
        "video_grad": video.grad,
        "text_grad": text.grad,
        "params": {name: p.grad.clone() for name, p in model.named_parameters()},
    }


def _distributed_steps(rank: int, inputs: dict) -> dict:
    results = {}
    for name, (video, text, sizes) in inputs["batches"].items():
        start = sum(sizes[:rank])
        rows = slice(start, start + sizes[rank])
        model = _TwoTowers()
        model.load_state_dict(inputs["state"])
        # DDP averages the parameter gradients over workers, as real training does.
        ddp = nn.parallel.DistributedDataParallel(model)
        results[name] = _step(ddp, video[rows], text[rows], distributed=True)
    return results


def _worker(rank: int, work_dir: Path) -> None:
    """One rank of the distributed step, in a process of its own; results go to ``rank{N}.pt``."""
    torch.set_num_threads(1)
    inputs = torch.load(work_dir / "inputs.pt")
    dist.init_process_group(
        "gloo",
        init_method=f"file://{work_dir / 'rendezvous'}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        # The DDP wrappers live in a function of their own so that they are freed before the
        # process group is: freeing one after ``destroy_process_group`` hung about one run in 5.
        torch.save(_distributed_steps(rank, inputs), work_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run_workers(work_dir: Path, limit_s: float) -> None:
    """Runs the ranks as plain child processes that read their inputs from a file.

    Not ``torch.multiprocessing.spawn``: a CI run once hung there past the test's limit, and its
    non-daemon children then kept pytest from exiting. Here every child is killed at the limit
    and its output is part of the failure.
    """
    # Loopback, rather than the interface the host name resolves to: both ranks are here.
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    logs = [work_dir / f"rank{rank}.log" for rank in range(WORLD)]
    workers = []
    for rank, log in enumerate(logs):
        with log.open("wb") as out:
            command = [sys.executable, __file__, str(rank), str(work_dir)]
            workers.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env))
    deadline = time.monotonic() + limit_s
    try:
        for worker in workers:
            worker.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    failures = [
        f"rank {rank} (exit {worker.returncode}):\n{log.read_text()}"
        for rank, (worker, log) in enumerate(zip(workers, logs, strict=True))
        if worker.returncode != 0
    ]
    assert not failures, f"ranks failed or ran past {limit_s} s:\n" + "\n".join(failures)


@pytest.mark.timeout(150)
def test_gathered_loss_and_gradients_equal_single_process(tmp_path):
    torch.manual_seed(0)
    state = _TwoTowers().state_dict()
    generator = torch.Generator().manual_seed(1)
    batches = {}
    # Equal local batches, and a short last batch on one worker.
    for name, sizes in {"even": [3, 3], "uneven": [3, 2]}.items():
        total = sum(sizes)
        video = torch.randn(total, FEATURES, generator=generator, dtype=torch.float64)
        text = torch.randn(total, FEATURES, generator=generator, dtype=torch.float64)
        batches[name] = (video, text, sizes)
    torch.save({"state": state, "batches": batches}, tmp_path / "inputs.pt")

    _run_workers(tmp_path, limit_s=120)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    for name, (video, text, sizes) in batches.items():
        model = _TwoTowers()
        model.load_state_dict(state)
        single = _step(model, video, text, distributed=False)
        start = 0
        for rank, size in enumerate(sizes):
            worker = per_rank[rank][name]
            rows = slice(start, start + size)
            start += size
            assert torch.allclose(worker["loss"], single["loss"], rtol=1e-12), name
            # The gather's backward sums the W identical losses' gradients onto each slice; DDP's
            # 1/W average on everything upstream brings them back to the single-process values.
            for key in ("video_grad", "text_grad"):
                local = worker[key] / WORLD
                assert torch.allclose(local, single[key][rows], rtol=1e-9), (name, key)
            for param, grad in single["params"].items():
                averaged = worker["params"][f"module.{param}"]
                assert torch.allclose(averaged, grad, rtol=1e-9), (name, param)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), Path(sys.argv[2]))
