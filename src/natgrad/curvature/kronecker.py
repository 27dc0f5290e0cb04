"""Kronecker factors of the Fisher: batch statistics A, G per layer and their moving average.

For a layer s = W a_bar, the Fisher block is approximated by A ⊗ G with
A = E[a_bar a_bar^T] and G = E[g g^T], g = d(-log p(y | x)) / d s per example
(Martens & Grosse 2015; docs/REFERENCES.md s.3). Which targets y define g is the
``fisher`` kind:

- "mc": y sampled from the model's predictive distribution (an unbiased estimate of
  the Fisher);
- "exact": the output-Hessian square root S (S S^T = H_out) is backpropagated column by
  column, so E over y is taken exactly: G = mean_n sum_k g_{n,k} g_{n,k}^T;
- "empirical": the training labels (the closure's own loss).

Gradients are taken of the *sum* of per-example NLLs, so each row is the per-example
gradient g_n (not g_n / N as for a mean-reduced loss). Every call of a layer's modules
in the forward contributes ("expand" or "reduce" over the shared positions, per
layer). All factors are float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad.curvature.capture import TrackedLayer
from natgrad.curvature.doubly_factored import DoublyFactoredFactors, doubly_factored_factors
from natgrad.curvature.likelihoods import Likelihood

FISHER_KINDS = ("mc", "exact", "empirical")


@dataclass
class ExamplePieces:
    """Per-example pieces of one layer's statistics backward (for approximations that need
    per-example gradients, e.g. EKFAC): example n's gradient matrix for backpropagated
    column k is G_nk = sum_r g[k][n, r] a[n, r]^T (positions of every call concatenated);
    averages over examples divide by ``examples``."""

    a: Tensor  # (N, R, in[+1])
    g: list[Tensor]  # one (N, R, out) per backpropagated column
    examples: int


@dataclass
class KroneckerFactors:
    """A (in[+1] x in[+1]) and G (out x out) of one layer, float32 (and, when asked for,
    the per-example pieces they came from)."""

    A: Tensor
    G: Tensor
    examples: ExamplePieces | None = None

    def matrices(self) -> tuple[Tensor, ...]:
        return (self.A, self.G)


def _gradients_or_none(total: Tensor, layer_outputs: Sequence[Tensor], **kwargs) -> tuple:
    """d total / d each layer output; None for an output that does not reach ``total``."""
    return torch.autograd.grad(
        total, list(layer_outputs), retain_graph=True, allow_unused=True, **kwargs
    )


def sampled_output_gradients(
    likelihood: Likelihood,
    outputs: Tensor,
    layer_outputs: Sequence[Tensor],
    generator: torch.Generator | None = None,
) -> list[list[Tensor | None]]:
    """Per-example gradients of nll(outputs, y ~ p(y | outputs)) at each layer output ("mc")."""
    targets = likelihood.sample(outputs, generator=generator)
    total = likelihood.nll(outputs, targets).sum()
    return [[grad] for grad in _gradients_or_none(total, layer_outputs)]


def exact_output_gradients(
    likelihood: Likelihood, outputs: Tensor, layer_outputs: Sequence[Tensor]
) -> list[list[Tensor | None]]:
    """Backpropagate every column k of S (S S^T = H_out): one gradient per column and layer.

    sum_k g_k g_k^T = J^T S S^T J = J^T H_out J per example, the exact Fisher of the
    layer output (docs/REFERENCES.md s.2).
    """
    sqrt_hessian = likelihood.output_hessian_sqrt(outputs.detach().float())  # (N, C, K)
    per_output: list[list[Tensor | None]] = [[] for _ in layer_outputs]
    for k in range(sqrt_hessian.shape[-1]):
        column = sqrt_hessian[..., k].reshape(outputs.shape).to(outputs.dtype)
        grads = _gradients_or_none(outputs, layer_outputs, grad_outputs=column)
        for bucket, grad in zip(per_output, grads, strict=True):
            bucket.append(grad)
    return per_output


def output_gradients(
    fisher: str,
    likelihood: Likelihood,
    outputs: Tensor,
    layer_outputs: Sequence[Tensor],
    generator: torch.Generator | None = None,
) -> list[list[Tensor | None]]:
    """Gradients at the layer outputs that define G for ``fisher`` "mc" or "exact".

    One list per layer output (one entry per backpropagated column); None where that
    output does not reach the model's outputs.
    """
    if not layer_outputs:
        return []
    if fisher == "mc":
        return sampled_output_gradients(likelihood, outputs, layer_outputs, generator)
    if fisher == "exact":
        return exact_output_gradients(likelihood, outputs, layer_outputs)
    raise ValueError(f"fisher must be 'mc' or 'exact' here, got {fisher!r}")


def layer_batch_factors(
    layer: TrackedLayer,
    call_grads: Sequence[Sequence[Tensor | None]],
    num_examples: int,
    count: int | None = None,
    keep_examples: bool = False,
) -> KroneckerFactors | DoublyFactoredFactors | None:
    """A and G of one layer from its recorded calls (float32); None if no call reached the loss.

    ``call_grads[c]`` holds the gradients at the output of call c (one per
    backpropagated column); ``count`` keeps only the first examples of every call.
    With R positions per example summed over calls (sequence positions, convolution
    locations, repeated calls), Eschenhagen et al. (2023):

    - "expand": A = sum_{n,r} a_bar a_bar^T / (N R), G = sum_{n,r} g g^T / N;
      for convolutions this is the KFC scaling (docs/REFERENCES.md s.4);
    - "reduce": a~_n = mean_r a_bar_{n,r}, g~_n = sum_r g_{n,r};
      A = sum_n a~ a~^T / N, G = sum_n g~ g~^T / N.

    A doubly-factored layer gets K, Psi and G instead, from the same activation rows
    (:mod:`natgrad.curvature.doubly_factored`). ``keep_examples`` attaches the
    per-example pieces (:class:`ExamplePieces`) to Kronecker factors.
    """
    used = [
        (call, grads)
        for call, grads in zip(layer.calls, call_grads, strict=True)
        if any(g is not None for g in grads)
    ]
    if not used:
        return None
    handler = layer.handler
    activations, gradients = [], []
    for call, grads in used:
        layer_input = call.layer_input if count is None else call.layer_input[:count]
        activations.append(handler.activation_positions(call.module, layer_input.float()))
        columns = [torch.zeros_like(call.layer_output) if g is None else g for g in grads]
        if count is not None:
            columns = [g[:count] for g in columns]
        gradients.append([handler.output_grad_positions(call.module, g.float()) for g in columns])
    if layer.sharing == "reduce":
        a_rows, G = _reduced_rows(layer.name, activations, gradients, num_examples)
    else:
        a_rows, G = _expanded_rows(activations, gradients, num_examples)
    shape = layer.input_matrix_shape(used[0][0])
    if shape is not None:
        return doubly_factored_factors(a_rows, shape, layer.bias is not None, G)
    pieces = None
    if keep_examples:
        pieces = _example_pieces(layer.name, activations, gradients, num_examples)
    return KroneckerFactors(_gram(a_rows, a_rows.shape[0]), G, pieces)


def _example_pieces(
    name: str, activations: list, gradients: list, num_examples: int
) -> ExamplePieces:
    """Every call's positions side by side per example."""
    if any(a.shape[0] != num_examples for a in activations):
        raise ValueError(
            f"per-example statistics for layer {name} need inputs with the batch as their "
            f"first dimension ({num_examples} examples)"
        )
    a = torch.cat(activations, dim=1)
    g = [torch.cat(column, dim=1) for column in zip(*gradients, strict=True)]
    return ExamplePieces(a, g, num_examples)


