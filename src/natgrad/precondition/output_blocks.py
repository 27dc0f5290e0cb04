"""A block-diagonal output factor: G split into contiguous blocks of outputs.

For a layer with many outputs o, applying the output factor's inverse costs 2 o^2 d
flops per step (d inputs), which for fmnist_cnn's first fully connected layer (1024
outputs) is more than the layer's forward and backward. Keeping only the diagonal
blocks of G, blockdiag(G_1, ..., G_k) with contiguous blocks of about o / k outputs,
cuts that to 2 o^2 d / k and the decomposition to o^3 / k^2: the correlations between
outputs of different blocks are dropped, as Shampoo's blocking drops them between
blocks of a parameter. The damping is the unblocked factor's (traces are unchanged).

The decomposition stores the block count under "G_blocks" (absent for one block), so
a checkpoint or another rank applies it the way it was computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Bounds = tuple[tuple[int, int], ...]
BLOCKS_KEY = "G_blocks"
SMALLEST_AUTO_BLOCK = 128  # "auto" never makes blocks of fewer outputs


def block_bounds(size: int, blocks: int) -> Bounds:
    """``blocks`` contiguous (start, end) ranges covering range(size), sizes differing by
    at most one (the first ones larger)."""
    blocks = max(1, min(int(blocks), size))
    base, extra = divmod(size, blocks)
    bounds, start = [], 0
    for index in range(blocks):
        end = start + base + (1 if index < extra else 0)
        bounds.append((start, end))
        start = end
    return tuple(bounds)


def bounds_of(decomposition: dict[str, Tensor], size: int) -> Bounds | None:
    """The block bounds a decomposition was computed with (None for one block).

    Reads "G_blocks" once (a host sync on an accelerator): call it when installing.
    """
    blocks = decomposition.get(BLOCKS_KEY)
    if blocks is None or round(float(blocks)) <= 1:
        return None
    return block_bounds(size, round(float(blocks)))


def blocks_entry(bounds: Bounds, device: torch.device) -> dict[str, Tensor]:
    """{"G_blocks": k} for more than one block, else nothing. A float32 scalar, like the
    decomposition's other tensors, so that it travels in the same packed broadcast
    between ranks (one per dtype)."""
    if len(bounds) <= 1:
        return {}
    return {BLOCKS_KEY: torch.tensor(float(len(bounds)), device=device)}


def blockwise_inverse(matrix: Tensor, bounds: Bounds, invert: Callable[[Tensor], Tensor]) -> Tensor:
    """blockdiag(invert(M_11), ..., invert(M_kk)) for the diagonal blocks of ``matrix``."""
    if len(bounds) <= 1:
        return invert(matrix)
    return torch.block_diag(*(invert(matrix[s:e, s:e]) for s, e in bounds))


def blockwise_eigen(
    matrix: Tensor, bounds: Bounds, eigen: Callable[[Tensor], tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """Eigenvalues (concatenated) and block-diagonal eigenvectors of the diagonal blocks."""
    if len(bounds) <= 1:
        return eigen(matrix)
    pairs = [eigen(matrix[s:e, s:e]) for s, e in bounds]
    return torch.cat([values for values, _ in pairs]), torch.block_diag(*(v for _, v in pairs))


def left_product(M: Tensor, X: Tensor, bounds: Sequence[tuple[int, int]] | None) -> Tensor:
    """M @ X for block-diagonal M (rows of X in blocks); the plain product without bounds."""
    if not bounds:
        return M @ X
    return torch.cat([M[s:e, s:e] @ X[s:e] for s, e in bounds])


def right_product(X: Tensor, M: Tensor, bounds: Sequence[tuple[int, int]] | None) -> Tensor:
    """X @ M for block-diagonal M (columns of X in blocks); the plain product without bounds."""
    if not bounds:
        return X @ M
    return torch.cat([X[:, s:e] @ M[s:e, s:e] for s, e in bounds], dim=1)


def blocks_for_cost(out_features: int, input_side: int, rows: int) -> int:
    """How many output blocks make a layer's preconditioning cost at most its forward and
    backward (``output_blocks="auto"``): 2 o d (b + input_side) <= 6 n o d, i.e. blocks
    of b <= 3 n - input_side outputs, where input_side is the input factor's size (d, or
    C + L when doubly factored) and n the rows per step. One block when the full factor
    already fits; at most o / SMALLEST_AUTO_BLOCK blocks (a small batch cannot make G
    nearly diagonal)."""
    budget = 3 * rows - input_side
    if out_features <= budget:
        return 1
    most = max(1, out_features // SMALLEST_AUTO_BLOCK)
    if budget <= 0:
        return most
    return min(most, -(-out_features // budget))


__all__ = [
    "BLOCKS_KEY",
    "block_bounds",
    "bounds_of",
    "blocks_entry",
    "blockwise_inverse",
    "blockwise_eigen",
    "left_product",
    "right_product",
    "blocks_for_cost",
]
