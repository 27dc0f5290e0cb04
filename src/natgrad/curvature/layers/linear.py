"""nn.Linear: one row per example (leading dimensions flattened into rows).

s = W a_bar with a_bar = [a; 1] when the layer has a bias (Martens & Grosse 2015);
inputs with extra leading dimensions (e.g. sequences) contribute one row per position.
"""

from __future__ import annotations

from torch import Tensor, nn

from natgrad.curvature.layers import LayerHandler, append_ones_column, register_layer_handler


class LinearHandler(LayerHandler):
    """Rows for nn.Linear: a_bar = [input; 1], g = d nll / d output."""

    def activation_rows(self, module: nn.Module, layer_input: Tensor) -> Tensor:
        rows = layer_input.reshape(-1, layer_input.shape[-1])
        return append_ones_column(rows) if module.bias is not None else rows

    def output_grad_rows(self, module: nn.Module, output_grad: Tensor) -> Tensor:
        return output_grad.reshape(-1, output_grad.shape[-1])


register_layer_handler(nn.Linear, LinearHandler())