def _gram(rows: Tensor, divisor: int) -> Tensor:
    gram = rows.T @ rows
    return gram.div_(divisor)


def _expanded_rows(activations: list, gradients: list, num_examples: int) -> tuple[Tensor, Tensor]:
    """Every position of every call as a row of a_bar, and G."""
    a_rows = torch.cat([a.reshape(-1, a.shape[-1]) for a in activations])
    g_rows = torch.cat([g.reshape(-1, g.shape[-1]) for columns in gradients for g in columns])
    return a_rows, _gram(g_rows, num_examples)


def _reduced_rows(
    name: str, activations: list, gradients: list, num_examples: int
) -> tuple[Tensor, Tensor]:
    """One row per example (a_bar averaged over its positions), and G of the summed g."""
    if any(a.shape[0] != num_examples for a in activations):
        raise ValueError(
            f"sharing='reduce' for layer {name} needs inputs with the batch as their first "
            f"dimension ({num_examples} examples); use sharing='expand' for this layer"
        )
    a_mean = torch.cat(activations, dim=1).mean(dim=1)
    g_sums = [torch.cat(column, dim=1).sum(dim=1) for column in zip(*gradients, strict=True)]
    return a_mean, _gram(torch.cat(g_sums), num_examples)


def all_finite(factors: Sequence[KroneckerFactors | DoublyFactoredFactors]) -> Tensor:
    """A 0-d bool tensor: whether every factor is finite (no host sync).

    A Gram matrix R^T R has a NaN or infinite entry only if a row entry is NaN or
    infinite (or the products overflow), and then its diagonal entry
    (R^T R)_ii = sum_r R_ri^2 is NaN or infinite too; so the traces decide, at the cost
    of one reduction over each diagonal instead of a pass over every entry.
    """
    traces = [torch.trace(matrix) for f in factors for matrix in f.matrices()]
    return torch.isfinite(torch.stack(traces)).all()


def ema_decay(num_updates: int, stat_decay: float) -> float:
    """eps_k = min(1 - 1/k, stat_decay) for the k-th update (k >= 1): a warm-up average."""
    return min(1.0 - 1.0 / num_updates, stat_decay)
