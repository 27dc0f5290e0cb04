"""Dense curvature oracles: Fisher, GGN and Hessian as (P, P) matrices for small models.

Parameter ordering (used by every function in ``natgrad.curvature``): the trainable
parameters of ``model.named_parameters()`` (those with ``requires_grad``), in that order,
each flattened row-major (``tensor.reshape(-1)``) and concatenated. Row/column ``i`` of
every matrix returned here refers to entry ``i`` of ``flatten_params(model)``.

Loss convention: the loss is the batch mean of the per-example negative log-likelihood,
L = (1/N) sum_n nll(f(x_n), y_n), and every matrix is the curvature of that loss, so the
Fisher/GGN is F = (1/N) sum_n J_n^T H_n J_n with J_n = d f(x_n) / d theta and H_n the
Hessian of nll with respect to the outputs (docs/REFERENCES.md s.2). The matrices are built
with ``torch.func``; memory grows as N * C * P for the Jacobian and P^2 for the result,
so these are meant for models of up to about 20k parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vmap

from natgrad.curvature.likelihoods import Likelihood, get_likelihood
from natgrad.curvature.output_space import (
    OutputCurvature,
    fisher_output_curvature,
    match_targets,
)

ModelInputs = Tensor | tuple[Tensor, ...]
FISHER_KINDS = ("exact", "mc", "empirical")
_HESSIAN_CHUNK = 128


def parameter_dict(model: nn.Module) -> dict[str, Tensor]:
    """Trainable parameters of ``model`` by name, detached, in ``named_parameters()`` order."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def flatten_params(model: nn.Module) -> Tensor:
    """All trainable parameters as one vector of length P (the natgrad parameter ordering).

    The ordering is ``model.named_parameters()`` restricted to ``requires_grad``
    parameters, each flattened row-major; it is the row order of every dense matrix.
    """
    return flatten_tensors(list(parameter_dict(model).values()))


