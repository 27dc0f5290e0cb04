"""Optimizers: the seed's first-order rules and the second-order methods."""

from natgrad.optim import catalog  # noqa: F401  (registers every optimizer)
from natgrad.optim.first_order import SGD, Adam, Momentum, NAdam, Nesterov, RMSProp
from natgrad.optim.kfac import KFAC
from natgrad.optim.natural_gradient import NaturalGradient
from natgrad.optim.optimizer_spec import OPTIMIZERS, get_optimizer_spec, register_optimizer
from natgrad.optim.peers import MuonAdamW
from natgrad.optim.schedules import (
    SCHEDULE_HYPERPARAMETERS,
    build_schedule,
    split_schedule_hyperparameters,
)

__all__ = [
    "KFAC",
    "OPTIMIZERS",
    "SCHEDULE_HYPERPARAMETERS",
    "SGD",
    "Adam",
    "Momentum",
    "MuonAdamW",
    "NAdam",
    "NaturalGradient",
    "Nesterov",
    "RMSProp",
    "build_schedule",
    "get_optimizer_spec",
    "register_optimizer",
    "split_schedule_hyperparameters",
]
