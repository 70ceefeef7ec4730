"""Token clustering: pick K representative real tokens out of each set of N tokens.

Every function is batched over the leading dimension (every segment of every video at once), runs
in float32 without gradient, and returns indices into the input's token axis, sorted ascending so
the kept tokens stay in their original order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from centerclip.config import DISTANCES

_EPS = 1e-12


@contextlib.contextmanager
def _one_cpu_thread(x: Tensor) -> Iterator[None]:
    """Run CPU clustering on one intra-op thread.

    Clustering is a long chain of small kernels (and MKL's ``eigh``), each a separate OpenMP
    parallel region; when another process holds a core, every region waits for the descheduled
    thread and clustering slows down 40x (measured: 10.7 ms alone on one thread, 440 ms on two
    threads beside one busy process). One thread is also as fast on an idle machine.
    """
    threads = torch.get_num_threads()
    if x.device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def pairwise_distances(x: Tensor, distance: str = "euclidean") -> Tensor:
    """Distances between all tokens of each set.

    Args:
        x: tokens ``[B, N, C]``.
        distance: ``"euclidean"`` or ``"cosine"`` (``1 - cos``).
    Returns:
        ``[B, N, N]``, symmetric, zero on the diagonal, float32.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    x = x.float()
    if distance == "cosine":
        unit = torch.nn.functional.normalize(x, dim=-1)
        dist = 1.0 - unit @ unit.transpose(1, 2)
    else:
        squared_norms = (x * x).sum(-1)
        squared = (
            squared_norms[:, :, None] + squared_norms[:, None, :] - 2.0 * (x @ x.transpose(1, 2))
        )
        dist = squared.clamp_min_(0.0).sqrt_()
    dist = dist.clamp_min_(0.0)
    dist.diagonal(dim1=1, dim2=2).zero_()
    return dist


def farthest_point_init(dist: Tensor, norms: Tensor, k: int) -> Tensor:
    """k-medoids++ initialisation, deterministic.

    The first medoid is the token of largest norm; each next one is the token farthest from its
    nearest medoid chosen so far. Tokens already chosen are never chosen again, so the K medoids
    are distinct even when tokens repeat (static video).

    Args:
        dist: pairwise distances ``[B, N, N]``.
        norms: per-token L2 norms ``[B, N]``.
        k: number of medoids.
    Returns:
        medoid indices ``[B, k]`` in the order they were chosen.
    """
    batch, n, _ = dist.shape
    rows = torch.arange(batch, device=dist.device)
    medoids = torch.empty(batch, k, dtype=torch.long, device=dist.device)
    medoids[:, 0] = norms.argmax(dim=1)
    nearest = dist[rows, medoids[:, 0]]  # [B, N] distance to the nearest chosen medoid
    chosen = torch.zeros(batch, n, dtype=torch.bool, device=dist.device)
    chosen[rows, medoids[:, 0]] = True
    for i in range(1, k):
        candidate = nearest.masked_fill(chosen, -1.0).argmax(dim=1)
        medoids[:, i] = candidate
        chosen[rows, candidate] = True
        nearest = torch.minimum(nearest, dist[rows, candidate])
    return medoids


def assign_to_medoids(dist: Tensor, medoids: Tensor) -> Tensor:
    """Nearest medoid of every token; a medoid always belongs to its own cluster.

    Args:
        dist: pairwise distances ``[B, N, N]``.
        medoids: ``[B, K]`` distinct token indices.
    Returns:
        cluster id in ``0..K-1`` of every token, ``[B, N]``.
    """
    to_medoids = dist.gather(2, medoids[:, None, :].expand(-1, dist.shape[1], -1))  # [B, N, K]
    assignment = to_medoids.argmin(dim=2)
    # Duplicate tokens sit at distance 0 from two medoids; pinning each medoid to its own cluster
    # keeps every cluster non-empty.
    cluster_ids = torch.arange(medoids.shape[1], device=dist.device).expand_as(medoids)
    return assignment.scatter(1, medoids, cluster_ids)


def kmedoids_from_distances(
    dist: Tensor, init: Tensor, *, max_iters: int = 20, tol: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Alternate assignment and medoid update until the medoids stop moving.

    The new medoid of a cluster is its member with the smallest summed distance to the other
    members; a medoid is replaced only by a strictly better member, so the total cost never rises
    and the loop cannot cycle between equal-cost medoids.

    Args:
        dist: pairwise distances ``[B, N, N]``.
        init: initial medoids ``[B, K]``, distinct per row.
        max_iters: cap on update rounds.
        tol: also stop once the total cost improved by at most this fraction in one round.
    Returns:
        ``(medoids [B, K], assignment [B, N])``.
    """
    medoids = init
    k = medoids.shape[1]
    previous_cost: Tensor | None = None
    for _ in range(max_iters):
        assignment = assign_to_medoids(dist, medoids)
        membership = torch.nn.functional.one_hot(assignment, k).to(dist.dtype)  # [B, N, K]
        # Summed distance from every token to every cluster's members: [B, N, K]; each token's
        # cost as a medoid is the entry of its own cluster.
        cost = torch.gather(dist @ membership, 2, assignment[:, :, None]).squeeze(2)  # [B, N]
        member_cost = torch.where(membership.bool(), cost[:, :, None], torch.inf)  # [B, N, K]
        best_cost, best = member_cost.min(dim=1)  # [B, K]
        current_cost = cost.gather(1, medoids)
        new_medoids = torch.where(best_cost < current_cost, best, medoids)
        total_cost = best_cost.minimum(current_cost).sum()
        converged = bool(torch.equal(new_medoids, medoids))
        if not converged and previous_cost is not None and tol > 0:
            converged = bool((previous_cost - total_cost) <= tol * previous_cost.abs())
        medoids = new_medoids
        previous_cost = total_cost
        if converged:
            break
    return medoids, assign_to_medoids(dist, medoids)


@torch.no_grad()
def kmedoids(
    x: Tensor,
    k: int,
    *,
    distance: str = "euclidean",
    max_iters: int = 20,
    tol: float = 0.0,
) -> Tensor:
    """k-medoids++ over each set of tokens.

    Args:
        x: tokens ``[B, N, C]``.
        k: tokens to keep per set, ``1 <= k <= N``.
        distance: ``"euclidean"`` or ``"cosine"``.
        max_iters: cap on update rounds after the farthest-point initialisation.
        tol: stop early once a round improves the total cost by at most this fraction
            (0: only when the medoids stop moving).
    Returns:
        indices of the medoid tokens ``[B, k]`` (long), ascending.
    """
    _check_k(x, k)
    x = x.detach().float()
    with _one_cpu_thread(x):
        dist = pairwise_distances(x, distance)
        init = farthest_point_init(dist, x.norm(dim=-1), k)
        medoids, _ = kmedoids_from_distances(dist, init, max_iters=max_iters, tol=tol)
        return medoids.sort(dim=1).values


def spectral_embedding(
    x: Tensor,
    k: int,
    *,
    affinity: str = "heat",
    sigma: float | None = None,
    neighbors: int = 10,
) -> Tensor:
    """Rows of the K smallest eigenvectors of the normalised graph Laplacian, L2-normalised.

    Args:
        x: tokens ``[B, N, C]``.
        k: embedding width (number of clusters).
        affinity: ``"heat"``: ``W = exp(-d^2 / (2 sigma^2))``; ``"knn"``: symmetric 0/1 graph of
            each token's ``neighbors`` nearest tokens.
        sigma: heat-kernel width. ``None`` uses the median pairwise distance of each set, because
            the scale of ViT residual tokens differs by layer and by model.
        neighbors: graph degree for ``"knn"``.
    Returns:
        ``[B, N, k]`` float32.
    """
    dist = pairwise_distances(x, "euclidean")
    n = dist.shape[1]
    if affinity == "heat":
        if sigma is None:
            scale = dist.flatten(1).median(dim=1).values.clamp_min(_EPS)[:, None, None]
        else:
            scale = torch.full((dist.shape[0], 1, 1), float(sigma), device=dist.device)
        weights = torch.exp(-(dist**2) / (2.0 * scale**2))
    elif affinity == "knn":
        nearest = dist.topk(min(neighbors + 1, n), dim=2, largest=False).indices
        weights = torch.zeros_like(dist).scatter_(2, nearest, 1.0)
        weights = torch.maximum(weights, weights.transpose(1, 2))
    else:
        raise ValueError(f"affinity must be 'heat' or 'knn', got {affinity!r}")
    weights.diagonal(dim1=1, dim2=2).zero_()
    inv_sqrt_degree = weights.sum(dim=2).clamp_min(_EPS).rsqrt()
    # The K smallest eigenvalues of I - D^-1/2 W D^-1/2 belong to the K largest of D^-1/2 W D^-1/2.
    normalised = inv_sqrt_degree[:, :, None] * weights * inv_sqrt_degree[:, None, :]
    _, vectors = torch.linalg.eigh(normalised)  # ascending eigenvalues
    embedding = vectors[:, :, -k:].flip(-1)
    return torch.nn.functional.normalize(embedding, dim=-1)


@torch.no_grad()
def spectral(
    x: Tensor,
    k: int,
    *,
    affinity: str = "heat",
    sigma: float | None = None,
    neighbors: int = 10,
    max_iters: int = 20,
    tol: float = 0.0,
) -> Tensor:
    """Spectral clustering of each set of tokens; keeps the real token at each medoid.

    k-medoids++ runs on the rows of the spectral embedding (:func:`spectral_embedding`); the
    returned indices point at the original tokens.

    Args:
        x: tokens ``[B, N, C]``.
        k: tokens to keep per set.
        affinity, sigma, neighbors: see :func:`spectral_embedding`.
        max_iters, tol: see :func:`kmedoids`.
    Returns:
        indices ``[B, k]`` (long), ascending.
    """
    _check_k(x, k)
    x = x.detach().float()
    with _one_cpu_thread(x):
        embedding = spectral_embedding(x, k, affinity=affinity, sigma=sigma, neighbors=neighbors)
        dist = pairwise_distances(embedding, "euclidean")
        # Spectral rows all have unit norm, so the largest-norm start would be arbitrary; start
        # from the token of largest original norm instead, as k-medoids++ on the tokens does.
        init = farthest_point_init(dist, x.norm(dim=-1), k)
        medoids, _ = kmedoids_from_distances(dist, init, max_iters=max_iters, tol=tol)
        return medoids.sort(dim=1).values


def _check_k(x: Tensor, k: int) -> None:
    if x.ndim != 3:
        raise ValueError(f"expected tokens [B, N, C], got shape {tuple(x.shape)}")
    if not 1 <= k <= x.shape[1]:
        raise ValueError(f"k must be in 1..{x.shape[1]} (tokens per set), got {k}")
