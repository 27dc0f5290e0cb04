"""Which layers K-FAC tracks, and capture hooks that record every call of them.

K-FAC needs, per layer, the input ``a`` (for A) and the gradient with respect to the
output ``s`` (for G). A *tracked layer* is one set of parameters (a weight and its
bias) with every module that uses it: usually one module, several when modules share
(tie) their parameters. The hooks record each call of each of those modules (a module
called twice in one forward gives two calls), so the statistics can treat shared uses
as Eschenhagen et al. (2023) do. Hooks only record tensors; turning them into factor
rows is the job of the layer handlers, and choosing which backward produces the output
gradients is the job of :mod:`natgrad.curvature.kronecker`. Capturing is off by
default, so forwards that do not feed statistics cost nothing extra.

Not tracked (their parameters go to an optimizer's first-order fallback), each with
the reason in :attr:`TrackingPlan.untracked`:

- modules without a registered handler (norm layers, embeddings, bare parameters);
- projections inside ``nn.MultiheadAttention`` (it calls them through the functional
  API, so module hooks never see their inputs);
- modules whose weight is also used by a module of another kind (a Linear head tied to
  an Embedding), or that share a weight but not its bias.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from natgrad.curvature.doubly_factored import check_matrix_shape
from natgrad.curvature.layers import LayerHandler, get_layer_handler

SHARING_MODES = ("expand", "reduce")


@dataclass
class LayerCall:
    """One call of a tracked module: its input (detached) and output (attached to the graph)."""

    module: nn.Module
    layer_input: Tensor
    layer_output: Tensor
    flattened_from: tuple[int, ...] | None = None  # the map's shape if nn.Flatten made the input


@dataclass
class TrackedLayer:
    """A weight (and bias) that K-FAC preconditions, the modules that use it, and their handler.

    ``sharing`` says how several uses in one example (calls, sequence positions,
    convolution locations) enter the factors: "expand" (extra rows) or "reduce"
    (summed output gradients, averaged inputs). ``doubly_factored``: "off", "on" (the
    input is a channels x locations map: ``matrix_shape``, or found by the handler) or
    "auto" (doubly factored when the handler finds the shape, full K-FAC otherwise).
    """

    name: str
    modules: list[nn.Module]
    handler: LayerHandler
    sharing: str = "expand"
    calls: list[LayerCall] = field(default_factory=list)
    doubly_factored: str = "off"
    matrix_shape: tuple[int, int] | None = None
    output_blocks: int = 1  # G in this many diagonal blocks (natgrad.precondition.output_blocks)

    def input_matrix_shape(self, call: LayerCall) -> tuple[int, int] | None:
        """(channels, locations) of the weight's input when doubly factored, else None."""
        if self.doubly_factored == "off":
            return None
        shape = self.matrix_shape or self.handler.input_matrix_shape(call.module, call)
        if shape is None:
            if self.doubly_factored == "on":
                raise ValueError(
                    f"doubly-factored layer {self.name}: the channels x locations shape of its "
                    "input is unknown (no nn.Flatten of a (N, C, ...) map feeds it); give it "
                    f"as doubly_factored={{{self.name!r}: (channels, locations)}}"
                )
            return None
        in_features = self.weight.reshape(self.weight.shape[0], -1).shape[1]
        return check_matrix_shape(self.name, in_features, shape)

    @property
    def module(self) -> nn.Module:
        """The first module using the parameters (they all hold the same weight and bias)."""
        return self.modules[0]

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def bias(self) -> nn.Parameter | None:
        return self.module.bias

    @property
    def params(self) -> list[nn.Parameter]:
        """The weight, then the bias if there is one."""
        return [self.weight] if self.bias is None else [self.weight, self.bias]


@dataclass
class TrackingPlan:
    """The tracked layers of a model and, for every other module holding trainable
    parameters, its type and why it is not tracked (qualified name -> "Type" when it has
    no registered handler, "Type: reason" otherwise)."""

    layers: list[TrackedLayer]
    untracked: dict[str, str]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The wrapped network of a DistributedDataParallel (or DataParallel) wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model``, or a module it wraps (DistributedDataParallel), is the wrapper that
    ``torch.compile`` returns. Without ``torch._dynamo`` loaded nothing can be compiled."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    compiled_type = getattr(eval_frame, "OptimizedModule", None)
    while compiled_type is not None:
        if isinstance(model, compiled_type):
            return True
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return False
        model = inner
    return False


def from_compiled_graph(tensor: Tensor) -> bool:
    """Whether ``tensor`` is an output of a graph compiled by AOTAutograd (torch.compile
    with the aot_eager or inductor backends): the outputs of one compiled graph are siblings,
    so none of them gets a gradient through another."""
    return type(tensor.grad_fn).__name__.startswith("CompiledFunction")


def _is_excluded(name: str, exclude: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in exclude)


