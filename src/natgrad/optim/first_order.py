"""The seed's first-order optimizers, exactly as Choi et al. (2019, Table 1) define them.

SGD, Momentum, Nesterov, RMSProp, Adam and NAdam as ``torch.optim.Optimizer`` subclasses
(param groups, LR schedulers and ``state_dict`` work as usual). The update rules live in
``natgrad.optim.functional``; docs/REFERENCES.md section 1 lists them. They differ from
``torch.optim`` where the paper does: RMSProp starts ``v`` at 1 and keeps the learning
rate inside its momentum buffer, and Adam/NAdam add ``eps`` before the bias correction.
These forms make the inclusions SGD ⊆ Momentum ⊆ RMSProp, Momentum ⊆ Adam and
Nesterov ⊆ NAdam hold exactly or in a limit. Weight decay adds ``weight_decay * theta``
to the gradient (L2 regularization) before the rule is applied.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from natgrad.optim import functional

ParamsT = Iterable[Tensor] | Iterable[dict]


def _check_at_least_zero(name: str, value: float) -> None:
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _check_unit_interval(name: str, value: float, *, include_one: bool = True) -> None:
    inside = 0.0 <= value <= 1.0 if include_one else 0.0 <= value < 1.0
    if not inside:
        interval = "[0, 1]" if include_one else "[0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")


def _group_by_device_and_dtype(params: list[Tensor]) -> list[list[int]]:
    """Indices of ``params`` grouped so that each group can go to one foreach call."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for index, param in enumerate(params):
        groups[(param.device, param.dtype)].append(index)
    return list(groups.values())


class FirstOrderOptimizer(torch.optim.Optimizer):
    """Shared bookkeeping: gradients with weight decay, per-tensor step counts, foreach.

    Subclasses implement :meth:`_update`, which receives one group's parameters that
    have gradients (all on one device and dtype when ``foreach`` is on).
    """

    def __init__(self, params: ParamsT, defaults: dict) -> None:
        _check_at_least_zero("lr", defaults["lr"])
        _check_at_least_zero("weight_decay", defaults["weight_decay"])
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("weight_decay", 0.0)

    def _gradients(self, params: list[Tensor], weight_decay: float) -> list[Tensor]:
        """The gradients, plus ``weight_decay * theta`` (L2) when it is nonzero."""
        grads = [p.grad for p in params]
        if any(g.is_sparse for g in grads):
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        if weight_decay != 0.0:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        return grads

    def _advance_steps(self, params: list[Tensor]) -> list[int]:
        """Increment and return the per-tensor step counts (kept in state for resume)."""
        steps = []
        for param in params:
            state = self.state[param]
            state["step"] = state.get("step", 0) + 1
            steps.append(state["step"])
        return steps

    def _buffers(self, params: list[Tensor], name: str, fill: float) -> list[Tensor]:
        """The state buffer ``name`` of each parameter, created filled with ``fill``."""
        buffers = []
        for param in params:
            state = self.state[param]
            if name not in state:
                state[name] = torch.full_like(param, fill, memory_format=torch.preserve_format)
            buffers.append(state[name])
        return buffers

    def _update(
        self, group: dict, params: list[Tensor], grads: list[Tensor], foreach: bool
    ) -> None:
        """Apply the rule to ``params`` with hyperparameters from ``group``."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = self._gradients(params, group["weight_decay"])
            self._advance_steps(params)
            foreach = group["foreach"] is None or bool(group["foreach"])
            if not foreach:
                self._update(group, params, grads, False)
                continue
            for indices in _group_by_device_and_dtype(params):
                self._update(group, [params[i] for i in indices], [grads[i] for i in indices], True)
        return loss


class SGD(FirstOrderOptimizer):
    """Stochastic gradient descent: ``theta <- theta - lr * g``."""

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, foreach=foreach))

    def _update(self, group, params, grads, foreach):
        functional.sgd_update(params, grads, lr=group["lr"], foreach=foreach)


class Momentum(FirstOrderOptimizer):
    """Heavy-ball momentum: ``v <- gamma v + g``, ``theta <- theta - lr v`` (v_0 = 0)."""

    nesterov = False

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
    ) -> None:
        _check_unit_interval("momentum", momentum)
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=foreach)
        super().__init__(params, defaults)

    def _update(self, group, params, grads, foreach):
        functional.momentum_update(
            params,
            grads,
            self._buffers(params, "velocity", 0.0),
            lr=group["lr"],
            momentum=group["momentum"],
            nesterov=self.nesterov,
            foreach=foreach,
        )


class Nesterov(Momentum):
    """Nesterov momentum: ``v <- gamma v + g``, ``theta <- theta - lr (gamma v + g)``."""

    nesterov = True


class RMSProp(FirstOrderOptimizer):
    """RMSProp as in Choi et al.: ``v_0 = 1``, ``m <- gamma m + lr g / (sqrt(v) + eps)``.

    ``v <- rho v + (1 - rho) g^2`` and ``theta <- theta - m``. With ``rho = 1`` and
    ``eps = 0`` it is Momentum. ``eps_inside_sqrt=True`` uses ``sqrt(v + eps)`` instead.
    torch.optim.RMSprop's name ``alpha`` is accepted for ``rho`` (the update stays the
    one above).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        momentum: float = 0.9,
        rho: float = 0.9,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        eps_inside_sqrt: bool = False,
        foreach: bool | None = None,
        alpha: float | None = None,
    ) -> None:
        if alpha is not None:
            if rho != 0.9:
                raise ValueError("give rho or alpha (torch's name for rho), not both")
            rho = alpha
        _check_unit_interval("momentum", momentum)
        _check_unit_interval("rho", rho)
        _check_at_least_zero("eps", eps)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            rho=rho,
            eps=eps,
            weight_decay=weight_decay,
            eps_inside_sqrt=eps_inside_sqrt,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    def _update(self, group, params, grads, foreach):
        functional.rmsprop_update(
            params,
            grads,
            self._buffers(params, "square_average", 1.0),
            self._buffers(params, "momentum_buffer", 0.0),
            lr=group["lr"],
            momentum=group["momentum"],
            rho=group["rho"],
            eps=group["eps"],
            eps_inside_sqrt=group["eps_inside_sqrt"],
            foreach=foreach,
        )


