"""Curvature statistics of one step: the batch Kronecker factors of every tracked layer.

What a K-FAC step asks for, and nothing about what it does with them: the closure's
forward and backward run here, with the capture hooks on when statistics are due, and
the batch factors come back per layer (None for a layer that no call of this forward
connected to the loss). Which examples and which targets:

- with ``fraction = 1`` (or ``fisher="empirical"``) the main forward is reused: the
  sampled-target (or exact, or label) gradients are taken through its graph;
- otherwise a separate forward on the first ceil(fraction * m) examples, with the
  model's buffers restored afterwards, so BatchNorm's running statistics see only the
  closure's forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from natgrad.curvature.capture import (
    CurvatureCapture,
    TrackedLayer,
    buffers_restored,
    from_compiled_graph,
    unwrap_model,
)
from natgrad.curvature.kronecker import KroneckerFactors, layer_batch_factors, output_gradients
from natgrad.curvature.likelihoods import Likelihood

Forward = Callable[[], tuple[Tensor, Tensor]]
LayerFactors = list[KroneckerFactors | None]


def slice_batch(inputs: tuple, batch_size: int, count: int) -> tuple:
    """The first ``count`` examples of every tensor argument with a batch dimension."""
    return tuple(
        x[:count] if isinstance(x, Tensor) and x.dim() > 0 and x.shape[0] == batch_size else x
        for x in inputs
    )


def no_autocast(reference: Tensor):
    """A context that turns autocast off on ``reference``'s device type (factors in float32)."""
    return torch.autocast(device_type=reference.device.type, enabled=False)


@dataclass
class StatisticsCollector:
    """Runs the forward/backward of a step and, when due, the batch factors of each layer.

    ``fisher``: "mc" (targets sampled with ``generator``), "exact" (output-Hessian square
    root) or "empirical" (the closure's own labels); ``fraction`` of the batch feeds them.
    """

    model: nn.Module
    layers: list[TrackedLayer]
    likelihood: Likelihood
    fisher: str
    fraction: float
    generator: torch.Generator
    per_example: bool = False  # keep each layer's per-example pieces (ExamplePieces)
    capture: CurvatureCapture = field(init=False)

    def __post_init__(self) -> None:
        self.capture = CurvatureCapture(self.model, self.layers)

    @property
    def reuses_main_forward(self) -> bool:
        return self.fraction == 1.0 or self.fisher == "empirical"

    def forward_backward(
        self, forward: Forward, due: bool
    ) -> tuple[Tensor, Tensor, tuple, LayerFactors | None]:
        """(loss, outputs, the root model's inputs, batch factors or None when not ``due``).

        Parameter gradients of the loss are in ``.grad`` afterwards.
        """
        reuse = due and self.reuses_main_forward
        try:
            with torch.enable_grad():
                with self.capture.capturing() if reuse else nullcontext():
                    loss, outputs = forward()
                batch_inputs = self.capture.root_inputs
                count = math.ceil(self.fraction * outputs.shape[0])
                factors = None
                if reuse:
                    factors = self._from_main_forward(loss, outputs, count)
                else:
                    loss.backward()
                    if due:
                        sub_batch = slice_batch(batch_inputs, outputs.shape[0], count)
                        factors = self._from_sub_batch(sub_batch)
                if factors is not None:
                    _refuse_compiled_calls(self.layers, factors)
        finally:
            self.capture.clear()
        return loss, outputs, batch_inputs, factors

    def _call_outputs(self) -> list[Tensor]:
        return [call.layer_output for layer in self.layers for call in layer.calls]

    def _per_layer(self, flat: list) -> list[list]:
        """Split a list over all calls of all layers back into one list per layer."""
        grouped, start = [], 0
        for layer in self.layers:
            grouped.append(flat[start : start + len(layer.calls)])
            start += len(layer.calls)
        return grouped

    def _factors(self, call_grads: list, num_examples: int, count: int | None) -> LayerFactors:
        if not self.layers:
            return []
        with torch.no_grad(), no_autocast(self._reference()):
            return [
                layer_batch_factors(layer, grads, num_examples, count, self.per_example)
                for layer, grads in zip(self.layers, self._per_layer(call_grads), strict=True)
            ]

    def _reference(self) -> Tensor:
        return next(unwrap_model(self.model).parameters())

    def _from_main_forward(self, loss: Tensor, outputs: Tensor, count: int) -> LayerFactors:
        """Statistics from the main forward (all examples, or the first ``count`` for empirical)."""
        call_outputs = self._call_outputs()
        if self.fisher == "empirical":
            grads = _backward_with_output_grads(loss, call_outputs)
            scale = outputs.shape[0]  # d(mean loss)/ds = g_n / N
            call_grads = [[None if g is None else g * scale] for g in grads]
            return self._factors(call_grads, count, count)
        call_grads = output_gradients(
            self.fisher, self.likelihood, outputs, call_outputs, self.generator
        )
        loss.backward()
        return self._factors(call_grads, outputs.shape[0], None)

    def _from_sub_batch(self, sub_inputs: tuple) -> LayerFactors:
        """A separate forward on the first examples (buffers untouched), then sampled/exact g."""
        # the gradients are taken before the buffers are written back (batch norm's
        # backward checks that its saved running statistics were not modified)
        with buffers_restored(self.model):
            with self.capture.capturing():
                sub_outputs = unwrap_model(self.model)(*sub_inputs)
            call_grads = output_gradients(
                self.fisher, self.likelihood, sub_outputs, self._call_outputs(), self.generator
            )
        return self._factors(call_grads, sub_outputs.shape[0], None)


def _refuse_compiled_calls(layers: list[TrackedLayer], factors: LayerFactors) -> None:
    """RuntimeError for a layer whose calls were recorded inside a torch.compile'd graph and
    so received no output gradient while its weight got one (no silent first-order step)."""
    for layer, layer_factors in zip(layers, factors, strict=True):
        compiled = any(from_compiled_graph(call.layer_output) for call in layer.calls)
        if layer_factors is None and compiled and layer.weight.grad is not None:
            raise RuntimeError(
                f"K-FAC: layer {layer.name} ran inside a torch.compile'd graph, where its "
                "outputs get no gradient of their own, so it would get no curvature; call the "
                "model uncompiled in the closure (or compile it with backend='eager')"
            )


def _backward_with_output_grads(loss: Tensor, call_outputs: list[Tensor]) -> list[Tensor | None]:
    """loss.backward(), recording the gradient at each call output on the way (None if unused)."""
    recorded: list[Tensor | None] = [None] * len(call_outputs)
    handles = []
    for index, output in enumerate(call_outputs):
        if not output.requires_grad:
            continue

        def record(grad: Tensor, index: int = index) -> None:
            recorded[index] = grad.detach()

        handles.append(output.register_hook(record))
    try:
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return recorded


__all__ = ["StatisticsCollector", "slice_batch", "no_autocast", "LayerFactors"]
