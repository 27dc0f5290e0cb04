"""Which kind a layer's preconditioner is: its statistics and the chosen approximation.

A layer whose statistics are Kronecker factors (A, G) gets the chosen approximation
("kronecker", "ekfac", ...); one whose statistics come doubly factored (K, Psi, G) gets
the "doubly_factored" kind whatever the approximation. On load, a checkpoint entry
with "K" is doubly factored, any other the chosen approximation; an entry holding keys
that kind does not own was written by another approximation and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping

from natgrad.curvature.doubly_factored import DoublyFactoredFactors
from natgrad.precondition.kinds import CURVATURE_KINDS, CurvatureKind, check_approximation

LayerPreconditioner = CurvatureKind


def kind_for(factors, approximation: str) -> type:
    """The kind class that keeps ``factors`` (one batch's statistics of a layer)."""
    if isinstance(factors, DoublyFactoredFactors):
        return CURVATURE_KINDS.lookup("doubly_factored")
    return CURVATURE_KINDS.lookup(check_approximation(approximation))


def create_kind(kind: type, options: Mapping[str, object], has_bias: bool) -> CurvatureKind:
    """An empty preconditioner of ``kind`` configured from ``options``."""
    if kind.STATISTICS == "doubly_factored":
        return kind.create(options, has_bias)
    return kind.create(options)


def preconditioner_for(
    factors, options: Mapping[str, object], has_bias: bool = True
) -> CurvatureKind:
    """A new, empty preconditioner of the kind that keeps ``factors``."""
    approximation = str(options.get("approximation", "kronecker"))
    return create_kind(kind_for(factors, approximation), options, has_bias)


def preconditioner_for_state(
    state: dict, options: Mapping[str, object], layer: str = "", has_bias: bool = True
) -> CurvatureKind:
    """An empty preconditioner of the kind that wrote checkpoint entry ``state``."""
    if "K" in state:
        kind = CURVATURE_KINDS.lookup("doubly_factored")
    else:
        kind = CURVATURE_KINDS.lookup(str(options.get("approximation", "kronecker")))
    foreign = sorted(key for key in state if not kind.owns_key(key))
    if foreign:
        raise ValueError(
            f"K-FAC checkpoint does not fit this optimizer: layer {layer} has state "
            f"{', '.join(foreign)}, which approximation {kind.KIND!r} does not keep (the "
            "checkpoint was written with another approximation)"
        )
    return create_kind(kind, options, has_bias)


def owns_curvature_key(key: str) -> bool:
    """Whether a checkpoint key belongs to some kind's state."""
    return any(kind.owns_key(key) for kind in CURVATURE_KINDS.values())


__all__ = [
    "LayerPreconditioner",
    "kind_for",
    "create_kind",
    "preconditioner_for",
    "preconditioner_for_state",
    "owns_curvature_key",
]
