"""EKFAC: the eigenvalue-corrected Kronecker factorization (George et al. 2018).

K-FAC's A ⊗ G = (U_G ⊗ U_A) diag(d_G d_A^T) (U_G ⊗ U_A)^T keeps the Kronecker
eigenbasis and the Kronecker-structured eigenvalues. EKFAC keeps the eigenbasis
(U_A, U_G: eigenvectors of the running factors, refreshed with the inverses) and
replaces the eigenvalues by the diagonal of the Fisher in that basis, estimated from
per-example gradients G_n (out x in[+1]; with positions, example n's gradient sums over
them: G_n = sum_r g_nr a_nr^T):

    S_ij = E_n[ (U_G^T G_n U_A)_ij^2 ],

an exponential moving average updated at every statistics step (a projection, cheaper
than a new eigendecomposition). The damped curvature and the preconditioned gradient:

    C = (U_G ⊗ U_A) diag(vec(S) + lambda) (U_G ⊗ U_A)^T,
    C^{-1} vec(V) = vec(U_G [(U_G^T V U_A) / (S + lambda)] U_A^T),

with lambda = gamma^2 = damping + weight decay. With fisher="exact" the per-example
second moment sums over the backpropagated columns; with "mc" it uses the sampled
targets.

S lives in the basis it was measured in, so installing a new basis resets it to
d_G d_A^T (K-FAC's eigenvalues in that basis: EKFAC equals K-FAC until the next
statistics step), and the moving average goes on from there with the statistics'
decay. (Restarting the average's warm-up at each refresh instead, so that S holds
only per-example estimates, reached a worse validation error on digits_mlp at every
damping tried and the same on fmnist_mlp: docs/RESULTS.md, "Curvature approximations".)
"""

from __future__ import annotations

import torch
from torch import Tensor

from natgrad.curvature.kronecker import ExamplePieces, KroneckerFactors
from natgrad.precondition.base import eigenbasis_dense
from natgrad.precondition.kronecker import KroneckerPreconditioner

_CHUNK_ENTRIES = 1 << 22  # per-example gradient entries formed at once


def projected_second_moment(pieces: ExamplePieces, Q_A: Tensor, Q_G: Tensor) -> Tensor:
    """sum_{n,k} (Q_G^T G_nk Q_A)^2 / N with G_nk = sum_r g[k][n, r] a[n, r]^T (out x in)."""
    a = pieces.a @ Q_A  # (N, R, in), in the eigenbasis of A
    total = a.new_zeros(Q_G.shape[0], Q_A.shape[0])
    for g in pieces.g:
        projected = g @ Q_G  # (N, R, out)
        if a.shape[1] == 1:  # one position: the square of an outer product is an outer product
            total += (projected[:, 0] ** 2).T @ (a[:, 0] ** 2)
            continue
        chunk = max(1, _CHUNK_ENTRIES // (total.numel() or 1))
        for start in range(0, a.shape[0], chunk):
            rows = slice(start, start + chunk)
            per_example = projected[rows].transpose(1, 2) @ a[rows]  # (chunk, out, in)
            total += (per_example**2).sum(dim=0)
    return total.div_(pieces.examples)


class EKFACPreconditioner(KroneckerPreconditioner):
    """Running A, G (for the eigenbasis) and the eigenbasis scale S of one layer."""

    KIND = "ekfac"
    BLOCKS_OUTPUTS = False  # its eigenbasis products stay whole
    FACTOR_KEYS = ("A", "G", "scale")
    NEEDS_EXAMPLES = True

    def __init__(self) -> None:
        super().__init__("eigen")
        self.scale: Tensor | None = None

    @classmethod
    def create(cls, options) -> EKFACPreconditioner:
        """Always eigendecompositions (the ``inverse`` option does not apply)."""
        return cls()

    def update_factors(self, factors: KroneckerFactors, decay: float) -> None:
        """EMA of A and G; with a basis installed, EMA of S from the per-example pieces."""
        self.update(factors.A, factors.G, decay)
        if self.decomposition is None or factors.examples is None:
            return
        d = self.decomposition
        batch = projected_second_moment(factors.examples, d["A_eigvecs"], d["G_eigvecs"])
        if self.scale is None or decay == 0.0:
            self.scale = batch
        else:
            self.scale.lerp_(batch, 1.0 - decay)

    def install(self, decomposition: dict[str, Tensor]) -> None:
        """Use the new eigenbasis; S starts again from K-FAC's eigenvalues d_G d_A^T."""
        super().install(decomposition)
        self.scale = torch.outer(decomposition["G_eigvals"], decomposition["A_eigvals"])

    def apply(self, V: Tensor, gamma: float) -> Tensor:
        """U_G [(U_G^T V U_A) / (S + gamma^2)] U_A^T (float32; V before a basis)."""
        if self.decomposition is None:
            return V.float()
        Q_A, Q_G = self.decomposition["A_eigvecs"], self.decomposition["G_eigvecs"]
        rotated = Q_G.T @ V.to(torch.float32) @ Q_A
        rotated.div_(self.scale + gamma**2)
        return Q_G @ rotated @ Q_A.T

    def to_dense(self, gamma: float) -> Tensor:
        """(U_G ⊗ U_A) diag(vec(S) + gamma^2) (U_G ⊗ U_A)^T (float64; identity before a basis)."""
        if self.decomposition is None:
            return super().to_dense(gamma)
        Q_A, Q_G = self.decomposition["A_eigvecs"], self.decomposition["G_eigvecs"]
        return eigenbasis_dense(Q_G, Q_A, self.scale.double() + gamma**2)

    def state_dict(self) -> dict[str, Tensor]:
        """A, G, the decomposition ("inverse.*") and S ("scale")."""
        state = super().state_dict()
        if self.scale is not None:
            state["scale"] = self.scale
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        super().load_state_dict(state)
        self.scale = state.get("scale")


__all__ = ["EKFACPreconditioner", "projected_second_moment"]
