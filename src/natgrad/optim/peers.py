"""The optimizers a user would pick instead of K-FAC, registered like natgrad's own.

- ``adamw``: ``torch.optim.AdamW`` (Loshchilov & Hutter 2019): Adam with decoupled
  weight decay, ``theta <- theta - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * theta)``.
- ``muon``: ``torch.optim.Muon`` (Jordan et al. 2024; Liu et al. 2025) on the weight
  matrices of the hidden layers, ``torch.optim.AdamW`` on everything else, as Muon's
  documentation prescribes, in one :class:`MuonAdamW` optimizer. Muon orthogonalizes the
  Nesterov momentum ``B`` by Newton-Schulz iterations, ``O = NS(B) ~ U V^T`` for
  ``B = U S V^T``, and steps ``theta <- theta - lr' O`` with ``lr'`` scaled per shape.
- ``soap`` and ``shampoo``: heavyball's ``SOAP`` (Vyas et al. 2024: Adam in the
  eigenbasis of Shampoo's Kronecker factors) and ``KLShampoo`` (Lin et al. 2025: Shampoo
  with KL-corrected factor accumulation; heavyball 3.2.1 ships no other Shampoo), from the
  optional extra ``pip install -e ".[peers]"``. heavyball compiles its kernels by default;
  natgrad runs it eagerly (``heavyball.utils.compile_mode = None``), so it runs on the CPU.

Every entry takes the runner's ``loss.backward(); optimizer.step()`` and works with
state_dict, resume and the learning-rate schedules.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from natgrad.optim.optimizer_spec import (
    BuildContext,
)

HEAVYBALL_REQUIREMENT = "heavyball==3.2.1"
INSTALL_PEERS = f'pip install -e ".[peers]" (or pip install {HEAVYBALL_REQUIREMENT})'
MUON_LR_ADJUSTMENTS = ("original", "match_rms_adamw")


class MissingPeerPackage(ValueError):
    """An optimizer whose optional package is not installed (one line: how to install)."""


# ---------------------------------------------------------------- validation


def _check_number(
    name: str, value: object, *, low: float, high: float | None = None, include_high: bool = True
) -> None:
    """ValueError naming ``name`` unless ``low <= value`` (and ``value <= high`` or
    ``< high``); NaN, infinities and non-numbers are refused."""
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    inside = number is not None and math.isfinite(number) and number >= low
    if inside and high is not None:
        inside = number <= high if include_high else number < high
    if not inside:
        if high is None:
            allowed = f">= {low:g}"
        else:
            allowed = f"in [{low:g}, {high:g}{']' if include_high else ')'}"
        raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")


def _check_adam(lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    _check_number("lr", lr, low=0.0)
    _check_number("beta1", beta1, low=0.0, high=1.0, include_high=False)
    _check_number("beta2", beta2, low=0.0, high=1.0, include_high=False)
    _check_number("eps", eps, low=0.0)
    _check_number("weight_decay", weight_decay, low=0.0)


# ---------------------------------------------------------------- AdamW


def build_adamw(model: nn.Module, ctx: BuildContext, kwargs: dict) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over every parameter of ``model``."""
    kwargs = dict(kwargs)
    beta1, beta2 = kwargs.pop("beta1"), kwargs.pop("beta2")
    _check_adam(kwargs["lr"], beta1, beta2, kwargs["eps"], kwargs["weight_decay"])
    return torch.optim.AdamW(model.parameters(), betas=(beta1, beta2), **kwargs)


# ---------------------------------------------------------------- Muon with AdamW

_LAYERS = (nn.Linear, nn.Embedding, nn.modules.conv._ConvNd)