def _trainable_direct_params(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def _attention_children(model: nn.Module) -> set[int]:
    """Modules inside nn.MultiheadAttention, which calls them functionally (no hooks fire)."""
    inside: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            inside.update(id(child) for child in module.modules() if child is not module)
    return inside


def _without_handler(module: nn.Module) -> str:
    """ "Type" for a module no handler covers; attention also names its own weights."""
    kind = type(module).__name__
    if isinstance(module, nn.MultiheadAttention):
        names = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        return f"{kind}: {', '.join(names)} used functionally"
    return kind


def _candidate_reason(name: str, module: nn.Module, exclude, attention) -> str | None:
    """Why ``module`` (which has a handler) cannot be tracked, or None if it can."""
    if _is_excluded(name, exclude):
        return "excluded"
    if id(module) in attention:
        return "inside nn.MultiheadAttention (called functionally, hooks see no input)"
    if not module.weight.requires_grad or (
        module.bias is not None and not module.bias.requires_grad
    ):
        return "partly frozen"
    return None


def plan_tracking(
    model: nn.Module, exclude: tuple[str, ...] = (), sharing: str = "expand"
) -> TrackingPlan:
    """Group the modules with a registered handler by their weight; report the rest.

    Modules sharing one weight become one tracked layer if they have the same type and
    the same bias (or none), and no other module holds either parameter.
    """
    root = unwrap_model(model)
    attention = _attention_children(root)
    groups: dict[int, list[tuple[str, nn.Module]]] = {}
    untracked: dict[str, str] = {}
    owners: dict[int, set[int]] = {}  # parameter -> modules holding it directly
    for _, module in root.named_modules(remove_duplicate=False):
        for p in _trainable_direct_params(module):
            owners.setdefault(id(p), set()).add(id(module))
    seen: set[int] = set()
    for name, module in root.named_modules():
        if id(module) in seen:
            continue
        seen.add(id(module))
        handler = get_layer_handler(module)
        if handler is None:
            if _trainable_direct_params(module):
                untracked[name or "(root)"] = _without_handler(module)
            continue
        reason = _candidate_reason(name, module, exclude, attention)
        if reason is not None:
            untracked[name] = f"{type(module).__name__}: {reason}"
            continue
        groups.setdefault(id(module.weight), []).append((name, module))
    layers = []
    for members in groups.values():
        reason = _sharing_problem(members, owners)
        if reason is not None:
            for name, module in members:
                untracked[name] = f"{type(module).__name__}: {reason}"
            continue
        modules = [module for _, module in members]
        layers.append(
            TrackedLayer(
                "+".join(name for name, _ in members),
                modules,
                get_layer_handler(modules[0]),
                sharing,
            )
        )
    return TrackingPlan(layers, untracked)


def _sharing_problem(members: list[tuple[str, nn.Module]], owners: dict) -> str | None:
    """Why modules sharing a weight cannot form one tracked layer (None if they can)."""
    first = members[0][1]
    if any(type(module) is not type(first) for _, module in members):
        return "shares its weight with a module of another type"
    if any(module.bias is not first.bias for _, module in members):
        return "shares its weight but not its bias with " + ", ".join(n for n, _ in members)
    member_ids = {id(module) for _, module in members}
    params = [first.weight] if first.bias is None else [first.weight, first.bias]
    if any(owners.get(id(p), set()) - member_ids for p in params):
        return "its weight or bias is also held by a module that K-FAC does not track"
    return None


def find_tracked_layers(model: nn.Module, exclude: tuple[str, ...] = ()) -> list[TrackedLayer]:
    """The tracked layers of :func:`plan_tracking`."""
    return plan_tracking(model, exclude).layers


@dataclass
class CurvatureCapture:
    """Forward hooks on the root model and on every module of the tracked layers.

    ``root_inputs`` always holds the positional arguments of the latest forward of the
    root model (kept by reference: no copy). Inside :meth:`capturing`, each call of a
    tracked module appends a :class:`LayerCall` to its layer.
    """

    model: nn.Module
    layers: list[TrackedLayer]
    root_inputs: tuple = ()
    active: bool = False
    _handles: list[RemovableHandle] = field(default_factory=list)
    _flattened: dict[int, tuple[Tensor, tuple[int, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        root = unwrap_model(self.model)
        self._handles.append(root.register_forward_pre_hook(self._record_root))
        for layer in self.layers:
            for module in layer.modules:
                self._handles.append(module.register_forward_hook(self._recorder(layer)))
        if any(layer.doubly_factored != "off" for layer in self.layers):
            for module in root.modules():
                if isinstance(module, nn.Flatten):
                    self._handles.append(module.register_forward_hook(self._record_flatten))

    def _record_root(self, module: nn.Module, args: tuple) -> None:
        self.root_inputs = args

    def _record_flatten(self, module: nn.Flatten, args: tuple, output: Tensor) -> None:
        """Remember the map an nn.Flatten of all but the batch dimension flattened, by its
        output tensor."""
        whole = module.start_dim == 1 and module.end_dim in (-1, args[0].dim() - 1)
        if self.active and whole and args[0].dim() >= 3:
            self._flattened[id(output)] = (output, tuple(args[0].shape[1:]))

    def _recorder(self, layer: TrackedLayer):
        def record(module: nn.Module, args: tuple, output: Tensor) -> None:
            if self.active and torch.is_grad_enabled():
                entry = self._flattened.get(id(args[0]))
                source = entry[1] if entry is not None and entry[0] is args[0] else None
                layer.calls.append(LayerCall(module, args[0].detach(), output, source))

        return record

    @contextmanager
    def capturing(self) -> Iterator[None]:
        """Record the calls of tracked modules in forwards run inside this block."""
        self.clear()
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def clear(self) -> None:
        """Drop the recorded calls (frees the graph they hold)."""
        self._flattened.clear()
        for layer in self.layers:
            layer.calls = []

    def remove(self) -> None:
        """Remove every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def buffers_restored(model: nn.Module) -> Iterator[None]:
    """Run extra forwards without a trace in the model's buffers (e.g. BatchNorm's running
    statistics and num_batches_tracked): they are copied before and written back after."""
    saved = [(buffer, buffer.clone()) for buffer in unwrap_model(model).buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)


__all__ = [
    "SHARING_MODES",
    "LayerCall",
    "TrackedLayer",
    "TrackingPlan",
    "CurvatureCapture",
    "plan_tracking",
    "find_tracked_layers",
    "unwrap_model",
    "is_compiled",
    "from_compiled_graph",
    "buffers_restored",
]
