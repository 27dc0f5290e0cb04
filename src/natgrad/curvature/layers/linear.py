"""nn.Linear: one position per example, or one per entry of the extra input dimensions.

s = W a_bar with a_bar = [a; 1] when the layer has a bias (Martens & Grosse 2015).
An input of shape (N, ..., D) (e.g. a sequence (N, T, D)) shares the weight over the
positions of its middle dimensions; the batch dimension must come first.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from natgrad.curvature.layers import LayerHandler, append_ones_column, register_layer_handler


def _as_positions(tensor: Tensor) -> Tensor:
    """(N, ..., D) -> (N, R, D); an unbatched (D,) input is one example with one position."""
    if tensor.dim() == 1:
        return tensor.reshape(1, 1, -1)
    return tensor.reshape(tensor.shape[0], -1, tensor.shape[-1])


class LinearHandler(LayerHandler):
    """Positions for nn.Linear: a_bar = [input; 1], g = d nll / d output."""

    def activation_positions(self, module: nn.Module, layer_input: Tensor) -> Tensor:
        positions = _as_positions(layer_input)
        return append_ones_column(positions) if module.bias is not None else positions

    def output_grad_positions(self, module: nn.Module, output_grad: Tensor) -> Tensor:
        return _as_positions(output_grad)

    def input_matrix_shape(self, module: nn.Module, call) -> tuple[int, int] | None:
        """(C, prod(rest)) when the input is an nn.Flatten of a (N, C, ...) map."""
        source = call.flattened_from
        if source is None:
            return None
        return source[0], math.prod(source[1:])


register_layer_handler(nn.Linear, LinearHandler())
