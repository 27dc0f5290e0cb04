"""Matrix-free curvature-vector products: Fisher/GGN (forward then reverse mode) and Hessian.

The products use no (P, P) matrix, so they work on large models. They follow the
parameter ordering and loss convention of ``natgrad.curvature.dense`` (mean of the
per-example NLL) and equal the dense matrices there times the vector:
- GGN/Fisher: u = J v by ``torch.func.jvp``, then J^T (M u) by ``torch.func.vjp``,
  with M the output-space curvature (docs/REFERENCES.md s.2);
- Hessian: forward-over-reverse, ``jvp`` of ``grad`` (Pearlmutter's R-operator).
Vectors are lists of tensors shaped like the trainable parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp

from natgrad.curvature.dense import (
    ModelInputs,
    flatten_tensors,
    parameter_dict,
    unflatten_like,
)
from natgrad.curvature.likelihoods import Likelihood, get_likelihood
from natgrad.curvature.output_space import (
    OutputCurvature,
    fisher_output_curvature,
    match_targets,
)

ParameterVector = list[Tensor] | tuple[Tensor, ...]
"""A vector in parameter space: one tensor per trainable parameter, shaped like it."""


def _outputs_function(model: nn.Module, inputs: ModelInputs) -> Callable[[dict], Tensor]:
    args = inputs if isinstance(inputs, tuple) else (inputs,)

    def outputs_of(params: dict[str, Tensor]) -> Tensor:
        return functional_call(model, params, args).flatten(1)

    return outputs_of


def _as_param_dict(vector: ParameterVector, params: dict) -> dict:
    if len(vector) != len(params):
        raise ValueError(f"vector has {len(vector)} tensors; the model has {len(params)}")
    for (name, p), v in zip(params.items(), vector, strict=True):
        if v.shape != p.shape:
            raise ValueError(f"vector entry for {name} has shape {tuple(v.shape)}; need {p.shape}")
    return dict(zip(params, vector, strict=True))


def _linearization_point(
    model: nn.Module, inputs: ModelInputs, vector: ParameterVector
) -> tuple[dict[str, Tensor], dict[str, Tensor], Callable[[dict], Tensor]]:
    """theta (by name), ``vector`` as tangents named like it, and theta -> f(X; theta)."""
    params = parameter_dict(model)
    return params, _as_param_dict(vector, params), _outputs_function(model, inputs)


def _second_derivative_product(
    scalar_of: Callable[[dict], Tensor], params: dict[str, Tensor], tangents: dict[str, Tensor]
) -> list[Tensor]:
    """(d^2 s / d theta^2) v by forward-over-reverse: jvp of grad (Pearlmutter's R-operator)."""
    _, product = jvp(torch.func.grad(scalar_of), (params,), (tangents,))
    return list(product.values())


def jacobian_sandwich_product(
    model: nn.Module,
    inputs: ModelInputs,
    output_curvature: OutputCurvature,
    vector: ParameterVector,
) -> list[Tensor]:
    """J^T M J v for an output-space curvature M: jvp for J v, vjp for J^T (M J v)."""
    params, tangents, outputs_of = _linearization_point(model, inputs, vector)
    _, jv = jvp(outputs_of, (params,), (tangents,))
    _, pullback = vjp(outputs_of, params)
    (result,) = pullback(output_curvature.product(jv))
    return list(result.values())


def ggn_vector_product(
    model: nn.Module,
    inputs: ModelInputs,
    likelihood: str | Likelihood,
    vector: ParameterVector,
) -> list[Tensor]:
    """G v with G = (1/N) sum_n J_n^T H_n J_n, the GGN (= exact Fisher) of the mean loss."""
    return fisher_vector_product(model, inputs, likelihood, vector, kind="exact")


def fisher_vector_product(
    model: nn.Module,
    inputs: ModelInputs,
    likelihood: str | Likelihood,
    vector: ParameterVector,
    kind: str = "exact",
    targets: Tensor | None = None,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """F v for the exact, Monte Carlo ("mc") or empirical Fisher of the mean loss.

    For "mc" the targets are drawn on each call; to reuse one draw across several
    products (as CG needs) build a ``CurvatureOperator`` instead.
    """
    fisher = CurvatureOperator.fisher(model, inputs, likelihood, kind, targets, samples, generator)
    return jacobian_sandwich_product(model, inputs, fisher.output_curvature, vector)


def output_weighted_hessian_product(
    model: nn.Module,
    inputs: ModelInputs,
    weights: Tensor,
    vector: ParameterVector,
) -> list[Tensor]:
    """(d^2/d theta^2 sum_{n,c} w_nc f_nc(theta)) v: the term of the Hessian the GGN drops."""
    params, tangents, outputs_of = _linearization_point(model, inputs, vector)
    weights = weights.detach().reshape(weights.shape[0], -1)

    def weighted_sum(p: dict[str, Tensor]) -> Tensor:
        return (outputs_of(p) * weights).sum()

    return _second_derivative_product(weighted_sum, params, tangents)


def hessian_vector_product(
    model: nn.Module,
    inputs: ModelInputs,
    targets: Tensor,
    likelihood: str | Likelihood,
    vector: ParameterVector,
) -> list[Tensor]:
    """H v with H the Hessian of L = (1/N) sum_n nll(f(x_n), y_n), forward-over-reverse."""
    likelihood = get_likelihood(likelihood)
    params, tangents, outputs_of = _linearization_point(model, inputs, vector)

    def loss_of(p: dict[str, Tensor]) -> Tensor:
        outputs = outputs_of(p)
        return likelihood.loss(outputs, match_targets(likelihood, targets, outputs))

    return _second_derivative_product(loss_of, params, tangents)


class CurvatureOperator:
    """A (P, P) curvature matrix as a linear operator on flat vectors: C v = J^T M J v [+ R v].

    ``output_curvature`` is M; ``residual_weights`` w (N, C), when given, adds the
    second-order term R = d^2/d theta^2 sum w_nc f_nc, which turns the GGN of a loss
    with dL/df = w into its Hessian. ``damping`` adds lambda I. The output-space
    quantities are fixed at construction, so repeated products (e.g. in CG) use one draw
    of any Monte Carlo targets.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: ModelInputs,
        output_curvature: OutputCurvature,
        residual_weights: Tensor | None = None,
        damping: float = 0.0,
    ) -> None:
        self.model = model
        self.inputs = inputs
        self.output_curvature = output_curvature
        self.residual_weights = residual_weights
        self.damping = float(damping)
        self._like = list(parameter_dict(model).values())
        size = sum(p.numel() for p in self._like)
        self.shape = (size, size)

    @classmethod
    def fisher(
        cls,
        model: nn.Module,
        inputs: ModelInputs,
        likelihood: str | Likelihood,
        kind: str = "exact",
        targets: Tensor | None = None,
        samples: int = 1,
        generator: torch.Generator | None = None,
        damping: float = 0.0,
    ) -> CurvatureOperator:
        """The exact / Monte Carlo / empirical Fisher of the mean loss as an operator."""
        likelihood = get_likelihood(likelihood)
        outputs = _outputs_function(model, inputs)(parameter_dict(model))
        curvature = fisher_output_curvature(likelihood, outputs, kind, targets, samples, generator)
        return cls(model, inputs, curvature, damping=damping)

    def matvec(self, vector: Tensor) -> Tensor:
        """C v for a flat vector v of length P."""
        pieces = unflatten_like(vector, self._like)
        result = flatten_tensors(
            jacobian_sandwich_product(self.model, self.inputs, self.output_curvature, pieces)
        )
        if self.residual_weights is not None:
            residual = output_weighted_hessian_product(
                self.model, self.inputs, self.residual_weights, pieces
            )
            result = result + flatten_tensors(residual)
        if self.damping:
            result = result + self.damping * vector
        return result

    def __matmul__(self, vector: Tensor) -> Tensor:
        return self.matvec(vector)


__all__ = [
    "jacobian_sandwich_product",
    "ggn_vector_product",
    "fisher_vector_product",
    "output_weighted_hessian_product",
    "hessian_vector_product",
    "CurvatureOperator",
]
