"""Doubly-factored activation statistics for very large layers (Ba, Grosse & Martens 2017).

When a layer's input is a channels x locations map (a Linear fed by a flattened
convolutional map, a convolution's C_in x (kh kw) patch), its activation factor A can
be too large to invert often (AlexNet's fc6: 9216 x 9216). Each input row a (without
the bias one) is read as the matrix a_mat (channels x locations) and replaced by its
best rank-one form k psi^T, with k = sqrt(s1) u1 and psi = sqrt(s1) v1 from the top
singular triple; then

    A ≈ E[k k^T] ⊗ E[psi psi^T] = K ⊗ Psi,

so the layer's curvature is three small factors K (channels), Psi (locations) and G
(outputs) (docs/REFERENCES.md s.5). The flattened input index is channel-major
(c * locations + l), as nn.Flatten and im2col order it. The bias (the last column of
the gradient matrix) is kept as its own block 1 ⊗ G: E[1 * 1] = 1, the cross terms
between weight and bias are dropped.

The top singular pair is exact: the eigenvector v1 of the smaller Gram matrix
a_mat^T a_mat (or a_mat a_mat^T), batched over all rows, then u1 = a_mat v1 / s1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class DoublyFactoredFactors:
    """K (channels^2), Psi (locations^2) and G (out^2) of one layer, float32."""

    K: Tensor
    Psi: Tensor
    G: Tensor

    def matrices(self) -> tuple[Tensor, ...]:
        return (self.K, self.Psi, self.G)


def rank_one_factors(matrices: Tensor) -> tuple[Tensor, Tensor]:
    """(k, psi) with k psi^T the best rank-one form of each (channels x locations) matrix.

    ``matrices`` is (rows, channels, locations); k is (rows, channels), psi is
    (rows, locations), both scaled by sqrt(s1). A zero matrix gives zero vectors.
    """
    wide = matrices.double()
    _, channels, locations = wide.shape
    if locations <= channels:
        v = _top_eigenvector(wide.transpose(1, 2) @ wide)  # (rows, locations)
        psi, k = _scaled_pair(v, torch.einsum("ncl,nl->nc", wide, v))  # a v = s1 u
    else:
        u = _top_eigenvector(wide @ wide.transpose(1, 2))  # (rows, channels)
        k, psi = _scaled_pair(u, torch.einsum("ncl,nc->nl", wide, u))  # a^T u = s1 v
    return k.float(), psi.float()


def _top_eigenvector(grams: Tensor) -> Tensor:
    """The unit eigenvector of the largest eigenvalue of each symmetric matrix."""
    _, vectors = torch.linalg.eigh(grams)
    return vectors[..., -1]


def _scaled_pair(unit: Tensor, scaled: Tensor) -> tuple[Tensor, Tensor]:
    """(sqrt(s1) x, sqrt(s1) y) from the unit singular vector x and s1 * y, row by row."""
    s1 = scaled.norm(dim=1, keepdim=True)
    root = s1.sqrt()
    return unit * root, scaled / torch.where(root > 0, root, torch.ones_like(root))


def doubly_factored_factors(
    activation_rows: Tensor, shape: tuple[int, int], has_bias: bool, G: Tensor
) -> DoublyFactoredFactors:
    """K and Psi from activation rows (rows, in[+1]) read as ``shape`` matrices, and G."""
    weight_rows = activation_rows[:, :-1] if has_bias else activation_rows
    channels, locations = shape
    k, psi = rank_one_factors(weight_rows.reshape(-1, channels, locations))
    count = weight_rows.shape[0]
    return DoublyFactoredFactors((k.T @ k).div_(count), (psi.T @ psi).div_(count), G)


def check_matrix_shape(name: str, in_features: int, shape: tuple[int, int]) -> tuple[int, int]:
    """``shape`` as (channels, locations) if it splits ``in_features``; else ValueError."""
    if (
        len(shape) != 2
        or any(not isinstance(s, int) or s < 1 for s in shape)
        or shape[0] * shape[1] != in_features
    ):
        raise ValueError(
            f"doubly_factored shape for layer {name} must be (channels, locations) with "
            f"channels * locations = {in_features} input features; got {shape!r}"
        )
    return int(shape[0]), int(shape[1])


__all__ = [
    "DoublyFactoredFactors",
    "rank_one_factors",
    "doubly_factored_factors",
    "check_matrix_shape",
]
