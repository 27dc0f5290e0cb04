"""Workloads: model + data + likelihood + metrics + default budget + target, one registry."""

from natgrad.workloads import catalog as _catalog  # noqa: F401  (registers the workloads)
from natgrad.workloads.workload import (
    WORKLOADS,
    Split,
    Workload,
    WorkloadData,
    get_workload,
    register_workload,
)

__all__ = ["WORKLOADS", "Split", "Workload", "WorkloadData", "get_workload", "register_workload"]