def flatten_tensors(tensors: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    """Concatenate tensors flattened row-major into one vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_like(vector: Tensor, like: list[Tensor] | tuple[Tensor, ...]) -> list[Tensor]:
    """Split a flat vector into tensors shaped like ``like`` (inverse of ``flatten_tensors``)."""
    sizes = [t.numel() for t in like]
    if vector.numel() != sum(sizes):
        raise ValueError(f"vector has {vector.numel()} entries; the parameters have {sum(sizes)}")
    return [chunk.view_as(t) for chunk, t in zip(vector.split(sizes), like, strict=True)]


def _as_args(inputs: ModelInputs) -> tuple[Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def flat_output_function(model: nn.Module, inputs: ModelInputs) -> Callable[[Tensor], Tensor]:
    """theta -> f(x; theta) of shape (N, C) for a flat parameter vector ``theta``.

    The model is evaluated with ``torch.func.functional_call``; buffers are the model's own.
    Outputs of shape (N, ...) are flattened to (N, C).
    """
    like = list(parameter_dict(model).values())
    names = list(parameter_dict(model))
    args = _as_args(inputs)

    def outputs_of(theta: Tensor) -> Tensor:
        params = dict(zip(names, unflatten_like(theta, like), strict=True))
        return functional_call(model, params, args).flatten(1)

    return outputs_of


def output_jacobian(model: nn.Module, inputs: ModelInputs) -> Tensor:
    """The Jacobian J[n, c, p] = d f_c(x_n) / d theta_p of shape (N, C, P).

    Computed per example (``vmap`` over the batch of ``jacrev`` on a batch of one), so
    memory is O(N C P) and the model must treat examples independently (no batch norm
    in training mode).
    """
    like = list(parameter_dict(model).values())
    names = list(parameter_dict(model))

    def example_outputs(theta: Tensor, *example: Tensor) -> Tensor:
        params = dict(zip(names, unflatten_like(theta, like), strict=True))
        batch_of_one = tuple(x.unsqueeze(0) for x in example)
        return functional_call(model, params, batch_of_one).reshape(-1)

    theta = flatten_params(model)
    args = _as_args(inputs)
    return vmap(jacrev(example_outputs), in_dims=(None,) + (0,) * len(args))(theta, *args)


def jacobian_sandwich(jacobian: Tensor, output_curvature: OutputCurvature) -> Tensor:
    """sum_n J_n^T M_n J_n for block-diagonal output curvature M, shape (P, P).

    Uses the factor form M_n = B_n B_n^T when the curvature provides one, so the
    product is (B^T J)^T (B^T J) and stays symmetric positive semidefinite in floating point.
    """
    factors = output_curvature.factors()
    if factors is not None:
        projected = torch.einsum("nck,ncp->nkp", factors, jacobian).flatten(0, 1)
        return projected.T @ projected
    weighted = torch.einsum("ncd,ndq->ncq", output_curvature.blocks(), jacobian)
    return jacobian.flatten(0, 1).T @ weighted.flatten(0, 1)


def dense_ggn(model: nn.Module, inputs: ModelInputs, likelihood: str | Likelihood) -> Tensor:
    """Generalized Gauss-Newton matrix G = (1/N) sum_n J_n^T H_n J_n, shape (P, P).

    H_n is the likelihood's output Hessian at f(x_n); for the categorical, gaussian and
    bernoulli likelihoods it does not depend on the targets (docs/REFERENCES.md s.2).
    """
    likelihood = get_likelihood(likelihood)
    jacobian = output_jacobian(model, inputs)
    outputs = flat_output_function(model, inputs)(flatten_params(model))
    curvature = fisher_output_curvature(likelihood, outputs, kind="exact")
    return jacobian_sandwich(jacobian, curvature)


def dense_fisher(
    model: nn.Module,
    inputs: ModelInputs,
    likelihood: str | Likelihood,
    kind: str = "exact",
    targets: Tensor | None = None,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fisher matrix of the mean loss, shape (P, P).

    kind="exact": F = (1/N) sum_n J_n^T H_n J_n, the expectation over y ~ p(y|f(x_n))
    done in closed form (equal to the GGN for these likelihoods, Martens 2020).
    kind="mc": F = (1/(N S)) sum_{n,s} g_ns g_ns^T with g_ns the gradient of
    nll(f(x_n), y_s) for ``samples`` targets y_s drawn from the model.
    kind="empirical": the same with the given ``targets`` (one per example); not a
    curvature matrix in general (it understates curvature near a fit).
    """
    likelihood = get_likelihood(likelihood)
    if kind not in FISHER_KINDS:
        raise ValueError(f"kind must be one of {', '.join(FISHER_KINDS)}; got {kind!r}")
    jacobian = output_jacobian(model, inputs)
    outputs = flat_output_function(model, inputs)(flatten_params(model))
    curvature = fisher_output_curvature(
        likelihood, outputs, kind=kind, targets=targets, samples=samples, generator=generator
    )
    return jacobian_sandwich(jacobian, curvature)


def dense_from_product(
    product: Callable[[Tensor], Tensor], size: int, like: Tensor, chunk: int = _HESSIAN_CHUNK
) -> Tensor:
    """The (size, size) matrix of a linear map, column blocks from a vmapped product.

    ``product`` maps a flat vector to a flat vector and must be vmappable; ``like``
    supplies dtype and device.
    """
    columns = []
    eye = torch.eye(size, dtype=like.dtype, device=like.device)
    for start in range(0, size, chunk):
        columns.append(vmap(product)(eye[start : start + chunk]))
    return torch.cat(columns).T.contiguous()


def dense_output_weighted_hessian(model: nn.Module, inputs: ModelInputs, weights: Tensor) -> Tensor:
    """Hessian of theta -> sum_{n,c} w_nc f_c(x_n; theta), shape (P, P).

    With w = dL/df this is the term the GGN drops from the Hessian of L:
    H = J^T (d^2 L / df^2) J + sum_{n,c} w_nc d^2 f_nc / d theta^2.
    """
    outputs_of = flat_output_function(model, inputs)
    theta = flatten_params(model)
    weights = weights.detach().reshape(weights.shape[0], -1)

    def weighted_sum(t: Tensor) -> Tensor:
        return (outputs_of(t) * weights).sum()

    gradient = torch.func.grad(weighted_sum)
    return dense_from_product(lambda v: jvp(gradient, (theta,), (v,))[1], theta.numel(), theta)


def dense_hessian(
    model: nn.Module, inputs: ModelInputs, targets: Tensor, likelihood: str | Likelihood
) -> Tensor:
    """Hessian of L(theta) = (1/N) sum_n nll(f(x_n; theta), y_n), shape (P, P).

    Built column block by column block from forward-over-reverse Hessian-vector
    products (``torch.func.jvp`` of ``torch.func.grad``).
    """
    likelihood = get_likelihood(likelihood)
    outputs_of = flat_output_function(model, inputs)
    theta = flatten_params(model)

    def loss_of(t: Tensor) -> Tensor:
        outputs = outputs_of(t)
        return likelihood.loss(outputs, match_targets(likelihood, targets, outputs))

    gradient = torch.func.grad(loss_of)
    return dense_from_product(lambda v: jvp(gradient, (theta,), (v,))[1], theta.numel(), theta)


__all__ = [
    "FISHER_KINDS",
    "parameter_dict",
    "flatten_params",
    "flatten_tensors",
    "unflatten_like",
    "flat_output_function",
    "output_jacobian",
    "jacobian_sandwich",
    "dense_ggn",
    "dense_fisher",
    "dense_from_product",
    "dense_output_weighted_hessian",
    "dense_hessian",
]
