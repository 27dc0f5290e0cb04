"""The closure contract of the second-order optimizers, checked in one place.

``closure()`` takes no arguments, runs ``outputs = model(x)``, computes the batch-mean
negative log-likelihood ``loss`` from them and returns ``(loss, outputs)``. The outputs
may be reshaped or sliced, but must be computed from the model's parameters: a tensor
made elsewhere (a fresh tensor, a detached copy) is refused, because the curvature
would describe it rather than the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, nn

CONTRACT = "return (loss, outputs) with outputs = model(x) and loss a scalar tensor"


def check_model_argument(model: Any, owner: str) -> None:
    """TypeError unless ``model`` is an nn.Module (a second-order optimizer needs the model
    itself, not its parameters)."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{owner} takes the model (an nn.Module), not {_describe(model)}: "
            f"{owner}(model, lr=...), not {owner}(model.parameters(), ...)"
        )


def closure_result(
    closure: Callable[[], Any],
    owner: str,
    needs_grad: bool = True,
    parameters: Iterable[Tensor] = (),
) -> tuple[Tensor, Tensor]:
    """Call ``closure`` and return its (loss, outputs), or raise TypeError stating the contract.

    ``needs_grad=False`` for evaluations the optimizer itself runs under ``torch.no_grad``;
    with ``parameters`` (the model's trainable ones) the outputs must depend on one of them.
    """
    result = closure()
    problem = _contract_problem(result, needs_grad)
    if problem is not None:
        raise TypeError(f"{owner}.step: the closure {problem}; it must {CONTRACT}")
    loss, outputs = result
    if needs_grad and parameters:
        check_outputs_made_by(outputs, parameters, owner)
    return loss, outputs


def check_outputs_made_by(outputs: Tensor, parameters: Iterable[Tensor], owner: str) -> None:
    """TypeError stating the contract unless ``outputs`` depend on one of ``parameters``."""
    problem = _outputs_problem(outputs, parameters)
    if problem is not None:
        raise TypeError(f"{owner}.step: the closure {problem}; it must {CONTRACT}")


def _contract_problem(result: Any, needs_grad: bool) -> str | None:
    if not isinstance(result, (tuple, list)):
        return f"returned {_describe(result)}"
    if len(result) != 2:
        return f"returned a {type(result).__name__} of {len(result)} items"
    loss, outputs = result
    if not isinstance(loss, Tensor) or not isinstance(outputs, Tensor):
        return f"returned ({_describe(loss)}, {_describe(outputs)})"
    if loss.dim() != 0:
        if outputs.dim() == 0:
            return "returned (outputs, loss) in the wrong order"
        return f"returned a loss of shape {tuple(loss.shape)}, not a scalar"
    if not needs_grad:
        return None
    if not loss.requires_grad:
        return "returned a loss that does not require grad (computed under no_grad or detached)"
    if not outputs.requires_grad:
        return "returned outputs that do not require grad (detached from the model)"
    return None


def _outputs_problem(outputs: Tensor, parameters: Iterable[Tensor]) -> str | None:
    """Why ``outputs`` were not computed from ``parameters`` (None if they were).

    Walks the autograd graph from ``outputs`` to the first parameter it reaches (on the CPU,
    no device sync; a model's last layer is usually found within a few nodes).
    """
    wanted = {id(p) for p in parameters}
    stack, seen = [outputs.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in wanted:
            return None
        stack.extend(next_node for next_node, _ in node.next_functions)
    return "returned outputs that do not depend on the model's parameters (not made by the model)"


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}" if value.dim() else "a bare loss tensor"
    return f"a {type(value).__name__}"


__all__ = ["CONTRACT", "check_model_argument", "check_outputs_made_by", "closure_result"]
