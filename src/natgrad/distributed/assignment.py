"""Which rank refreshes which layer's preconditioner: longest processing time first.

Inverting (Cholesky or eigendecomposition) a d x d factor costs about d^3 flops, so a
layer with factors of sizes d_A and d_G costs d_A^3 + d_G^3. Layers are taken from the
most to the least expensive and each goes to the rank with the least work so far
(Graham's LPT rule: within 4/3 of the best makespan). Ties go to the lowest rank and
to the earlier layer, so every rank computes the same assignment without talking.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def inversion_cost(size_A: int, size_G: int) -> float:
    """Estimated cost of refreshing one layer: d_A^3 + d_G^3."""
    return float(size_A) ** 3 + float(size_G) ** 3


def assign_longest_first(costs: Sequence[float], world_size: int) -> list[int]:
    """The owner rank of each job: LPT over ``world_size`` ranks (deterministic)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    owners = [0] * len(costs)
    loads = [(0.0, rank) for rank in range(world_size)]
    heapq.heapify(loads)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, rank = heapq.heappop(loads)
        owners[index] = rank
        heapq.heappush(loads, (load + costs[index], rank))
    return owners


def rank_loads(costs: Sequence[float], owners: Sequence[int], world_size: int) -> list[float]:
    """Total cost per rank under ``owners``."""
    loads = [0.0] * world_size
    for cost, owner in zip(costs, owners, strict=True):
        loads[owner] += cost
    return loads


__all__ = ["inversion_cost", "assign_longest_first", "rank_loads"]
