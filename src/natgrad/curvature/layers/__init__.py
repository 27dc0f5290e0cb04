"""Per-layer-type Kronecker-factor code: one registry, one module per layer type.

A handler says, for one layer type, how the captured layer input becomes rows
``a_bar`` of the activation factor, how the gradient with respect to the layer output
becomes rows ``g`` of the gradient factor, and how the layer's parameter gradients map
to the matrix ``V`` (out x in[+1], bias as the last column, REFERENCES.md s.3) and
back. Supporting a new layer type means adding one module here that calls
:func:`register_layer_handler`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerHandler:
    """How one layer type feeds K-FAC; subclasses implement the four conversions.

    The factors built from the rows are A = a_bar^T a_bar / R (R rows) and
    G = g^T g / N (N examples), so that A ⊗ G is the Fisher block of the layer under
    the K-FAC (and, for shared weights, KFC) assumptions.
    """

    def supports(self, module: nn.Module) -> bool:
        """Whether this particular module instance can be handled (e.g. groups == 1)."""
        return True

    def activation_rows(self, module: nn.Module, layer_input: Tensor) -> Tensor:
        """Rows a_bar of shape (R, in[+1]) from the layer input (bias adds a column of ones)."""
        raise NotImplementedError

    def output_grad_rows(self, module: nn.Module, output_grad: Tensor) -> Tensor:
        """Rows g of shape (R, out) from the gradient with respect to the layer output."""
        raise NotImplementedError

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
    """The homogeneous coordinate: ``rows`` (R, in) -> (R, in + 1) with a last column of ones."""
    return torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)


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
