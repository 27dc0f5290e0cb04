"""Capture hooks: the root model input and, when asked, each tracked layer's input and output.

K-FAC needs, per layer, the input ``a`` (for A) and the gradient with respect to the
output ``s`` (for G). The hooks here only record tensors; turning them into factor
rows is the job of the layer handlers, and choosing which backward produces the
output gradients is the job of :mod:`natgrad.curvature.kronecker`. Capturing is off
by default, so forwards that do not feed statistics (evaluation, the main forward
when statistics come from a separate sub-batch) cost nothing extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from natgrad.curvature.layers import LayerHandler, get_layer_handler


@dataclass
class TrackedLayer:
    """A module that K-FAC preconditions, its qualified name, and its handler."""

    name: str
    module: nn.Module
    handler: LayerHandler
    layer_input: Tensor | None = None
    layer_output: Tensor | None = None

    @property
    def params(self) -> list[nn.Parameter]:
        """The weight, then the bias if there is one."""
        bias = self.module.bias
        return [self.module.weight] if bias is None else [self.module.weight, bias]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The wrapped network of a DistributedDataParallel (or DataParallel) wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def _is_excluded(name: str, exclude: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in exclude)


def find_tracked_layers(model: nn.Module, exclude: tuple[str, ...] = ()) -> list[TrackedLayer]:
    """Every module with a registered handler whose weight trains, except ``exclude``d names."""
    layers = []
    for name, module in unwrap_model(model).named_modules():
        handler = get_layer_handler(module)
        if handler is None or _is_excluded(name, exclude):
            continue
        if not module.weight.requires_grad:
            continue
        if module.bias is not None and not module.bias.requires_grad:
            continue
        layers.append(TrackedLayer(name, module, handler))
    return layers


@dataclass
class CurvatureCapture:
    """Forward hooks on the root model and the tracked layers.

    ``root_inputs`` always holds the positional arguments of the latest forward of the
    root model (kept by reference: no copy). Inside :meth:`capturing`, each tracked
    layer records its input (detached) and its output (attached to the graph, so that
    gradients with respect to it can be taken with torch.autograd.grad).
    """

    model: nn.Module
    layers: list[TrackedLayer]
    root_inputs: tuple = ()
    active: bool = False
    _handles: list[RemovableHandle] = field(default_factory=list)

    def __post_init__(self) -> None:
        root = unwrap_model(self.model)
        self._handles.append(root.register_forward_pre_hook(self._record_root))
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_hook(self._recorder(layer)))

    def _record_root(self, module: nn.Module, args: tuple) -> None:
        self.root_inputs = args

    def _recorder(self, layer: TrackedLayer):
        def record(module: nn.Module, args: tuple, output: Tensor) -> None:
            if self.active:
                layer.layer_input = args[0].detach()
                layer.layer_output = output

        return record

    @contextmanager
    def capturing(self) -> Iterator[None]:
        """Record layer inputs and outputs for forwards run inside this block."""
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def clear(self) -> None:
        """Drop the recorded layer tensors (frees the graph they hold)."""
        for layer in self.layers:
            layer.layer_input = None
            layer.layer_output = None

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
