"""The closure contract of the second-order optimizers, checked in one place.

``closure()`` takes no arguments, runs ``outputs = model(x)``, computes the batch-mean
negative log-likelihood ``loss`` from them and returns ``(loss, outputs)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

CONTRACT = "return (loss, outputs) with outputs = model(x) and loss a scalar tensor"


def closure_result(
    closure: Callable[[], Any], owner: str, needs_grad: bool = True
) -> tuple[Tensor, Tensor]:
    """Call ``closure`` and return its (loss, outputs), or raise TypeError stating the contract.

    ``needs_grad=False`` for evaluations the optimizer itself runs under ``torch.no_grad``.
    """
    result = closure()
    problem = _contract_problem(result, needs_grad)
    if problem is not None:
        raise TypeError(f"{owner}.step: the closure {problem}; it must {CONTRACT}")
    loss, outputs = result
    return loss, outputs


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


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}" if value.dim() else "a bare loss tensor"
    return f"a {type(value).__name__}"


__all__ = ["CONTRACT", "closure_result"]
