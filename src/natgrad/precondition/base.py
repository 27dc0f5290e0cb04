"""What every per-layer preconditioner shares: a decomposition of its running factors,
computed by a pure function (so it can run on another thread or rank) and installed
between steps, and its checkpoint keys ("inverse.*" for the decomposition)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from natgrad.precondition.factor_inverse import check_inverse_method
from natgrad.precondition.output_blocks import Bounds, bounds_of

DECOMPOSITION_PREFIX = "inverse."
_READY = DECOMPOSITION_PREFIX + "ready"


class LayerPreconditionerBase:
    """Subclasses name their kind (``KIND``) and their factors' checkpoint keys
    (``FACTOR_KEYS``) and implement ``has_factors``, ``update_factors``,
    ``compute_decomposition(gamma)``, ``apply(V, gamma)``, ``to_dense(gamma)`` and the
    checkpoint pair (:class:`natgrad.precondition.kinds.CurvatureKind`)."""

    KIND: str = ""
    FACTOR_KEYS: tuple[str, ...] = ()
    STATISTICS = "kronecker"
    NEEDS_EXAMPLES = False
    # whether the kind can keep its output factor G in diagonal blocks (output_blocks)
    BLOCKS_OUTPUTS = False

    def __init__(self, method: str = "cholesky") -> None:
        self.method = check_inverse_method(method)
        self.decomposition: dict[str, Tensor] | None = None
        # G in this many diagonal blocks at the next decomposition (natgrad.precondition.
        # output_blocks); the installed decomposition's own blocks are output_bounds
        self.output_blocks = 1
        self.output_bounds: Bounds | None = None

    @classmethod
    def create(cls, options: Mapping[str, object]) -> LayerPreconditionerBase:
        """An empty instance with the optimizer's inverse method."""
        return cls(str(options.get("inverse", "cholesky")))

    def observe_gradient(self, V: Tensor) -> Tensor:
        """The matrix to precondition this step: ``V`` itself (no gradient moments)."""
        return V

    def refresh_cost(self) -> float:
        """About d^3 flops per square running factor of size d, G's divided by its blocks
        squared (0 before any statistics)."""
        if not self.has_factors:
            return 0.0
        return sum(
            float(tensor.shape[0]) ** 3 / (self.blocks_to_compute() ** 2 if key == "G" else 1)
            for key, tensor in self.state_dict().items()
            if key in self.FACTOR_KEYS and tensor.dim() == 2 and tensor.shape[0] == tensor.shape[1]
        )

    @property
    def ready(self) -> bool:
        """Whether a decomposition is installed (before that, ``apply`` is the identity)."""
        return self.decomposition is not None

    def compute_decomposition(self, gamma: float) -> dict[str, Tensor]:
        raise NotImplementedError

    def blocks_to_compute(self) -> int:
        """The output blocks of the next decomposition (1 for kinds that do not block)."""
        return self.output_blocks if self.BLOCKS_OUTPUTS else 1

    def install(self, decomposition: dict[str, Tensor]) -> None:
        """Use ``decomposition`` from the next ``apply`` on."""
        self.decomposition = decomposition
        self.output_bounds = self._bounds_of(decomposition)

    def _bounds_of(self, decomposition: dict[str, Tensor]) -> Bounds | None:
        """The output blocks a decomposition was computed with (read once, at install)."""
        if not self.BLOCKS_OUTPUTS:
            return None
        inverse = decomposition.get("G_inv", decomposition.get("G_eigvecs"))
        return None if inverse is None else bounds_of(decomposition, inverse.shape[0])

    def refresh(self, gamma: float) -> None:
        """Compute and install the decomposition of the current factors."""
        self.install(self.compute_decomposition(gamma))

    def decomposition_state(self, device: torch.device | None) -> dict[str, Tensor]:
        """The decomposition under "inverse.*" plus a ready marker (empty when none)."""
        if self.decomposition is None:
            return {}
        state = {
            DECOMPOSITION_PREFIX + key: value if isinstance(value, Tensor) else torch.tensor(value)
            for key, value in self.decomposition.items()
        }
        state[_READY] = torch.ones((), device=device)
        return state

    def load_decomposition(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`decomposition_state` wrote (none without the ready marker)."""
        start = len(DECOMPOSITION_PREFIX)
        decomposition = {
            key[start:]: value
            for key, value in state.items()
            if key.startswith(DECOMPOSITION_PREFIX) and key != _READY
        }
        self.decomposition = decomposition if _READY in state else None
        self.output_bounds = None if self.decomposition is None else self._bounds_of(decomposition)

    @classmethod
    def owns_key(cls, key: str) -> bool:
        """Whether a checkpoint key belongs to this kind of preconditioner's state."""
        return key in cls.FACTOR_KEYS or key.startswith(DECOMPOSITION_PREFIX)


def eigen_matrix(eigenvalues: Tensor, eigenvectors: Tensor) -> Tensor:
    """Q diag(d) Q^T in float64."""
    Q = eigenvectors.double()
    return (Q * eigenvalues.double()) @ Q.T


def eigenbasis_dense(Q_G: Tensor, Q_A: Tensor, scale: Tensor) -> Tensor:
    """(Q_G ⊗ Q_A) diag(vec(scale)) (Q_G ⊗ Q_A)^T in float64, row-major vec of (out x in)."""
    Q = torch.kron(Q_G.double(), Q_A.double())
    return (Q * scale.double().reshape(-1)) @ Q.T


__all__ = ["LayerPreconditionerBase", "DECOMPOSITION_PREFIX", "eigen_matrix", "eigenbasis_dense"]
