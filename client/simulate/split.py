"""Splitting one labelled data set among simulated clients.

IID: a shuffled even split. Dirichlet: for every label, the clients' shares
are drawn from Dir(alpha) (Hsu et al. 2019, as FedKSeed does); small alpha
gives each client a skewed label mix.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Sequence


def iid_split(n_items: int, n_clients: int, seed: int = 0) -> list[list[int]]:
    if n_clients < 1:
        raise ValueError("need at least one client")
    order = list(range(n_items))
    random.Random(seed).shuffle(order)
    return [sorted(order[c::n_clients]) for c in range(n_clients)]


def dirichlet_split(
    labels: Sequence[Hashable], n_clients: int, alpha: float, seed: int = 0, min_per_client: int = 1
) -> list[list[int]]:
    """Indices per client. Redraws (a bounded number of times) until every
    client holds at least ``min_per_client`` items, so no client is idle."""
    if n_clients < 1:
        raise ValueError("need at least one client")
    if alpha <= 0:
        raise ValueError("alpha must be positive")
    if len(labels) < n_clients * min_per_client:
        raise ValueError(f"{len(labels)} items cannot give {n_clients} clients {min_per_client} each")
    rng = random.Random(seed)
    by_label: dict[Hashable, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        by_label[y].append(i)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for y in sorted(by_label, key=str):
            idx = by_label[y][:]
            rng.shuffle(idx)
            weights = [rng.gammavariate(alpha, 1.0) for _ in range(n_clients)]
            total = sum(weights) or 1.0
            cuts, acc = [], 0.0
            for w in weights[:-1]:
                acc += w / total
                cuts.append(round(acc * len(idx)))
            bounds = [0, *cuts, len(idx)]
            for c in range(n_clients):
                parts[c].extend(idx[bounds[c] : bounds[c + 1]])
        if min(len(p) for p in parts) >= min_per_client:
            return [sorted(p) for p in parts]
    raise ValueError(f"could not split with alpha={alpha} so that every client gets {min_per_client} items; raise alpha")
