"""Which preconditioner a layer gets: one per kind of batch factors (a small registry).

A layer's statistics decide it: Kronecker factors (A, G) go to
:class:`KroneckerPreconditioner`, doubly-factored ones (K, Psi, G) to
:class:`DoublyFactoredPreconditioner`; a checkpoint's keys decide it on load.
"""

from __future__ import annotations

from natgrad.precondition.doubly_factored import DoublyFactoredPreconditioner
from natgrad.precondition.kronecker import KroneckerPreconditioner

PRECONDITIONER_TYPES = (KroneckerPreconditioner, DoublyFactoredPreconditioner)
LayerPreconditioner = KroneckerPreconditioner | DoublyFactoredPreconditioner


def preconditioner_for(factors, method: str) -> LayerPreconditioner:
    """A new, empty preconditioner that keeps ``factors``' kind."""
    for kind in PRECONDITIONER_TYPES:
        if kind.accepts(factors):
            return kind(method)
    raise TypeError(f"no preconditioner keeps factors of type {type(factors).__name__}")


def preconditioner_for_state(state: dict, method: str) -> LayerPreconditioner:
    """An empty preconditioner of the kind that wrote checkpoint entry ``state``."""
    if "K" in state:
        return DoublyFactoredPreconditioner(method)
    return KroneckerPreconditioner(method)


def owns_curvature_key(key: str) -> bool:
    """Whether a checkpoint key belongs to some preconditioner's state."""
    return any(kind.owns_key(key) for kind in PRECONDITIONER_TYPES)


__all__ = [
    "PRECONDITIONER_TYPES",
    "LayerPreconditioner",
    "preconditioner_for",
    "preconditioner_for_state",
    "owns_curvature_key",
]
