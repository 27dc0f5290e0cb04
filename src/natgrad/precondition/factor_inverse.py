"""Inverting damped Kronecker factors and applying them to a gradient matrix.

The preconditioned gradient of a layer with gradient matrix V (out x in[+1]) is
U = (G + gamma/pi I)^{-1} V (A + pi gamma I)^{-1}, the inverse of the damped
Kronecker block applied to vec(V) (Martens & Grosse 2015, s.4, s.6.3).

Two methods keep the same interface (``decompose`` when inverses are due, then
``precondition`` every step); all tensors live in a plain dict so an optimizer can
store them in its state and a distributed inverter can ship them:

- "cholesky": inverses of the damped factors by Cholesky; the damping is baked in at
  decomposition time.
- "eigen": eigendecompositions A = Q_A diag(d_A) Q_A^T, G = Q_G diag(d_G) Q_G^T; then
  U = Q_G [(Q_G^T V Q_A) / ((d_G + gamma/pi)(d_A + pi gamma)^T)] Q_A^T, so the damping
  can change every step without a new decomposition.

Decompositions run in float32; on failure they are retried in float64, then with a
diagonal floor raised tenfold each time (relative to the mean diagonal). The "eigen"
path inverts each damped eigenvalue d + delta as the pseudo-inverse does: 0 where it is
at most dim * eps_float32 * its largest value (no curvature that float32 can resolve;
with damping 0 and a rank-deficient factor, instead of dividing by 0), so that
U = G^+ V A^+ is the minimum-norm step there, as NaturalGradient's dense solver gives.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from natgrad.precondition.damping import add_to_diagonal, factored_pi, trace_norm_pi
from natgrad.precondition.output_blocks import (
    Bounds,
    block_bounds,
    blocks_entry,
    blockwise_eigen,
    blockwise_inverse,
    left_product,
    right_product,
)

INVERSE_METHODS = ("cholesky", "eigen")
_FLOOR_START = 1e-7
_FLOOR_TRIES = 4


def _robust(
    decompose: Callable[[Tensor], tuple[Tensor, ...]], matrix: Tensor
) -> tuple[Tensor, ...]:
    """Run ``decompose`` in float32, then float64, then float64 with a raised diagonal floor."""
    try:
        return decompose(matrix.float())
    except torch.linalg.LinAlgError:
        pass
    wide = matrix.double()
    scale = wide.diagonal().abs().mean().clamp_min(1e-30)
    floor = 0.0
    for attempt in range(_FLOOR_TRIES + 1):
        try:
            result = decompose(add_to_diagonal(wide, floor) if floor else wide)
            return tuple(t.to(torch.float32) for t in result)
        except torch.linalg.LinAlgError:
            floor = scale * _FLOOR_START * 10**attempt
    raise torch.linalg.LinAlgError(
        f"factor of size {tuple(matrix.shape)} could not be decomposed even with a diagonal floor"
    )


# LAPACK returns column-major matrices; every step multiplies by them, and CPU GEMM with
# a column-major left operand and a transposed right one is up to 10x slower (fmnist_cnn's
# 1025 x 1025 A^-1 times its 1025 x 10 V^T: 9.9 against 0.8 ms), so they are stored
# row-major, a copy once per refresh.
def _cholesky_inverse(matrix: Tensor) -> tuple[Tensor]:
    return (torch.cholesky_inverse(torch.linalg.cholesky(matrix)).contiguous(),)


def _symmetric_eigen(matrix: Tensor) -> tuple[Tensor, Tensor]:
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return eigenvalues.clamp_min(0.0), eigenvectors.contiguous()


def symmetric_inverse(matrix: Tensor) -> Tensor:
    """Inverse of a symmetric positive definite matrix via Cholesky, with the float64 retry."""
    return _robust(_cholesky_inverse, matrix)[0]


def symmetric_eigen(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """(eigenvalues clamped at 0, eigenvectors) of a symmetric matrix, with the float64 retry."""
    return _robust(_symmetric_eigen, matrix)


def cholesky_decompose(A: Tensor, G: Tensor, gamma: float, blocks: int = 1) -> dict[str, Tensor]:
    """Inverses of the damped factors: {"A_inv", "G_inv", "pi"} (G_inv block-diagonal with
    "G_blocks" when ``blocks`` > 1: natgrad.precondition.output_blocks)."""
    pi = factored_pi(A, G)
    bounds = block_bounds(G.shape[0], blocks)
    return {
        "A_inv": symmetric_inverse(add_to_diagonal(A, pi * gamma)),
        "G_inv": blockwise_inverse(add_to_diagonal(G, gamma / pi), bounds, symmetric_inverse),
        "pi": pi,
        **blocks_entry(bounds, G.device),
    }


def cholesky_precondition(
    decomposition: dict[str, Tensor], V: Tensor, gamma: float, bounds: Bounds | None = None
) -> Tensor:
    """G_inv V A_inv (the damping was fixed at decomposition time; ``gamma`` is unused;
    a block-diagonal G_inv is applied block by block over ``bounds``).

    Both inverses are symmetric, so G_inv V A_inv = (A_inv V^T G_inv)^T; the product is
    formed in that order because CPU GEMM takes a transposed right operand faster (the
    K-FAC autoencoder's layers: about 20% less time including the copy back to a
    contiguous (out x in) matrix, which keeps the later elementwise work fast).
    """
    product = right_product(
        decomposition["A_inv"] @ V.to(torch.float32).T, decomposition["G_inv"], bounds
    )
    return product.T.contiguous()


def eigen_decompose(A: Tensor, G: Tensor, gamma: float, blocks: int = 1) -> dict[str, Tensor]:
    """Eigendecompositions of the undamped factors: {A,G}_eigvals and {A,G}_eigvecs (G's
    block by block, with "G_blocks", when ``blocks`` > 1)."""
    A_eigvals, A_eigvecs = _robust(_symmetric_eigen, A)
    bounds = block_bounds(G.shape[0], blocks)
    G_eigvals, G_eigvecs = blockwise_eigen(G, bounds, symmetric_eigen)
    return {
        "A_eigvals": A_eigvals,
        "A_eigvecs": A_eigvecs,
        "G_eigvals": G_eigvals,
        "G_eigvecs": G_eigvecs,
        **blocks_entry(bounds, G.device),
    }


def damped_inverse(eigenvalues: Tensor, damping: Tensor | float) -> Tensor:
    """1 / (d + damping) per eigenvalue d, and 0 (the pseudo-inverse) where d + damping is at
    most dim * eps_float32 times the largest damped eigenvalue (so never 1 / 0)."""
    damped = eigenvalues + damping
    cutoff = damped.shape[0] * torch.finfo(torch.float32).eps * damped.max().clamp_min(0.0)
    keep = damped > cutoff
    return torch.where(keep, 1.0 / torch.where(keep, damped, 1.0), 0.0)


def eigen_precondition(
    decomposition: dict[str, Tensor], V: Tensor, gamma: float, bounds: Bounds | None = None
) -> Tensor:
    """Q_G [(Q_G^T V Q_A) / ((d_G + gamma/pi)(d_A + pi gamma)^T)] Q_A^T with the current gamma
    (a damped eigenvalue that float32 cannot tell from 0 is inverted as 0: ``damped_inverse``;
    a block-diagonal Q_G is applied block by block over ``bounds``)."""
    d_A, Q_A = decomposition["A_eigvals"], decomposition["A_eigvecs"]
    d_G, Q_G = decomposition["G_eigvals"], decomposition["G_eigvecs"]
    pi = trace_norm_pi(d_A.sum(), d_A.shape[0], d_G.sum(), d_G.shape[0])
    rotated = left_product(Q_G.T, V.to(torch.float32) @ Q_A, bounds)
    rotated.mul_(torch.outer(damped_inverse(d_G, gamma / pi), damped_inverse(d_A, pi * gamma)))
    return left_product(Q_G, rotated @ Q_A.T, bounds)


DECOMPOSERS = {"cholesky": cholesky_decompose, "eigen": eigen_decompose}
PRECONDITIONERS = {"cholesky": cholesky_precondition, "eigen": eigen_precondition}


def check_inverse_method(method: str) -> str:
    """``method`` if it is a known inverse method, else ValueError listing the valid ones."""
    if method not in INVERSE_METHODS:
        raise ValueError(f"inverse must be one of {', '.join(INVERSE_METHODS)}; got {method!r}")
    return method


def decompose(
    method: str, A: Tensor, G: Tensor, gamma: float, blocks: int = 1
) -> dict[str, Tensor]:
    """Decompose the factors of one layer with ``method`` ("cholesky" or "eigen"), G in
    ``blocks`` diagonal blocks."""
    return DECOMPOSERS[check_inverse_method(method)](A, G, gamma, blocks)


def precondition(
    method: str,
    decomposition: dict[str, Tensor],
    V: Tensor,
    gamma: float,
    bounds: Bounds | None = None,
) -> Tensor:
    """The damped Kronecker inverse of one layer applied to its gradient matrix ``V`` (G's
    side block by block over ``bounds`` when it was decomposed in blocks)."""
    return PRECONDITIONERS[method](decomposition, V, gamma, bounds)


__all__ = [
    "INVERSE_METHODS",
    "check_inverse_method",
    "decompose",
    "precondition",
    "symmetric_inverse",
    "symmetric_eigen",
    "damped_inverse",
    "cholesky_decompose",
    "cholesky_precondition",
    "eigen_decompose",
    "eigen_precondition",
]