class Adam(FirstOrderOptimizer):
    """Adam with ``eps`` before the bias correction (Choi et al. 2019, Table 1).

    ``m <- beta1 m + (1 - beta1) g``, ``v <- beta2 v + (1 - beta2) g^2``,
    ``theta <- theta - lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps)``.
    torch.optim.Adam's ``betas=(beta1, beta2)`` is accepted too (by keyword, or as the
    third positional argument, as torch orders them).
    """

    nesterov = False

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        betas: tuple[float, float] | None = None,
    ) -> None:
        if isinstance(beta1, (tuple, list)):  # torch's positional order: params, lr, betas
            betas, beta1 = beta1, 0.9
        if betas is not None:
            beta1, beta2 = _split_betas(betas, beta1, beta2)
        _check_unit_interval("beta1", beta1, include_one=False)
        _check_unit_interval("beta2", beta2)
        _check_at_least_zero("eps", eps)
        defaults = dict(
            lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, foreach=foreach
        )
        super().__init__(params, defaults)

    def _update(self, group, params, grads, foreach):
        functional.adam_update(
            params,
            grads,
            self._buffers(params, "first_moment", 0.0),
            self._buffers(params, "second_moment", 0.0),
            [self.state[p]["step"] for p in params],
            lr=group["lr"],
            beta1=group["beta1"],
            beta2=group["beta2"],
            eps=group["eps"],
            nesterov=self.nesterov,
            foreach=foreach,
        )


def _split_betas(betas, beta1: float, beta2: float) -> tuple[float, float]:
    """(beta1, beta2) from torch's ``betas``; ValueError if beta1/beta2 were also given."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    if (beta1, beta2) != (0.9, 0.999):
        raise ValueError("give betas or beta1/beta2, not both")
    return float(betas[0]), float(betas[1])


class NAdam(Adam):
    """NAdam: Adam with the numerator ``beta1 m + (1 - beta1) g`` (Dozat 2016; Choi et al.)."""

    nesterov = True
