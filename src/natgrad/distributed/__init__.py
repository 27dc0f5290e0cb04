"""Distributed K-FAC on torch.distributed (Ba, Grosse & Martens 2017): who computes what.

The K-FAC front calls a :class:`~natgrad.distributed.coordinator.Coordinator` to
average gradients and factors over ranks, to refresh inverses on the rank each
layer is assigned to (or on a background thread, with bounded staleness) and to
precondition; :mod:`~natgrad.distributed.comms` moves the tensors,
:mod:`~natgrad.distributed.assignment` decides the owners, and
:mod:`~natgrad.distributed.refresh_schedule` decides when refreshed inverses are swapped in.
"""

from natgrad.distributed.comms import RankFailure
from natgrad.distributed.coordinator import (
    PRECONDITION_MODES,
    Coordinator,
    World,
    default_coordinator,
)

__all__ = ["Coordinator", "World", "RankFailure", "PRECONDITION_MODES", "default_coordinator"]
