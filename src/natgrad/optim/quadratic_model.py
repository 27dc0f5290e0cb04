"""The local quadratic model of K-FAC's step rules, with exact Fisher (GGN) products
(or, with ``model_curvature="kronecker"``, the Kronecker-factored curvature's).

M(d) = 1/2 d^T (F + (lambda + eta) I) d + grad^T d (Martens & Grosse 2015, s.6.4, s.7;
docs/REFERENCES.md s.3). Directions d are combinations of a few candidate directions u_i
(the proposal Delta, the previous update delta0), so the model needs only the Gram
matrices [u_i^T F u_j], [u_i^T u_j] and the dots [grad^T u_i]. u^T F v = <J u, M J v>
with M the output-space Fisher of the mean loss on the model's examples: forward-mode
products only, no backward pass and no parameter-space product.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vmap
from torch.profiler import record_function

from natgrad.curvature.capture import unwrap_model
from natgrad.curvature.dense import parameter_dict
from natgrad.curvature.likelihoods import Likelihood
from natgrad.curvature.output_space import fisher_output_curvature
from natgrad.curvature.statistics import slice_batch

LayerMatrices = list[Tensor | None]


def flat_dot(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
    """sum_k <x_k, y_k> in float32 without an elementwise temporary."""
    return sum(
        torch.vdot(x.reshape(-1).float(), y.reshape(-1).float())
        for x, y in zip(xs, ys, strict=True)
    )


def layer_dot(xs: LayerMatrices, ys: LayerMatrices) -> Tensor:
    """sum over layers of <X, Y> (float32) for per-layer matrices; None counts as zero."""
    terms = [
        _matrix_dot(x.float(), y.float())
        for x, y in zip(xs, ys, strict=True)
        if x is not None and y is not None
    ]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def _matrix_dot(x: Tensor, y: Tensor) -> Tensor:
    """<X, Y>: a flat vdot when both are contiguous, else an elementwise sum (no copies)."""
    if x.is_contiguous() and y.is_contiguous():
        return torch.vdot(x.reshape(-1), y.reshape(-1))
    return (x * y).sum()


@dataclass
class QuadraticModel:
    """Gram matrices of M on the first max(ceil(fraction * m), min_examples) examples.

    The floor keeps the 2x2 model from being estimated on a handful of examples at small
    batch sizes, where its step overshoots; the gradient is always the whole batch's.
    """

    model: nn.Module
    likelihood: Likelihood
    fraction: float = 1.0
    min_examples: int = 128
    batched_jvp: bool = True
    # the weighted mean over ranks of a per-rank Fisher Gram (identity on one process)
    reduce_mean: Callable[[Tensor, float], Tensor] | None = None
    # model_curvature="kronecker": F u per layer from the running Kronecker factors
    # (no forward pass; the layers' own, already averaged statistics) instead of J^T M J u
    layer_products: Callable[[LayerMatrices], LayerMatrices] | None = None

    def examples(self, batch_inputs: tuple) -> tuple:
        """The model's examples: the first max(ceil(fraction * m), min_examples), at most m."""
        batch_size = next(
            (x.shape[0] for x in batch_inputs if isinstance(x, Tensor) and x.dim() > 0), None
        )
        if batch_size is None or self.fraction == 1.0:
            return batch_inputs
        count = max(math.ceil(self.fraction * batch_size), self.min_examples)
        if count >= batch_size:
            return batch_inputs
        return slice_batch(batch_inputs, batch_size, count)

    def output_directions(
        self, vectors: list[list[Tensor]], inputs: tuple
    ) -> tuple[list[Tensor], Tensor]:
        """J u for each parameter-shaped vector u (forward mode only) and the outputs.

        All tangents go through one jvp, vectorized over the tangents, so the primal
        forward runs once; a model that vmap cannot batch gets one jvp per tangent.
        Buffers (e.g. BatchNorm running statistics) enter as copies made inside the
        transformed function, so the model's own buffers are left unchanged.
        """
        model = unwrap_model(self.model)
        params = parameter_dict(model)
        buffers = dict(model.named_buffers())

        def outputs_of(values: dict[str, Tensor]) -> Tensor:
            copies = {name: buffer.clone() for name, buffer in buffers.items()}
            return functional_call(model, {**values, **copies}, inputs).flatten(1)

        if self.batched_jvp:
            stacked = {
                name: torch.stack([vector[i] for vector in vectors])
                for i, name in enumerate(params)
            }
            try:
                outputs, pushed = vmap(
                    lambda tangents: jvp(outputs_of, (params,), (tangents,)),
                    out_dims=(None, 0),
                    randomness="same",
                )(stacked)
                return list(pushed.float().unbind(0)), outputs
            except RuntimeError:
                self.batched_jvp = False
        pushed, outputs = [], None
        for vector in vectors:
            tangents = dict(zip(params, vector, strict=True))
            outputs, jv = jvp(outputs_of, (params,), (tangents,))
            pushed.append(jv.float())
        return pushed, outputs

    def gram(
        self,
        directions: list[LayerMatrices],
        flat_directions: list[list[Tensor]],
        batch_inputs: tuple,
        grads: LayerMatrices,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """[u_i^T F u_j], [u_i^T u_j], [grad^T u_i] for the per-layer directions u_i.

        ``flat_directions[i]`` is direction i shaped like the trainable parameters
        (zeros outside the tracked layers); the plain inner products are taken on the
        per-layer matrices.
        """
        with record_function("kfac.quadratic_model"):
            if self.layer_products is not None:
                fisher_gram = self._kronecker_gram(directions)
            else:
                fisher_gram = self._exact_gram(flat_directions, batch_inputs)
        fisher_gram = 0.5 * (fisher_gram + fisher_gram.T)
        size = len(directions)
        inner = {
            (i, j): layer_dot(directions[i], directions[j])
            for i in range(size)
            for j in range(i, size)
        }
        inner_gram = torch.stack(
            [torch.stack([inner[min(i, j), max(i, j)] for j in range(size)]) for i in range(size)]
        )
        grad_dots = torch.stack([layer_dot(grads, directions[i]) for i in range(size)])
        return fisher_gram, inner_gram, grad_dots

    def _exact_gram(self, flat_directions: list[list[Tensor]], batch_inputs: tuple) -> Tensor:
        """[<J u_i, M J u_j>] on the model's examples (mean over ranks)."""
        with torch.enable_grad():
            examples = self.examples(batch_inputs)
            pushed, outputs = self.output_directions(flat_directions, examples)
        curvature = fisher_output_curvature(self.likelihood, outputs, kind="exact")
        curved = [curvature.product(jv) for jv in pushed]
        size = len(pushed)
        fisher_gram = torch.stack(
            [
                torch.stack([flat_dot([pushed[i]], [curved[j]]) for j in range(size)])
                for i in range(size)
            ]
        )
        if self.reduce_mean is not None:
            fisher_gram = self.reduce_mean(fisher_gram, outputs.shape[0])
        return fisher_gram

    def _kronecker_gram(self, directions: list[LayerMatrices]) -> Tensor:
        """[sum over layers <U_i, C U_j>] with C each layer's Kronecker-factored curvature
        (block-diagonal over layers; the factors are already averaged over ranks)."""
        products = [self.layer_products(direction) for direction in directions]
        size = len(directions)
        return torch.stack(
            [
                torch.stack([layer_dot(directions[i], products[j]) for j in range(size)])
                for i in range(size)
            ]
        )


__all__ = ["QuadraticModel", "flat_dot", "layer_dot", "LayerMatrices"]
