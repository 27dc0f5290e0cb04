"""The per-layer Kronecker preconditioner: running factors, their decomposition, and its use.

One object per tracked layer owns the moving averages of A and G, the damped
decomposition computed from them, and applies it to the layer's gradient matrix:
U = (G + gamma/pi I)^{-1} V (A + pi gamma I)^{-1} (Martens & Grosse 2015, s.4, s.6.3).
Refreshing is split into :meth:`compute_decomposition` (a pure function of the
factors, which can run anywhere: another thread, another rank) and :meth:`install`
(swapping the result in between steps), so a scheduler can decide who refreshes what
and when without touching the maths. Nothing here knows about modules.
"""

from __future__ import annotations

import torch
from torch import Tensor

from natgrad.curvature.kronecker import KroneckerFactors
from natgrad.precondition.base import DECOMPOSITION_PREFIX, LayerPreconditionerBase, eigen_matrix
from natgrad.precondition.damping import trace_norm_pi
from natgrad.precondition.factor_inverse import decompose, precondition


class KroneckerPreconditioner(LayerPreconditionerBase):
    """Running A ⊗ G of one layer and its damped inverse ("cholesky") or eigenbasis ("eigen")."""

    KIND = "kronecker"
    FACTOR_KEYS = ("A", "G")
    BLOCKS_OUTPUTS = True

    def __init__(self, method: str = "cholesky") -> None:
        super().__init__(method)
        self.A: Tensor | None = None
        self.G: Tensor | None = None

    @property
    def has_factors(self) -> bool:
        return self.A is not None

    def update_factors(self, factors: KroneckerFactors, decay: float) -> None:
        """:meth:`update` with the factors of one batch."""
        self.update(factors.A, factors.G, decay)

    def update(self, A: Tensor, G: Tensor, decay: float) -> None:
        """running <- decay * running + (1 - decay) * batch (the batch itself the first time)."""
        if self.A is None or decay == 0.0:
            self.A, self.G = A.clone(), G.clone()
            return
        self.A.lerp_(A, 1.0 - decay)
        self.G.lerp_(G, 1.0 - decay)

    def compute_decomposition(self, gamma: float) -> dict[str, Tensor]:
        """The decomposition of the current factors for damping strength ``gamma`` (pure)."""
        if self.A is None or self.G is None:
            raise RuntimeError("no factors yet: call update() before refreshing")
        return decompose(self.method, self.A, self.G, gamma, self.blocks_to_compute())

    def apply(self, V: Tensor, gamma: float) -> Tensor:
        """The damped Kronecker inverse applied to the gradient matrix ``V`` (float32)."""
        if self.decomposition is None:
            return V.float()
        return precondition(self.method, self.decomposition, V, gamma, self.output_bounds)

    def curvature_product(self, V: Tensor) -> Tensor:
        """(G ⊗ A) vec V = G V A with the running, undamped factors (float32)."""
        return self.G @ V.float() @ self.A

    def to_dense(self, gamma: float) -> Tensor:
        """(G + gamma/pi I) ⊗ (A + pi gamma I) as installed (float64; identity before that).

        "cholesky" baked gamma in at decomposition time, so its damped factors are the
        inverses of the installed inverses; "eigen" damps with the current ``gamma``.
        """
        d = self.decomposition
        if d is None:
            if self.A is None:
                raise RuntimeError("no factors yet: the layer's size is unknown")
            size = self.A.shape[0] * self.G.shape[0]
            return torch.eye(size, dtype=torch.float64, device=self.A.device)
        if self.method == "cholesky":
            damped_G = torch.linalg.inv(d["G_inv"].double())
            damped_A = torch.linalg.inv(d["A_inv"].double())
        else:
            d_A, d_G = d["A_eigvals"].double(), d["G_eigvals"].double()
            pi = trace_norm_pi(d_A.sum(), d_A.shape[0], d_G.sum(), d_G.shape[0])
            damped_G = eigen_matrix(d_G + gamma / pi, d["G_eigvecs"])
            damped_A = eigen_matrix(d_A + pi * gamma, d["A_eigvecs"])
        return torch.kron(damped_G, damped_A)

    def refresh_cost(self) -> float:
        """About d_A^3 + d_G^3 / blocks^2 (two decompositions, G's block by block; the eigen
        kinds built on this one too); 0 before any statistics."""
        if self.A is None:
            return 0.0
        return float(self.A.shape[0]) ** 3 + float(self.G.shape[0]) ** 3 / (
            self.blocks_to_compute() ** 2
        )

    def state_dict(self) -> dict[str, Tensor]:
        """Factors and decomposition under the checkpoint keys "A", "G" and "inverse.*"."""
        state: dict[str, Tensor] = {}
        if self.A is not None:
            state["A"], state["G"] = self.A, self.G
            state.update(self.decomposition_state(self.A.device))
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_dict` wrote (an empty dict resets)."""
        self.A, self.G = state.get("A"), state.get("G")
        self.load_decomposition(state)


__all__ = ["KroneckerPreconditioner", "DECOMPOSITION_PREFIX"]
