"""The registered optimizers, in one place: the names the CLI, tuning and studies use.

Each entry names a constructor, describes its hyperparameters and takes their defaults
from the constructor's signature (``inspect.signature``). Where the command line's
default is not the constructor's (a learning rate the constructor leaves to the caller,
the damping that mini-batch curvature needs, the workload's weight decay), the entry
declares it in a named preset, as natgrad.optim.kfac_config does for K-FAC, so that the
optimizer contract can check every other default against the signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import torch
from torch import nn

from natgrad.optim.first_order import SGD, Adam, Momentum, NAdam, Nesterov, RMSProp
from natgrad.optim.kfac import KFAC
from natgrad.optim.kfac_config import OPTION_HELP, PLAIN_DEFAULTS
from natgrad.optim.kfac_config import PRESETS as KFAC_PRESETS
from natgrad.optim.natural_gradient import DENSE_AUTO_LIMIT, NaturalGradient
from natgrad.optim.optimizer_spec import (
    BuildContext,
    Hyperparameter,
    HyperValue,
    OptimizerFactory,
    OptimizerSpec,
    register_optimizer,
)
from natgrad.optim.peers import (
    MuonAdamW,
    build_adamw,
    build_muon,
    heavyball_factory,
    heavyball_unavailable,
)
from natgrad.optim.schedules import SCHEDULE_HYPERPARAMETERS

# weight_decay None: the workload's default (OptimizerSpec.build fills it in)
WORKLOAD_WEIGHT_DECAY: dict[str, HyperValue] = {"weight_decay": None}

# The command line's settings where they are not the constructor's defaults.
PRESETS: dict[str, dict[str, HyperValue]] = {
    # the first-order rules leave lr to the caller; these are Choi et al.'s starting points
    "sgd": {"lr": 0.1, **WORKLOAD_WEIGHT_DECAY},
    "momentum": {"lr": 0.1, **WORKLOAD_WEIGHT_DECAY},
    "nesterov": {"lr": 0.1, **WORKLOAD_WEIGHT_DECAY},
    "rmsprop": {"lr": 1e-3, **WORKLOAD_WEIGHT_DECAY},
    "adam": {"lr": 1e-3, **WORKLOAD_WEIGHT_DECAY},
    "nadam": {"lr": 1e-3, **WORKLOAD_WEIGHT_DECAY},
    # K-FAC's measured configurations (natgrad.optim.kfac_config.PRESETS)
    **{name: {**values, **WORKLOAD_WEIGHT_DECAY} for name, values in KFAC_PRESETS.items()},
    # mini-batch curvature needs a larger damping than NaturalGradient's 1e-3 (full-batch
    # problems), and "auto" picks CG above DENSE_AUTO_LIMIT parameters instead of failing
    # to store a dense matrix
    "ngd": {"damping": 0.1, "solver": "auto", **WORKLOAD_WEIGHT_DECAY},
    # torch.optim.AdamW takes betas=(beta1, beta2)
    "adamw": {"beta1": 0.9, "beta2": 0.999},
    "muon": {},
    # heavyball is optional (its signatures are not always importable): every default is
    # the command line's
    **{
        name: {
            "lr": 3e-3,
            "beta1": 0.9,
            "beta2": 0.95,
            "shampoo_beta": 0.95,
            "precondition_frequency": 2,
            "max_precond_dim": 2048,
            "eps": 1e-8,
            "weight_decay": 0.01,
        }
        for name in ("soap", "shampoo")
    },
}


def signature_defaults(constructor: Callable | None) -> dict[str, HyperValue]:
    """The keyword defaults of ``constructor`` (none for None)."""
    if constructor is None:
        return {}
    parameters = inspect.signature(constructor).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def hyperparameters(
    constructor: Callable | None,
    preset: Mapping[str, HyperValue],
    help_by_name: Mapping[str, str],
    nullable: tuple[str, ...] = (),
) -> tuple[Hyperparameter, ...]:
    """One Hyperparameter per entry of ``help_by_name`` (in its order): the preset's value,
    else the constructor's default; then the schedule's hyperparameters."""
    values = {**signature_defaults(constructor), **preset}
    missing = [name for name in help_by_name if name not in values]
    if missing:
        raise ValueError(f"no default for {', '.join(missing)}: declare it in the preset")
    own = tuple(
        Hyperparameter(name, values[name], text, nullable=name in nullable)
        for name, text in help_by_name.items()
    )
    return own + SCHEDULE_HYPERPARAMETERS


def register(
    name: str,
    description: str,
    factory: OptimizerFactory,
    constructor: Callable | None,
    help_by_name: Mapping[str, str],
    *,
    nullable: tuple[str, ...] = (),
    **options,
) -> OptimizerSpec:
    """Register optimizer ``name`` with the defaults of ``constructor`` and PRESETS[name]."""
    preset = PRESETS[name]
    return register_optimizer(
        OptimizerSpec(
            name=name,
            description=description,
            factory=factory,
            hyperparameters=hyperparameters(constructor, preset, help_by_name, nullable),
            preset=preset,
            **options,
        )
    )


# ---------------------------------------------------------------- first-order rules


def parameters_factory(optimizer_class: type[torch.optim.Optimizer]) -> OptimizerFactory:
    """A registry factory over ``model.parameters()``."""

    def build(model: nn.Module, ctx: BuildContext, kwargs: dict) -> torch.optim.Optimizer:
        return optimizer_class(model.parameters(), **kwargs)

    return build


_LR = {"lr": "learning rate >= 0"}
_MOMENTUM = {"momentum": "momentum gamma in [0, 1]"}
_EPS = {"eps": "denominator offset eps >= 0"}
_BETAS = {
    "beta1": "first-moment decay beta1 in [0, 1)",
    "beta2": "second-moment decay beta2 in [0, 1]",
}
_L2 = {"weight_decay": "L2 coefficient added to the gradient (>= 0; None = workload default)"}
_RMSPROP = {
    **_LR,
    **_MOMENTUM,
    "rho": "second-moment decay rho in [0, 1]",
    **_EPS,
    "eps_inside_sqrt": "use sqrt(v + eps) instead of sqrt(v) + eps",
}

for _name, _class, _description, _help in (
    ("sgd", SGD, "SGD: theta -= lr g", _LR),
    ("momentum", Momentum, "heavy-ball momentum (Choi et al.)", {**_LR, **_MOMENTUM}),
    ("nesterov", Nesterov, "Nesterov momentum (Choi et al.)", {**_LR, **_MOMENTUM}),
    (
        "rmsprop",
        RMSProp,
        "RMSProp with v_0 = 1 and lr in the momentum buffer (Choi et al.)",
        _RMSPROP,
    ),
    ("adam", Adam, "Adam, eps before bias correction", {**_LR, **_BETAS, **_EPS}),
    ("nadam", NAdam, "NAdam, eps before bias correction", {**_LR, **_BETAS, **_EPS}),
):
    register(_name, _description, parameters_factory(_class), _class, {**_help, **_L2})


# ---------------------------------------------------------------- K-FAC


def build_kfac(model: nn.Module, ctx: BuildContext, kwargs: dict) -> KFAC:
    """Registry factory: K-FAC with the workload's likelihood."""
    return KFAC(model, likelihood=ctx.likelihood, **kwargs)


