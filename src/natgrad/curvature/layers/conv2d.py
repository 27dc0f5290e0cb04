"""nn.Conv2d (groups = 1): one row per (example, output location), KFC (Grosse & Martens 2016).

a_bar_t is the im2col patch at output location t (C_in * kh * kw, +1 for a bias),
taken with torch.nn.functional.unfold so that its ordering matches
``weight.reshape(out, -1)``; g_t is the gradient at that location. With
A = sum_{n,t} a_bar a_bar^T / (N |T|) and G = sum_{n,t} g g^T / N, the product
A ⊗ G equals the KFC block |T| * Omega ⊗ Gamma (docs/REFERENCES.md s.4).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from natgrad.curvature.layers import LayerHandler, append_ones_column, register_layer_handler


class Conv2dHandler(LayerHandler):
    """Rows for nn.Conv2d with any stride, padding and dilation (groups must be 1)."""

    def supports(self, module: nn.Module) -> bool:
        return module.groups == 1 and isinstance(module.padding, tuple)

    def activation_positions(self, module: nn.Module, layer_input: Tensor) -> Tensor:
        if module.padding_mode != "zeros":
            layer_input = F.pad(
                layer_input, module._reversed_padding_repeated_twice, mode=module.padding_mode
            )
            padding = 0
        else:
            padding = module.padding
        patches = F.unfold(
            layer_input,
            module.kernel_size,
            dilation=module.dilation,
            padding=padding,
            stride=module.stride,
        )  # (N, C_in * kh * kw, L)
        positions = patches.transpose(1, 2)  # (N, L, C_in * kh * kw)
        return append_ones_column(positions) if module.bias is not None else positions

    def input_matrix_shape(self, module: nn.Module, call) -> tuple[int, int]:
        """(C_in, kh * kw): each patch is channels x kernel offsets, channel-major."""
        kh, kw = module.kernel_size
        return module.in_channels, kh * kw

    def output_grad_positions(self, module: nn.Module, output_grad: Tensor) -> Tensor:
        # (N, C_out, H, W) -> (N, H * W, C_out), locations ordered like the patches
        return output_grad.flatten(2).transpose(1, 2)


register_layer_handler(nn.Conv2d, Conv2dHandler())
