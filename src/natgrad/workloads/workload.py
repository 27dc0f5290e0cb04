"""The workload registry: model + data + likelihood + metrics + default budget + target."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from natgrad.curvature.likelihoods import Likelihood, get_likelihood
from natgrad.registry import Registry


@dataclass
class Split:
    """Inputs and targets of one split, kept in memory as tensors."""

    inputs: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]


@dataclass
class WorkloadData:
    """Train, validation and held-out test splits."""

    train: Split
    val: Split
    test: Split


@dataclass(frozen=True)
class Workload:
    """A training problem: everything a runner needs besides the optimizer."""

    name: str
    description: str
    build_model: Callable[[], nn.Module]
    load_data: Callable[[str | None], WorkloadData]
    likelihood_name: str
    classification: bool
    batch_size: int
    steps: int
    weight_decay: float = 0.0
    target: dict[str, float] = field(default_factory=dict)
    eval_every: int = 100

    @property
    def likelihood(self) -> Likelihood:
        return get_likelihood(self.likelihood_name)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Batch mean of the per-example negative log-likelihood."""
        return self.likelihood.loss(outputs, targets)

    @torch.no_grad()
    def errors(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Number of misclassified examples (classifiers only)."""
        return (outputs.argmax(dim=-1) != targets).sum()


WORKLOADS: Registry[Workload] = Registry("workload")


def register_workload(workload: Workload) -> Workload:
    """Add ``workload`` to the registry; a name can be registered once."""
    return WORKLOADS.add(workload.name, workload)


def get_workload(name: str) -> Workload:
    """Look a workload up by name; ValueError lists the valid names."""
    return WORKLOADS.lookup(name)
