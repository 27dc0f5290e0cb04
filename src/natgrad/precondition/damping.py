"""Factored Tikhonov damping of a Kronecker product (Martens & Grosse 2015, s.6.3).

(A ⊗ G + gamma^2 I) is approximated by (A + pi gamma I) ⊗ (G + gamma / pi I) with
gamma = sqrt(lambda + eta) (damping plus weight decay) and
pi = sqrt((tr(A) / dim(A)) / (tr(G) / dim(G))), the trace-norm choice of pi that
minimizes the norm of the cross terms' error bound (docs/REFERENCES.md s.3).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_TINY_TRACE = 1e-12


def damping_gamma(damping: float, weight_decay: float = 0.0) -> float:
    """gamma = sqrt(lambda + eta): the factored damping strength."""
    total = damping + weight_decay
    if total < 0:
        raise ValueError(f"damping + weight_decay must be >= 0, got {total}")
    return math.sqrt(total)


def trace_norm_pi(trace_A: Tensor, dim_A: int, trace_G: Tensor, dim_G: int) -> Tensor:
    """pi = sqrt((tr(A)/dim(A)) / (tr(G)/dim(G))) as a 0-d tensor (no host sync).

    Traces are floored at 1e-12 so that an all-zero factor (a layer that received no
    gradient) gives a finite pi instead of NaN or infinity.
    """
    mean_A = trace_A.clamp_min(_TINY_TRACE) / dim_A
    mean_G = trace_G.clamp_min(_TINY_TRACE) / dim_G
    return torch.sqrt(mean_A / mean_G)


def factored_pi(A: Tensor, G: Tensor) -> Tensor:
    """Trace-norm pi of the factors ``A`` and ``G``."""
    return trace_norm_pi(torch.trace(A), A.shape[0], torch.trace(G), G.shape[0])


def add_to_diagonal(matrix: Tensor, value: Tensor | float) -> Tensor:
    """matrix + value * I (a new tensor)."""
    damped = matrix.clone()
    damped.diagonal().add_(value)
    return damped


def damped_factors(A: Tensor, G: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """(A + pi gamma I, G + gamma / pi I) with the trace-norm pi."""
    pi = factored_pi(A, G)
    return add_to_diagonal(A, pi * gamma), add_to_diagonal(G, gamma / pi)


__all__ = ["damping_gamma", "trace_norm_pi", "factored_pi", "add_to_diagonal", "damped_factors"]
