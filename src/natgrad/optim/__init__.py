"""Optimizers: the seed's first-order rules and the second-order methods."""

from natgrad.optim.first_order import SGD, Adam, Momentum, NAdam, Nesterov, RMSProp
from natgrad.optim.registry import OPTIMIZERS, get_optimizer_spec, register_optimizer
from natgrad.optim.schedules import (
    SCHEDULE_HYPERPARAMETERS,
    build_schedule,
    split_schedule_hyperparameters,
)

# Second-order optimizers (natural_gradient, kfac) are imported here as they land.

__all__ = [
    "OPTIMIZERS",
    "SCHEDULE_HYPERPARAMETERS",
    "SGD",
    "Adam",
    "Momentum",
    "NAdam",
    "Nesterov",
    "RMSProp",
    "build_schedule",
    "get_optimizer_spec",
    "register_optimizer",
    "split_schedule_hyperparameters",
]
