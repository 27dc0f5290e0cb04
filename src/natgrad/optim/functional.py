"""Update kernels for the first-order rules of Choi et al. (2019), Table 1.

Each kernel updates lists of parameters and their state buffers in place, either with
one loop over the tensors or with the multi-tensor ``torch._foreach_*`` ops (one launch
per list instead of one per tensor). Both paths compute the same arithmetic in the same
order, so they agree to rounding. The optimizer classes in ``first_order.py`` own the
bookkeeping (param groups, state, weight decay); these functions own the maths.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sgd_update(params: list[Tensor], grads: list[Tensor], *, lr: float, foreach: bool) -> None:
    """Plain gradient descent, ``theta <- theta - lr * g``."""
    if foreach:
        torch._foreach_add_(params, grads, alpha=-lr)
        return
    for param, grad in zip(params, grads, strict=True):
        param.add_(grad, alpha=-lr)


def momentum_update(
    params: list[Tensor],
    grads: list[Tensor],
    velocities: list[Tensor],
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    foreach: bool,
) -> None:
    """Heavy-ball or Nesterov momentum with an undamped buffer.

    ``v <- gamma * v + g``; heavy ball: ``theta <- theta - lr * v``;
    Nesterov: ``theta <- theta - lr * (gamma * v + g)`` (Choi et al. 2019, Table 1;
    equal to ``torch.optim.SGD`` with ``dampening=0``).
    """
    if foreach:
        torch._foreach_mul_(velocities, momentum)
        torch._foreach_add_(velocities, grads)
        if nesterov:
            directions = torch._foreach_add(grads, velocities, alpha=momentum)
        else:
            directions = velocities
        torch._foreach_add_(params, directions, alpha=-lr)
        return
    for param, grad, velocity in zip(params, grads, velocities, strict=True):
        velocity.mul_(momentum).add_(grad)
        direction = grad.add(velocity, alpha=momentum) if nesterov else velocity
        param.add_(direction, alpha=-lr)


def rmsprop_update(
    params: list[Tensor],
    grads: list[Tensor],
    square_averages: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float,
    momentum: float,
    rho: float,
    eps: float,
    eps_inside_sqrt: bool,
    foreach: bool,
) -> None:
    """RMSProp with the learning rate inside the momentum buffer (Choi et al. 2019).

    ``v <- rho * v + (1 - rho) * g^2``; ``m <- gamma * m + lr * g / (sqrt(v) + eps)``;
    ``theta <- theta - m``; with ``eps_inside_sqrt`` the denominator is ``sqrt(v + eps)``.
    The caller initializes ``v`` to ones and ``m`` to zeros.
    """
    if foreach:
        torch._foreach_mul_(square_averages, rho)
        torch._foreach_addcmul_(square_averages, grads, grads, value=1.0 - rho)
        if eps_inside_sqrt:
            denominators = torch._foreach_add(square_averages, eps)
            torch._foreach_sqrt_(denominators)
        else:
            denominators = torch._foreach_sqrt(square_averages)
            torch._foreach_add_(denominators, eps)
        torch._foreach_mul_(momentum_buffers, momentum)
        torch._foreach_addcdiv_(momentum_buffers, grads, denominators, value=lr)
        torch._foreach_sub_(params, momentum_buffers)
        return
    for param, grad, square_average, buffer in zip(
        params, grads, square_averages, momentum_buffers, strict=True
    ):
        square_average.mul_(rho).addcmul_(grad, grad, value=1.0 - rho)
        if eps_inside_sqrt:
            denominator = square_average.add(eps).sqrt_()
        else:
            denominator = square_average.sqrt().add_(eps)
        buffer.mul_(momentum).addcdiv_(grad, denominator, value=lr)
        param.sub_(buffer)


def adam_step_sizes(lr: float, beta1: float, beta2: float, steps: list[int]) -> list[float]:
    """Per-tensor step sizes ``lr * b_t`` with ``b_t = sqrt(1 - beta2^t) / (1 - beta1^t)``."""
    return [lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t) for t in steps]


def adam_update(
    params: list[Tensor],
    grads: list[Tensor],
    first_moments: list[Tensor],
    second_moments: list[Tensor],
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    nesterov: bool,
    foreach: bool,
) -> None:
    """Adam (Kingma & Ba 2015) or NAdam in the form of Choi et al. (2019), Table 1.

    ``m <- beta1 m + (1 - beta1) g``; ``v <- beta2 v + (1 - beta2) g^2``;
    ``theta <- theta - lr * b_t * n / (sqrt(v) + eps)`` with ``n = m`` (Adam) or
    ``n = beta1 m + (1 - beta1) g`` (NAdam), ``b_t = sqrt(1 - beta2^t) / (1 - beta1^t)``.
    ``eps`` is added before the bias correction, unlike ``torch.optim.Adam``.
    ``steps`` holds each tensor's step count t after this step (t >= 1).
    """
    step_sizes = adam_step_sizes(lr, beta1, beta2, steps)
    if foreach:
        torch._foreach_lerp_(first_moments, grads, 1.0 - beta1)
        torch._foreach_mul_(second_moments, beta2)
        torch._foreach_addcmul_(second_moments, grads, grads, value=1.0 - beta2)
        denominators = torch._foreach_sqrt(second_moments)
        torch._foreach_add_(denominators, eps)
        numerators = (
            torch._foreach_lerp(first_moments, grads, 1.0 - beta1) if nesterov else first_moments
        )
        torch._foreach_addcdiv_(params, numerators, denominators, [-s for s in step_sizes])
        return
    for param, grad, first, second, step_size in zip(
        params, grads, first_moments, second_moments, step_sizes, strict=True
    ):
        first.lerp_(grad, 1.0 - beta1)
        second.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        denominator = second.sqrt().add_(eps)
        numerator = first.lerp(grad, 1.0 - beta1) if nesterov else first
        param.addcdiv_(numerator, denominator, value=-step_size)
