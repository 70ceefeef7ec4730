from __future__ import annotations

import pytest
import torch

from centerclip.cluster import (
    farthest_point_init,
    kmedoids,
    kmedoids_from_distances,
    pairwise_distances,
    spectral,
)


def blobs(centres: torch.Tensor, per_blob: int, spread: float, seed: int = 0) -> torch.Tensor:
    """Tokens ``[len(centres) * per_blob, C]`` scattered tightly around each centre, interleaved
    so that blob membership is not the token order."""
    generator = torch.Generator().manual_seed(seed)
    points = centres.repeat(per_blob, 1)
    return points + spread * torch.randn(points.shape, generator=generator)


def test_kmedoids_returns_distinct_valid_sorted_indices() -> None:
    x = torch.randn(6, 147, 32, generator=torch.Generator().manual_seed(1))
    keep = kmedoids(x, 49)
    assert keep.shape == (6, 49) and keep.dtype == torch.long
    assert keep.min() >= 0 and keep.max() < 147
    for row in keep:
        assert len(set(row.tolist())) == 49
    assert torch.equal(keep, keep.sort(dim=1).values)


def test_kmedoids_is_deterministic_and_batch_independent() -> None:
    x = torch.randn(5, 60, 16, generator=torch.Generator().manual_seed(2))
    together = kmedoids(x, 12)
    assert torch.equal(together, kmedoids(x.clone(), 12))
    alone = torch.cat([kmedoids(x[i : i + 1], 12) for i in range(5)])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_kmedoids_converges_to_a_local_optimum(distance: str) -> None:
    x = torch.randn(4, 90, 8, generator=torch.Generator().manual_seed(3))
    dist = pairwise_distances(x, distance)
    init = farthest_point_init(dist, x.norm(dim=-1), 10)
    medoids, assignment = kmedoids_from_distances(dist, init, max_iters=100)
    for b in range(4):
        for cluster, medoid in enumerate(medoids[b].tolist()):
            members = (assignment[b] == cluster).nonzero().flatten()
            assert medoid in members.tolist()
            summed = dist[b][members][:, members].sum(dim=1)
            medoid_cost = dist[b, medoid, members].sum()
            assert summed.min() >= medoid_cost - 1e-4


def test_first_medoid_is_largest_norm_and_next_is_farthest() -> None:
    x = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [1.0, 0.0], [-3.0, 0.0]]])
    dist = pairwise_distances(x)
    init = farthest_point_init(dist, x.norm(dim=-1), 2)
    assert init.tolist() == [[1, 3]]


@pytest.mark.parametrize(
    "cluster_fn",
    [
        lambda x, k: kmedoids(x, k),
        lambda x, k: kmedoids(x, k, distance="cosine"),
        lambda x, k: spectral(x, k),
        lambda x, k: spectral(x, k, affinity="knn", neighbors=5),
    ],
    ids=["kmedoids", "kmedoids-cosine", "spectral-heat", "spectral-knn"],
)
def test_obvious_clusters_give_one_medoid_each(cluster_fn) -> None:
    centres = torch.tensor([[8.0, 0.0, 0.0], [0.0, 8.0, 0.0], [0.0, 0.0, 8.0], [-8.0, -8.0, 0.0]])
    x = blobs(centres, per_blob=10, spread=0.05)[None]
    keep = cluster_fn(x, 4)
    blob_of_token = torch.arange(40) % 4
    assert sorted(blob_of_token[keep[0]].tolist()) == [0, 1, 2, 3]


def test_keeping_every_token_returns_all_in_order() -> None:
    x = torch.randn(3, 20, 8)
    assert torch.equal(kmedoids(x, 20), torch.arange(20).expand(3, 20))
    assert torch.equal(spectral(x, 20), torch.arange(20).expand(3, 20))


def test_identical_tokens_still_give_distinct_medoids() -> None:
    x = torch.ones(2, 30, 4)
    for keep in (kmedoids(x, 7), spectral(x, 7)):
        for row in keep:
            assert len(set(row.tolist())) == 7


def test_half_precision_input_and_no_gradient() -> None:
    x = torch.randn(2, 40, 16, requires_grad=True)
    keep = kmedoids(x.half(), 5)
    assert not keep.requires_grad
    assert torch.equal(keep, kmedoids(x.detach().half().float(), 5))


@pytest.mark.parametrize("k", [0, 41])
def test_invalid_k_is_rejected(k: int) -> None:
    with pytest.raises(ValueError, match="k must be in 1..40"):
        kmedoids(torch.randn(1, 40, 4), k)
    with pytest.raises(ValueError, match="k must be in 1..40"):
        spectral(torch.randn(1, 40, 4), k)


def test_unknown_distance_is_rejected() -> None:
    with pytest.raises(ValueError, match="distance must be one of"):
        kmedoids(torch.randn(1, 10, 4), 3, distance="manhattan")
