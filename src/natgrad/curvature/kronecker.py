"""Kronecker factors of the Fisher: batch statistics A, G per layer and their moving average.

For a layer s = W a_bar, the Fisher block is approximated by A ⊗ G with
A = E[a_bar a_bar^T] and G = E[g g^T], g = d(-log p(y | x)) / d s per example
(Martens & Grosse 2015; REFERENCES.md s.3). Which targets y define g is the
``fisher`` kind:

- "mc": y sampled from the model's predictive distribution (an unbiased estimate of
  the Fisher);
- "exact": the output-Hessian square root S (S S^T = H_out) is backpropagated column by
  column, so E over y is taken exactly: G = mean_n sum_k g_{n,k} g_{n,k}^T;
- "empirical": the training labels (the closure's own loss).

Gradients are taken of the *sum* of per-example NLLs, so each row is the per-example
gradient g_n (not g_n / N as for a mean-reduced loss). All factors are float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad.curvature.capture import TrackedLayer
from natgrad.curvature.likelihoods import Likelihood

FISHER_KINDS = ("mc", "exact", "empirical")


@dataclass
class KroneckerFactors:
    """A (in[+1] x in[+1]) and G (out x out) of one layer, float32."""

    A: Tensor
    G: Tensor


def sampled_output_gradients(
    likelihood: Likelihood,
    outputs: Tensor,
    layer_outputs: Sequence[Tensor],
    generator: torch.Generator | None = None,
) -> list[list[Tensor]]:
    """Per-example gradients of nll(outputs, y ~ p(y | outputs)) at each layer output ("mc")."""
    targets = likelihood.sample(outputs, generator=generator)
    total = likelihood.nll(outputs, targets).sum()
    grads = torch.autograd.grad(total, list(layer_outputs), retain_graph=True)
    return [[grad] for grad in grads]


def exact_output_gradients(
    likelihood: Likelihood, outputs: Tensor, layer_outputs: Sequence[Tensor]
) -> list[list[Tensor]]:
    """Backpropagate every column k of S (S S^T = H_out): one gradient per column and layer.

    sum_k g_k g_k^T = J^T S S^T J = J^T H_out J per example, the exact Fisher of the
    layer output (REFERENCES.md s.2).
    """
    sqrt_hessian = likelihood.output_hessian_sqrt(outputs.detach().float())  # (N, C, K)
    per_layer: list[list[Tensor]] = [[] for _ in layer_outputs]
    for k in range(sqrt_hessian.shape[-1]):
        column = sqrt_hessian[..., k].reshape(outputs.shape).to(outputs.dtype)
        grads = torch.autograd.grad(outputs, list(layer_outputs), column, retain_graph=True)
        for bucket, grad in zip(per_layer, grads, strict=True):
            bucket.append(grad)
    return per_layer


def output_gradients(
    fisher: str,
    likelihood: Likelihood,
    outputs: Tensor,
    layer_outputs: Sequence[Tensor],
    generator: torch.Generator | None = None,
) -> list[list[Tensor]]:
    """Gradients at the layer outputs that define G for ``fisher`` "mc" or "exact"."""
    if fisher == "mc":
        return sampled_output_gradients(likelihood, outputs, layer_outputs, generator)
    if fisher == "exact":
        return exact_output_gradients(likelihood, outputs, layer_outputs)
    raise ValueError(f"fisher must be 'mc' or 'exact' here, got {fisher!r}")


def layer_batch_factors(
    layer: TrackedLayer, layer_input: Tensor, output_grads: Sequence[Tensor], num_examples: int
) -> KroneckerFactors:
    """A = a_bar^T a_bar / R and G = sum_grads g^T g / N for one layer (float32).

    R is the number of activation rows (N for Linear, N * |T| for Conv2d), N the number
    of examples; this is the KFC scaling for convolutions (REFERENCES.md s.4).
    """
    module, handler = layer.module, layer.handler
    a_rows = handler.activation_rows(module, layer_input.float())
    A = a_rows.T @ a_rows
    A.div_(a_rows.shape[0])
    g_rows = torch.cat([handler.output_grad_rows(module, g.float()) for g in output_grads])
    G = g_rows.T @ g_rows
    G.div_(num_examples)
    return KroneckerFactors(A, G)


def all_finite(factors: Sequence[KroneckerFactors]) -> Tensor:
    """A 0-d bool tensor: whether every factor is finite (no host sync).

    A Gram matrix R^T R has a NaN or infinite entry only if a row entry is NaN or
    infinite (or the products overflow), and then its diagonal entry
    (R^T R)_ii = sum_r R_ri^2 is NaN or infinite too; so the traces decide, at the cost
    of one reduction over each diagonal instead of a pass over every entry.
    """
    traces = [torch.trace(f.A) for f in factors] + [torch.trace(f.G) for f in factors]
    return torch.isfinite(torch.stack(traces)).all()


def ema_decay(num_updates: int, stat_decay: float) -> float:
    """eps_k = min(1 - 1/k, stat_decay) for the k-th update (k >= 1): a warm-up average."""
    return min(1.0 - 1.0 / num_updates, stat_decay)


def update_running_factors(
    running: KroneckerFactors | None, batch: KroneckerFactors, decay: float
) -> KroneckerFactors:
    """running <- decay * running + (1 - decay) * batch, in place; the batch when none yet."""
    if running is None or decay == 0.0:
        return KroneckerFactors(batch.A.clone(), batch.G.clone())
    running.A.lerp_(batch.A, 1.0 - decay)
    running.G.lerp_(batch.G, 1.0 - decay)
    return running