_KFAC_DESCRIPTIONS = {
    "kfac": "K-FAC with factored Tikhonov damping (Martens & Grosse 2015)",
    "kfac_adaptive": "K-FAC with the quadratic-model step and Levenberg-Marquardt damping",
    "ekfac": "EKFAC: K-FAC's eigenbasis with a per-example diagonal scale (George et al. 2018)",
    "kfac_eigen_adam": "Adam in K-FAC's eigenbasis, the K-FAC analogue of SOAP (Vyas et al. 2024)",
}
_KFAC_HELP = {option: OPTION_HELP[option] for option in ("lr", *PLAIN_DEFAULTS)}
for _name in KFAC_PRESETS:
    register(
        _name,
        _KFAC_DESCRIPTIONS[_name],
        build_kfac,
        KFAC,
        _KFAC_HELP,
        nullable=("kl_clip",),
        second_order=True,
    )


# ---------------------------------------------------------------- exact natural gradient


def build_natural_gradient(model: nn.Module, ctx: BuildContext, kwargs: dict) -> NaturalGradient:
    """Registry factory: NaturalGradient with the workload's likelihood."""
    return NaturalGradient(model, likelihood=ctx.likelihood, **kwargs)


register(
    "ngd",
    "exact natural gradient / damped Newton: theta -= lr (C + lambda I)^-1 g",
    build_natural_gradient,
    NaturalGradient,
    {
        "lr": "step size >= 0 (1 = full natural-gradient step)",
        "damping": "Tikhonov damping lambda >= 0 (mini-batch curvature needs a large one)",
        "fisher": "Fisher kind: exact | mc | empirical",
        "curvature": "curvature matrix: fisher | hessian",
        "solver": f"dense | cg | auto (dense up to {DENSE_AUTO_LIMIT} params)",
        "momentum": "momentum mu in [0, 1]",
        "mc_samples": "sampled targets per example for fisher=mc (int >= 1)",
        "cg_tol": "CG relative residual tolerance > 0",
        "cg_max_iter": "CG iteration cap (int >= 1)",
        "weight_decay": "L2 coefficient eta >= 0 added to the gradient and the damping "
        "(None = workload default)",
    },
    second_order=True,
    data_parallel=False,  # its dense curvature is of the local batch only
)


