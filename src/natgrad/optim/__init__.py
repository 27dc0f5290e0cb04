"""Optimizers: the seed's first-order rules and the second-order methods."""

from natgrad.optim.registry import OPTIMIZERS, get_optimizer_spec, register_optimizer

__all__ = ["OPTIMIZERS", "get_optimizer_spec", "register_optimizer"]
