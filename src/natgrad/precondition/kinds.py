"""A curvature approximation is a kind: one interface and one registry keyed by kind name.

Every kind keeps, for one layer with gradient matrix V (out x in[+1], bias as the last
column), running statistics and a decomposition of them, and applies the inverse of a
damped curvature matrix C(gamma) to V. ``to_dense(gamma)`` writes that matrix out in
the row-major order of V (index o * in[+1] + i, ``V.reshape(-1)``), so that

    apply(V, gamma).reshape(-1) == solve(to_dense(gamma), V.reshape(-1)),

which is what the one test table over all kinds checks, together with a reference
written from each kind's paper. A new kind is a module with a class that satisfies
:class:`CurvatureKind`, registered at the bottom of this file (and its reference in
tests/precondition/test_kinds.py); ``KFAC(approximation=name)``, the option checks and
the test table pick it up from the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from torch import Tensor

from natgrad.registry import Registry


@runtime_checkable
class CurvatureKind(Protocol):
    """One layer's curvature approximation: statistics, decomposition, use and checkpoint.

    Class attributes: ``KIND`` (the registry name), ``FACTOR_KEYS`` (checkpoint keys of
    the running statistics; the decomposition is under "inverse.*"), ``STATISTICS``
    (the batch statistics it is fed: "kronecker" for A, G or "doubly_factored" for
    K, Psi, G) and ``NEEDS_EXAMPLES`` (whether it needs the per-example pieces of the
    statistics backward, :class:`natgrad.curvature.kronecker.ExamplePieces`).
    """

    KIND: str
    FACTOR_KEYS: tuple[str, ...]
    STATISTICS: str
    NEEDS_EXAMPLES: bool

    @classmethod
    def create(cls, options: Mapping[str, object]) -> CurvatureKind:
        """An empty instance configured from the optimizer's options (inverse, momentum, ...)."""

    @classmethod
    def owns_key(cls, key: str) -> bool:
        """Whether a checkpoint key belongs to this kind's state."""

    @property
    def has_factors(self) -> bool:
        """Whether statistics have arrived (a refresh is possible)."""

    @property
    def ready(self) -> bool:
        """Whether a decomposition is installed (before that, ``apply`` is the identity)."""

    def update_factors(self, factors, decay: float) -> None:
        """running <- decay * running + (1 - decay) * batch, from one batch's statistics."""

    def observe_gradient(self, V: Tensor) -> Tensor:
        """Called once per step with the layer's gradient matrix before ``apply``; returns
        the matrix to precondition (V itself for kinds without gradient moments)."""

    def compute_decomposition(self, gamma: float) -> dict[str, Tensor]:
        """The decomposition of the current statistics (pure: may run on another thread)."""

    def install(self, decomposition: dict[str, Tensor]) -> None:
        """Use ``decomposition`` from the next ``apply`` on."""

    def apply(self, V: Tensor, gamma: float) -> Tensor:
        """C(gamma)^{-1} applied to the gradient matrix ``V`` (float32, V's shape)."""

    def curvature_product(self, V: Tensor) -> Tensor:
        """The undamped Kronecker-factored curvature applied to a layer matrix ``V`` (the
        quadratic model's ``model_curvature="kronecker"`` products)."""

    def to_dense(self, gamma: float) -> Tensor:
        """C(gamma) in V's row-major order (float64), consistent with :meth:`apply`."""

    def refresh_cost(self) -> float:
        """Estimated flops of one refresh, up to a common constant (0 without statistics)."""

    def state_dict(self) -> dict[str, Tensor]:
        """Running statistics under ``FACTOR_KEYS`` and the decomposition under "inverse.*"."""

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_dict` wrote (an empty dict resets)."""


CURVATURE_KINDS: Registry[type] = Registry("curvature approximation")


def register_kind(kind: type) -> type:
    """Register a kind class under its ``KIND`` name (usable as a class decorator)."""
    return CURVATURE_KINDS.add(kind.KIND, kind)


def approximation_names() -> tuple[str, ...]:
    """The kinds a layer with Kronecker statistics can use (``KFAC(approximation=...)``)."""
    return tuple(name for name, kind in CURVATURE_KINDS.items() if kind.STATISTICS == "kronecker")


def check_approximation(name: object) -> str:
    """``name`` if it is a selectable approximation, else ValueError listing the valid ones."""
    valid = approximation_names()
    if name not in valid:
        raise ValueError(f"approximation must be one of {', '.join(valid)}; got {name!r}")
    return name  # type: ignore[return-value]


from natgrad.precondition.doubly_factored import DoublyFactoredPreconditioner  # noqa: E402
from natgrad.precondition.eigen_adam import EigenAdamPreconditioner  # noqa: E402
from natgrad.precondition.ekfac import EKFACPreconditioner  # noqa: E402
from natgrad.precondition.kronecker import KroneckerPreconditioner  # noqa: E402

for _kind in (
    KroneckerPreconditioner,
    DoublyFactoredPreconditioner,
    EKFACPreconditioner,
    EigenAdamPreconditioner,
):
    register_kind(_kind)

__all__ = [
    "CurvatureKind",
    "CURVATURE_KINDS",
    "register_kind",
    "approximation_names",
    "check_approximation",
]