def hidden_layer_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weights Muon is for: those of the hidden ``nn.Linear`` layers.

    Left out (for AdamW) are the input layer (the model's first Linear, convolution or
    embedding, in registration order, when it is a Linear: e.g. a transformer's patch
    embedding), the output layer (the last Linear), embeddings, convolutions (not 2-D),
    biases, norms and any parameter not owned by a Linear.
    """
    layers = [m for m in model.modules() if isinstance(m, _LAYERS)]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    excluded = {id(linears[-1])} if linears else set()
    if layers and isinstance(layers[0], nn.Linear):
        excluded.add(id(layers[0]))
    return [m.weight for m in linears if id(m) not in excluded and m.weight.requires_grad]


class MuonAdamW(torch.optim.Optimizer):
    """Muon on ``muon_params`` (2-D), AdamW on ``adamw_params``, as one optimizer.

    Two param groups, tagged ``"algorithm": "muon" | "adamw"``, carry each rule's
    settings, so learning-rate schedules scale both and ``state_dict`` holds both states.
    ``lr`` is Muon's learning rate and, unless ``adam_lr`` is given, AdamW's too: with
    ``adjust_lr_fn="match_rms_adamw"`` (Liu et al. 2025) Muon's update is rescaled by
    ``0.2 sqrt(max(A, B))`` to AdamW's update RMS, so one learning rate serves both.
    ``weight_decay`` is decoupled in both (``theta <- theta (1 - lr weight_decay)``).
    """

    def __init__(
        self,
        muon_params: Iterable[Tensor],
        adamw_params: Iterable[Tensor],
        lr: float = 1e-3,
        adam_lr: float | None = None,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        adjust_lr_fn: str = "match_rms_adamw",
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        _check_adam(lr, beta1, beta2, eps, weight_decay)
        if adam_lr is not None:
            _check_number("adam_lr", adam_lr, low=0.0)
        _check_number("momentum", momentum, low=0.0, high=1.0, include_high=False)
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 1:
            raise ValueError(f"ns_steps must be an integer >= 1, got {ns_steps!r}")
        if adjust_lr_fn not in MUON_LR_ADJUSTMENTS:
            raise ValueError(
                f"adjust_lr_fn must be one of {', '.join(MUON_LR_ADJUSTMENTS)}, "
                f"got {adjust_lr_fn!r}"
            )
        muon_params, adamw_params = list(muon_params), list(adamw_params)
        not_matrices = [tuple(p.shape) for p in muon_params if p.ndim != 2]
        if not_matrices:
            raise ValueError(f"Muon takes 2-D parameters only, got shapes {not_matrices}")
        self._rules: dict[str, torch.optim.Optimizer] = {}
        groups: list[dict] = []
        if muon_params:
            self._rules["muon"] = torch.optim.Muon(
                muon_params,
                lr=lr,
                weight_decay=weight_decay,
                momentum=momentum,
                nesterov=nesterov,
                ns_steps=ns_steps,
                adjust_lr_fn=adjust_lr_fn,
            )
        if adamw_params:
            self._rules["adamw"] = torch.optim.AdamW(
                adamw_params,
                lr=lr if adam_lr is None else adam_lr,
                betas=(beta1, beta2),
                eps=eps,
                weight_decay=weight_decay,
            )
        if not self._rules:
            raise ValueError("MuonAdamW got no parameters")
        for name, rule in self._rules.items():
            groups += [{**group, "algorithm": name} for group in rule.param_groups]
        super().__init__(groups, {})

    def add_param_group(self, param_group: dict) -> None:
        """Add a group to one rule: ``param_group["algorithm"]`` is "muon" (2-D
        parameters only) or "adamw"; unset settings take that rule's."""
        algorithm = param_group.get("algorithm")
        rules = getattr(self, "_rules", {})
        if algorithm not in rules:
            raise ValueError(
                f"a MuonAdamW param group needs 'algorithm' in {sorted(rules)}, got {algorithm!r}"
            )
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if algorithm == "muon" and any(p.ndim != 2 for p in params):
            raise ValueError("Muon takes 2-D parameters only")
        super().add_param_group({**rules[algorithm].defaults, **param_group, "params": params})

    @torch.no_grad()
    def step(self, closure=None):
        """One Muon step of the hidden matrices and one AdamW step of the rest."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for name, rule in self._rules.items():
            # the groups and state are this optimizer's (load_state_dict replaces them)
            rule.param_groups = [g for g in self.param_groups if g["algorithm"] == name]
            rule.state = self.state
            rule.step()
        return loss


def build_muon(model: nn.Module, ctx: BuildContext, kwargs: dict) -> MuonAdamW:
    """Muon on the hidden layers' weight matrices of ``model``, AdamW on the rest."""
    matrices = hidden_layer_matrices(model)
    chosen = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if id(p) not in chosen and p.requires_grad]
    return MuonAdamW(matrices, rest, **kwargs)


# ---------------------------------------------------------------- heavyball


def heavyball_available() -> bool:
    """Whether the optional package heavyball is installed."""
    return importlib.util.find_spec("heavyball") is not None


def _missing_heavyball(optimizer: str) -> str:
    return (
        f"optimizer {optimizer!r} needs the optional package heavyball; "
        f"install it with {INSTALL_PEERS}"
    )


def import_heavyball(optimizer: str):
    """heavyball, set to run eagerly; MissingPeerPackage (one line) if it is absent."""
    try:
        import heavyball
    except ImportError:
        raise MissingPeerPackage(_missing_heavyball(optimizer)) from None
    heavyball.utils.compile_mode = None  # no torch.compile: eager kernels, CPU included
    return heavyball


def heavyball_unavailable(optimizer: str):
    """Why ``optimizer`` cannot be built here (heavyball absent), or None."""

    def reason() -> str | None:
        return None if heavyball_available() else _missing_heavyball(optimizer)

    return reason


def heavyball_factory(optimizer: str, class_name: str):
    """A registry factory for heavyball's ``class_name`` (imported when it is built)."""

    def build(model: nn.Module, ctx: BuildContext, kwargs: dict) -> torch.optim.Optimizer:
        kwargs = dict(kwargs)
        beta1, beta2 = kwargs.pop("beta1"), kwargs.pop("beta2")
        _check_adam(kwargs["lr"], beta1, beta2, kwargs["eps"], kwargs["weight_decay"])
        _check_number("shampoo_beta", kwargs["shampoo_beta"], low=0.0, high=1.0, include_high=False)
        for name in ("precondition_frequency", "max_precond_dim"):
            value = kwargs[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        heavyball = import_heavyball(optimizer)
        optimizer_class = getattr(heavyball, class_name)
        return optimizer_class(
            model.parameters(), betas=(beta1, beta2), compile_step=False, **kwargs
        )

    return build


__all__ = [
    "HEAVYBALL_REQUIREMENT",
    "INSTALL_PEERS",
    "MissingPeerPackage",
    "MuonAdamW",
    "build_adamw",
    "build_muon",
    "heavyball_available",
    "heavyball_factory",
    "heavyball_unavailable",
    "hidden_layer_matrices",
    "import_heavyball",
]