# ---------------------------------------------------------------- peers

_DECOUPLED_DECAY = {"weight_decay": "decoupled weight decay: theta *= 1 - lr * weight_decay (>= 0)"}
register(
    "adamw",
    "torch.optim.AdamW (decoupled weight decay)",
    build_adamw,
    torch.optim.AdamW,
    {
        **_LR,
        "beta1": _BETAS["beta1"],
        "beta2": "second-moment decay in [0, 1)",
        **_EPS,
        **_DECOUPLED_DECAY,
    },
)
register(
    "muon",
    "torch.optim.Muon on hidden-layer weight matrices, AdamW on the rest",
    build_muon,
    MuonAdamW,
    {
        "lr": "learning rate of both rules >= 0 (Muon's is rescaled by shape)",
        "adam_lr": "AdamW's learning rate >= 0 (None = lr)",
        "momentum": "Muon's Nesterov momentum in [0, 1)",
        "nesterov": "Nesterov momentum in Muon",
        "ns_steps": "Newton-Schulz iterations (int >= 1)",
        "adjust_lr_fn": "Muon's lr by shape: original | match_rms_adamw",
        "beta1": _BETAS["beta1"],
        "beta2": "AdamW's second-moment decay in [0, 1)",
        **_EPS,
        **_DECOUPLED_DECAY,
    },
    nullable=("adam_lr",),
)
_HEAVYBALL_HELP = {
    **_LR,
    "beta1": _BETAS["beta1"],
    "beta2": "second-moment decay in [0, 1)",
    "shampoo_beta": "decay of the Kronecker factors in [0, 1)",
    "precondition_frequency": "steps between eigenbasis updates (int >= 1)",
    "max_precond_dim": "larger dimensions are not preconditioned (int)",
    **_EPS,
    **_DECOUPLED_DECAY,
}
for _name, _class_name, _description in (
    ("soap", "SOAP", "SOAP (Vyas et al. 2024) from heavyball, eager; needs the peers extra"),
    (
        "shampoo",
        "KLShampoo",
        "KL-Shampoo (Lin et al. 2025) from heavyball, eager; needs the peers extra",
    ),
):
    register(
        _name,
        _description,
        heavyball_factory(_name, _class_name),
        None,  # heavyball is optional: PRESETS holds every default
        _HEAVYBALL_HELP,
        unavailable=heavyball_unavailable(_name),
    )

__all__ = [
    "PRESETS",
    "WORKLOAD_WEIGHT_DECAY",
    "build_kfac",
    "build_natural_gradient",
    "hyperparameters",
    "parameters_factory",
    "signature_defaults",
]
