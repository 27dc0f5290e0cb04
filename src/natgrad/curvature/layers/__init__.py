"""Per-layer-type Kronecker-factor code: one registry, one module per layer type.

A handler says, for one layer type, how the captured layer input becomes
per-position vectors ``a_bar`` of the activation factor (shape (N, R, in[+1]): N
examples, R positions that share the weight, e.g. sequence positions or convolution
locations), how the gradient with respect to the layer output becomes per-position
vectors ``g`` of the gradient factor (N, R, out), and how the layer's parameter gradients map
to the matrix ``V`` (out x in[+1], bias as the last column, docs/REFERENCES.md s.3) and
back. Supporting a new layer type means adding one module here that calls
:func:`register_layer_handler`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerHandler:
    """How one layer type feeds K-FAC; subclasses implement the two position conversions.

    :mod:`natgrad.curvature.kronecker` turns the positions into factors ("expand":
    A = sum a_bar a_bar^T / (N R), G = sum g g^T / N over all examples and positions;
    "reduce": the same over per-example position means of a_bar and sums of g), so that
    A ⊗ G is the Fisher block of the layer under the K-FAC (and, for shared weights,
    KFC / Eschenhagen et al. 2023) assumptions.
    """

    def supports(self, module: nn.Module) -> bool:
        """Whether this particular module instance can be handled (e.g. groups == 1)."""
        return True

    def activation_positions(self, module: nn.Module, layer_input: Tensor) -> Tensor:
        """a_bar of shape (N, R, in[+1]) from the layer input (a bias appends a one)."""
        raise NotImplementedError

    def output_grad_positions(self, module: nn.Module, output_grad: Tensor) -> Tensor:
        """g of shape (N, R, out) from the gradient with respect to the layer output."""
        raise NotImplementedError

    def input_matrix_shape(self, module: nn.Module, call) -> tuple[int, int] | None:
        """(channels, locations) of the weight's input for doubly-factored statistics, if known.

        ``call`` is the :class:`~natgrad.curvature.capture.LayerCall` being turned into rows.
        """
        return None

    def activation_rows(self, module: nn.Module, layer_input: Tensor) -> Tensor:
        """All positions of all examples as rows (N * R, in[+1])."""
        positions = self.activation_positions(module, layer_input)
        return positions.reshape(-1, positions.shape[-1])

    def output_grad_rows(self, module: nn.Module, output_grad: Tensor) -> Tensor:
        """All positions of all examples as rows (N * R, out)."""
        positions = self.output_grad_positions(module, output_grad)
        return positions.reshape(-1, positions.shape[-1])

    def gradient_matrix(
        self, module: nn.Module, weight_grad: Tensor, bias_grad: Tensor | None
    ) -> Tensor:
        """Parameter gradients as one (out, in[+1]) matrix, bias as the last column."""
        matrix = weight_grad.reshape(weight_grad.shape[0], -1)
        if bias_grad is None:
            return matrix
        return append_bias_column(matrix, bias_grad)

    def split_matrix(self, module: nn.Module, matrix: Tensor) -> tuple[Tensor, Tensor | None]:
        """Inverse of :meth:`gradient_matrix`: (weight-shaped, bias-shaped or None)."""
        weight = module.weight
        if module.bias is None:
            return matrix.reshape(weight.shape), None
        return matrix[:, :-1].reshape(weight.shape), matrix[:, -1]


def append_bias_column(matrix: Tensor, bias: Tensor) -> Tensor:
    """Append ``bias`` (out,) as the last column of ``matrix`` (out, in)."""
    return torch.cat([matrix, bias.reshape(-1, 1)], dim=1)


def append_ones_column(rows: Tensor) -> Tensor:
    """The homogeneous coordinate: ``rows`` (..., in) -> (..., in + 1) with a last entry of one."""
    return torch.cat([rows, rows.new_ones(*rows.shape[:-1], 1)], dim=-1)


LAYER_HANDLERS: dict[type[nn.Module], LayerHandler] = {}


def register_layer_handler(layer_type: type[nn.Module], handler: LayerHandler) -> None:
    """Register ``handler`` for modules of ``layer_type`` (and its subclasses)."""
    LAYER_HANDLERS[layer_type] = handler


def get_layer_handler(module: nn.Module) -> LayerHandler | None:
    """The handler for ``module`` (by exact type, then by the nearest base class), or None."""
    for layer_type in type(module).__mro__:
        handler = LAYER_HANDLERS.get(layer_type)
        if handler is not None:
            return handler if handler.supports(module) else None
    return None


from natgrad.curvature.layers import conv2d, linear  # noqa: E402,F401  (registration)

__all__ = ["LayerHandler", "LAYER_HANDLERS", "register_layer_handler", "get_layer_handler"]
