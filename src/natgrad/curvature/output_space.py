"""Curvature in output space: the matrix M that a curvature matrix sandwiches, J^T M J.

Every curvature matrix of natgrad has the form C = J^T M J (+ a second-order term for
the Hessian), with J = d outputs / d theta of shape (N*C, P) and M block-diagonal over
examples, one (C, C) block per example (docs/REFERENCES.md s.2):
- exact Fisher / GGN: M_n = H_n / N, H_n the likelihood's output Hessian;
- Monte Carlo Fisher: M_n = (1/(N S)) sum_s r_ns r_ns^T, r_ns = d nll(f_n, y_s) / d f_n
  with y_s drawn from the model;
- empirical Fisher: the same with the training label in place of the sample;
- Hessian of the loss: M = d^2 L / d f^2 (the loss's own output Hessian).
The 1/N of the mean loss is folded into M, so J^T M J is the curvature of the mean loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad.curvature.likelihoods import (
    Bernoulli,
    Categorical,
    Gaussian,
    Likelihood,
)


@dataclass(frozen=True)
class OutputCurvature:
    """Block-diagonal output-space matrix M given by its product and, when cheap, its blocks.

    ``product(u)`` maps u of shape (N, C) to M u of shape (N, C). ``factor`` (N, C, K),
    when present, satisfies M_n = B_n B_n^T; ``block_fn`` builds the (N, C, C) blocks.
    """

    product: Callable[[Tensor], Tensor]
    block_fn: Callable[[], Tensor] | None = None
    factor: Tensor | None = None

    def factors(self) -> Tensor | None:
        """The factor B with M_n = B_n B_n^T, or None if M is not given in factor form."""
        return self.factor

    def blocks(self) -> Tensor:
        """The (N, C, C) diagonal blocks of M."""
        if self.factor is not None:
            return self.factor @ self.factor.transpose(1, 2)
        if self.block_fn is None:
            raise ValueError("this output curvature has no dense blocks")
        return self.block_fn()

    @classmethod
    def from_factor(cls, factor: Tensor) -> OutputCurvature:
        """M_n = B_n B_n^T from a factor B of shape (N, C, K)."""

        def product(u: Tensor) -> Tensor:
            coefficients = torch.einsum("nck,nc->nk", factor, u)
            return torch.einsum("nck,nk->nc", factor, coefficients)

        return cls(product=product, factor=factor)


def match_targets(likelihood: Likelihood, targets: Tensor, outputs: Tensor) -> Tensor:
    """Targets shaped for ``likelihood.nll(outputs, targets)`` with outputs of shape (N, C).

    Class indices (categorical) stay as they are; gaussian/bernoulli targets are
    flattened like the outputs.
    """
    if isinstance(likelihood, Categorical):
        return targets
    return targets.reshape(outputs.shape)


def per_example_output_gradients(
    likelihood: Likelihood, outputs: Tensor, targets: Tensor
) -> Tensor:
    """r_n = d nll(f_n, y_n) / d f_n for every example, shape (N, C)."""
    with torch.enable_grad():
        leaf = outputs.detach().requires_grad_(True)
        total = likelihood.nll(leaf, match_targets(likelihood, targets, leaf)).sum()
        (gradient,) = torch.autograd.grad(total, leaf)
    return gradient


def output_hessian_vector_product(likelihood: Likelihood, outputs: Tensor, u: Tensor) -> Tensor:
    """H_n u_n for every example without forming H: shape (N, C).

    Closed forms: gaussian H = I; categorical H = diag(p) - p p^T; bernoulli
    H = diag(p (1 - p)). Other likelihoods fall back to the dense output Hessian.
    """
    if isinstance(likelihood, Gaussian):
        return u
    if isinstance(likelihood, Categorical):
        p = torch.softmax(outputs.detach(), dim=-1)
        return p * u - p * (p * u).sum(dim=-1, keepdim=True)
    if isinstance(likelihood, Bernoulli):
        p = torch.sigmoid(outputs.detach())
        return p * (1 - p) * u
    return torch.einsum("ncd,nd->nc", likelihood.output_hessian(outputs), u)


def exact_fisher_curvature(likelihood: Likelihood, outputs: Tensor) -> OutputCurvature:
    """M_n = H_n / N: the exact Fisher (= GGN) of the mean loss in output space."""
    outputs = outputs.detach()
    n = outputs.shape[0]

    def product(u: Tensor) -> Tensor:
        return output_hessian_vector_product(likelihood, outputs, u) / n

    return OutputCurvature(
        product=product,
        block_fn=lambda: likelihood.output_hessian(outputs) / n,
    )


def sampled_gradient_factor(
    likelihood: Likelihood, outputs: Tensor, samples: int, generator: torch.Generator | None
) -> Tensor:
    """Factor (N, C, S) of r_ns / sqrt(N S) for S targets per example drawn from the model."""
    n = outputs.shape[0]
    repeated = outputs.detach().repeat(samples, *([1] * (outputs.dim() - 1)))
    drawn = likelihood.sample(repeated, generator=generator)
    gradients = per_example_output_gradients(likelihood, repeated, drawn)
    gradients = gradients.reshape(samples, n, -1).permute(1, 2, 0)
    return gradients / math.sqrt(n * samples)


def fisher_output_curvature(
    likelihood: Likelihood,
    outputs: Tensor,
    kind: str = "exact",
    targets: Tensor | None = None,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> OutputCurvature:
    """Output-space Fisher of the mean loss for kind "exact", "mc" or "empirical".

    "mc" draws ``samples`` targets per example with ``generator``; "empirical" needs the
    training ``targets``. See the module docstring for the formulas.
    """
    outputs = outputs.detach()
    if kind == "exact":
        return exact_fisher_curvature(likelihood, outputs)
    if kind == "mc":
        if not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an integer >= 1; got {samples!r}")
        return OutputCurvature.from_factor(
            sampled_gradient_factor(likelihood, outputs, samples, generator)
        )
    if kind == "empirical":
        if targets is None:
            raise ValueError("kind='empirical' needs the training targets (targets=None given)")
        gradients = per_example_output_gradients(likelihood, outputs, targets)
        return empirical_curvature_from_output_gradients(gradients)
    raise ValueError(f"kind must be one of exact, mc, empirical; got {kind!r}")


def empirical_curvature_from_output_gradients(gradients: Tensor) -> OutputCurvature:
    """M_n = r_n r_n^T / N from per-example output gradients r of shape (N, C)."""
    n = gradients.shape[0]
    return OutputCurvature.from_factor(gradients.detach().unsqueeze(-1) / math.sqrt(n))


def loss_output_curvature(loss: Tensor, outputs: Tensor) -> tuple[OutputCurvature, Tensor]:
    """M = d^2 L / d f^2 from the autograd graph of ``loss`` on ``outputs``; also dL/df.

    The product is exact for any twice-differentiable loss; the dense blocks assume the
    loss is a sum of per-example terms (so M is block-diagonal) and cost C backward passes.
    Returns (curvature, dL/df detached, shape (N, C)).
    """
    (gradient,) = torch.autograd.grad(loss, outputs, create_graph=True, retain_graph=True)
    flat_gradient = gradient.reshape(gradient.shape[0], -1)

    def product(u: Tensor) -> Tensor:
        (hu,) = torch.autograd.grad(gradient, outputs, u.reshape(gradient.shape), retain_graph=True)
        return hu.reshape(u.shape)

    def blocks() -> Tensor:
        rows = []
        for c in range(flat_gradient.shape[1]):
            (row,) = torch.autograd.grad(flat_gradient[:, c].sum(), outputs, retain_graph=True)
            rows.append(row.reshape(flat_gradient.shape))
        return torch.stack(rows, dim=1)

    return OutputCurvature(product=product, block_fn=blocks), flat_gradient.detach()


__all__ = [
    "OutputCurvature",
    "match_targets",
    "per_example_output_gradients",
    "output_hessian_vector_product",
    "exact_fisher_curvature",
    "sampled_gradient_factor",
    "fisher_output_curvature",
    "empirical_curvature_from_output_gradients",
    "loss_output_curvature",
]
