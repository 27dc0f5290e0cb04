"""Adam in the Kronecker eigenbasis: the K-FAC analogue of SOAP (Vyas et al. 2024).

SOAP runs Adam in the eigenbasis of Shampoo's preconditioner; here the basis is
K-FAC's: U_A and U_G, the eigenvectors of the running factors A and G, refreshed with
the inverses (every ``inv_every`` steps, on the rank and at the step the coordinator
decides). Per step, with V the layer's gradient matrix (plus eta theta):

    m <- beta1 m + (1 - beta1) V                   (first moment, kept in V's basis)
    v <- beta2 v + (1 - beta2) (U_G^T V U_A)^2     (second moment, in the eigenbasis)
    U = U_G [(U_G^T m^ U_A) / (sqrt(v^) + gamma)] U_A^T,

m^ = m / (1 - beta1^t), v^ = v / (1 - beta2^t') with t the gradients seen and t' those
seen in an eigenbasis. Keeping m in V's basis makes its projection exact after a
basis refresh (SOAP rotates its first moment the same way); v stays as measured, as
SOAP keeps its second moment across refreshes.

The damped curvature is C = (U_G ⊗ U_A) diag(sqrt(vec v^) + gamma) (U_G ⊗ U_A)^T:
the square root of the Fisher diagonal in the eigenbasis, damped like
(F + lambda)^(1/2) ~ F^(1/2) + gamma with gamma = sqrt(damping + weight decay), so
``damping`` plays the part of Adam's eps^2. ``apply`` is C^{-1} applied to the matrix
:meth:`observe_gradient` returned (m^), so the step is U above.

With K-FAC: ``momentum`` is beta1, ``stat_decay`` is beta2, and the step rule runs
with lr and no momentum of its own (the first moment is here).
"""

from __future__ import annotations

import torch
from torch import Tensor

from natgrad.precondition.base import eigenbasis_dense
from natgrad.precondition.kronecker import KroneckerPreconditioner


class EigenAdamPreconditioner(KroneckerPreconditioner):
    """Running A, G (for the eigenbasis) and Adam's moments of one layer's gradient."""

    KIND = "eigen_adam"
    BLOCKS_OUTPUTS = False  # its eigenbasis products stay whole
    FACTOR_KEYS = ("A", "G", "exp_avg", "exp_avg_sq", "moment_steps")
    KEEPS_FIRST_MOMENT = True

    def __init__(self, beta1: float = 0.9, beta2: float = 0.95) -> None:
        super().__init__("eigen")
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"eigen_adam needs betas in [0, 1), got {beta1!r} and {beta2!r}")
        self.beta1, self.beta2 = beta1, beta2
        self.exp_avg: Tensor | None = None
        self.exp_avg_sq: Tensor | None = None
        self.steps = 0  # gradients seen (first moment)
        self.basis_steps = 0  # gradients seen in an eigenbasis (second moment)

    @classmethod
    def create(cls, options) -> EigenAdamPreconditioner:
        """beta1 = ``momentum``, beta2 = ``stat_decay``; always eigendecompositions."""
        return cls(float(options.get("momentum", 0.9)), float(options.get("stat_decay", 0.95)))

    def observe_gradient(self, V: Tensor) -> Tensor:
        """Update m (and v, in the current eigenbasis) with V; return m^ = m / (1 - beta1^t)."""
        V = V.float()
        self.steps += 1
        if self.exp_avg is None:
            self.exp_avg = V * (1.0 - self.beta1)
        else:
            self.exp_avg.mul_(self.beta1).add_(V, alpha=1.0 - self.beta1)
        if self.decomposition is not None:
            rotated = self._rotate(V)
            self.basis_steps += 1
            if self.exp_avg_sq is None:
                self.exp_avg_sq = rotated.square().mul_(1.0 - self.beta2)
            else:
                self.exp_avg_sq.mul_(self.beta2).addcmul_(rotated, rotated, value=1.0 - self.beta2)
        return self.exp_avg / (1.0 - self.beta1**self.steps)

    def _rotate(self, V: Tensor) -> Tensor:
        return self.decomposition["G_eigvecs"].T @ V @ self.decomposition["A_eigvecs"]

    def _scale(self, gamma: float) -> Tensor:
        """sqrt(v^) + gamma in the eigenbasis (gamma alone before any second moment)."""
        d = self.decomposition
        shape = (d["G_eigvecs"].shape[0], d["A_eigvecs"].shape[0])
        if self.exp_avg_sq is None:
            return torch.full(shape, gamma, device=d["A_eigvecs"].device)
        corrected = self.exp_avg_sq / (1.0 - self.beta2**self.basis_steps)
        return corrected.sqrt().add_(gamma)

    def apply(self, V: Tensor, gamma: float) -> Tensor:
        """U_G [(U_G^T V U_A) / (sqrt(v^) + gamma)] U_A^T (float32; V before a basis)."""
        if self.decomposition is None:
            return V.float()
        rotated = self._rotate(V.float()).div_(self._scale(gamma))
        return self.decomposition["G_eigvecs"] @ rotated @ self.decomposition["A_eigvecs"].T

    def to_dense(self, gamma: float) -> Tensor:
        """(U_G ⊗ U_A) diag(sqrt(vec v^) + gamma) (U_G ⊗ U_A)^T (float64; identity before)."""
        if self.decomposition is None:
            return super().to_dense(gamma)
        d = self.decomposition
        return eigenbasis_dense(d["G_eigvecs"], d["A_eigvecs"], self._scale(gamma).double())

    def state_dict(self) -> dict[str, Tensor]:
        """A, G, the decomposition ("inverse.*"), m, v and their step counts."""
        state = super().state_dict()
        if self.exp_avg is not None:
            state["exp_avg"] = self.exp_avg
            state["moment_steps"] = torch.tensor(
                [self.steps, self.basis_steps], device=self.exp_avg.device
            )
        if self.exp_avg_sq is not None:
            state["exp_avg_sq"] = self.exp_avg_sq
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        super().load_state_dict(state)
        self.exp_avg, self.exp_avg_sq = state.get("exp_avg"), state.get("exp_avg_sq")
        steps = state.get("moment_steps")
        self.steps, self.basis_steps = (0, 0) if steps is None else map(int, steps.tolist())


__all__ = ["EigenAdamPreconditioner"]
