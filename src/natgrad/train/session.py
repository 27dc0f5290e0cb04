"""One training session: the model, optimizer, schedule, batches and data of a run, stepped.

Every loop that trains a workload (``natgrad train``'s runner, the interleaved harness of
benchmarks and experiments, the batch-scaling trials) builds a :class:`TrainingSession`
and calls :meth:`TrainingSession.step`; what each adds (a run folder, curves, a target)
lives with it. The session is a pure function of the resolved config: the model is
initialized from ``seed`` and the batch at step ``i`` depends only on (seed, i), so two
sessions of one config take the same steps, and a restored one continues exactly.

A session may be one of N data-parallel ranks (``world``): each steps on rows
[r m / N, (r + 1) m / N) of the same batch. A second-order optimizer (one registered
with ``second_order``: it steps with a closure) averages gradients and factors itself
(natgrad.distributed) and returns the whole batch's loss; any other optimizer steps a
DistributedDataParallel model and its loss is averaged over the ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from natgrad.distributed.comms import mean_over_ranks
from natgrad.distributed.coordinator import World
from natgrad.optim.optimizer_spec import BuildContext, OptimizerSpec, get_optimizer_spec
from natgrad.optim.schedules import build_schedule, split_schedule_hyperparameters
from natgrad.workloads import Workload, WorkloadData, get_workload

EVAL_CHUNK = 2048
_DATA_CACHE: dict[tuple, WorkloadData] = {}


def load_workload_data(workload: Workload, data_dir: str | None, device: str) -> WorkloadData:
    """Workload data as in-memory tensors on ``device``, loaded once per process (and per
    loader: a workload given another ``load_data`` gets its own data)."""
    key = (workload.name, workload.load_data, data_dir, device)
    if key not in _DATA_CACHE:
        data = workload.load_data(data_dir)
        for split in (data.train, data.val, data.test):
            split.inputs = split.inputs.to(device)
            split.targets = split.targets.to(device)
        _DATA_CACHE[key] = data
    return _DATA_CACHE[key]


class BatchSampler:
    """Mini-batches drawn without replacement, a fresh permutation per epoch.

    The batch at ``step`` depends only on (seed, step), which makes resuming exact.
    """

    def __init__(self, size: int, batch_size: int, seed: int, device: str) -> None:
        if batch_size > size:
            raise ValueError(f"batch_size {batch_size} exceeds the training set size {size}")
        self.size, self.batch_size, self.seed, self.device = size, batch_size, seed, device
        self.batches_per_epoch = size // batch_size
        self._epoch, self._permutation = -1, torch.empty(0, dtype=torch.long)

    def indices(self, step: int) -> Tensor:
        epoch, position = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutation = torch.randperm(self.size, generator=generator).to(self.device)
            self._epoch = epoch
        start = position * self.batch_size
        return self._permutation[start : start + self.batch_size]


@torch.no_grad()
def evaluate(model: nn.Module, workload: Workload, inputs: Tensor, targets: Tensor) -> dict:
    """Mean loss (and error rate for classifiers) over a whole split, in chunks."""
    was_training = model.training
    model.eval()
    loss_total, error_total = 0.0, 0
    for start in range(0, inputs.shape[0], EVAL_CHUNK):
        outputs = model(inputs[start : start + EVAL_CHUNK])
        chunk_targets = targets[start : start + EVAL_CHUNK]
        loss_total += float(workload.likelihood.nll(outputs, chunk_targets).sum())
        if workload.classification:
            error_total += int(workload.errors(outputs, chunk_targets))
    model.train(was_training)
    metrics = {"loss": loss_total / inputs.shape[0]}
    if workload.classification:
        metrics["error"] = error_total / inputs.shape[0]
    return metrics


def build_components(resolved: dict, workload: Workload, device: str):
    """Model (seeded), optimizer and learning-rate schedule for a resolved config."""
    torch.manual_seed(resolved["seed"])
    model = workload.build_model().to(device)
    spec = get_optimizer_spec(resolved["optimizer"])
    hyperparameters = resolved["hyperparameters"]
    _, schedule_hparams = split_schedule_hyperparameters(hyperparameters)
    context = BuildContext(likelihood=workload.likelihood_name, weight_decay=workload.weight_decay)
    optimizer = spec.build(model, context, hyperparameters)  # build leaves the schedule out
    scheduler = build_schedule(optimizer, resolved["steps"], **schedule_hparams)
    return model, spec, optimizer, scheduler


def train_step(
    model: nn.Module,
    workload: Workload,
    spec: OptimizerSpec,
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    targets: Tensor,
) -> Tensor:
    """One optimizer step on one batch; returns the batch loss (before the update)."""

    def closure():
        outputs = model(inputs)
        return workload.loss(outputs, targets), outputs

    return optimizer_step(optimizer, closure, spec.second_order)


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    closure: Callable[[], tuple[Tensor, Tensor]],
    second_order: bool,
) -> Tensor:
    """One step with ``closure() -> (loss, outputs)``: a second-order optimizer takes the
    closure (it needs the outputs), a first-order one the loss's gradient. Returns the
    loss before the update."""
    if second_order:
        return optimizer.step(closure)
    optimizer.zero_grad(set_to_none=True)
    loss = closure()[0]
    loss.backward()
    optimizer.step()
    return loss.detach()


@dataclass(frozen=True)
class DivergenceRule:
    """When a mini-batch loss ends a run: a non-finite loss always does; with ``threshold``,
    so does a loss above ``threshold * max(first loss, 1)`` when ``relative_to_first``, else
    above ``threshold`` itself (in per-example nats)."""

    threshold: float | None = None
    relative_to_first: bool = False

    def __post_init__(self) -> None:
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"threshold must be > 0 (or None), got {self.threshold!r}")

    def diverged(self, loss: float, first_loss: float | None = None) -> bool:
        """Whether ``loss`` is a divergence (``first_loss``: the session's first loss)."""
        if not math.isfinite(loss):
            return True
        if self.threshold is None:
            return False
        if not self.relative_to_first:
            return loss > self.threshold
        reference = loss if first_loss is None else first_loss
        return loss > self.threshold * max(reference, 1.0)


NON_FINITE = DivergenceRule()


def shard(indices: Tensor, world: World) -> Tensor:
    """This rank's equal share of a batch's indices: rows [r m / N, (r + 1) m / N)."""
    if world.size == 1:
        return indices
    per_rank = indices.shape[0] // world.size
    return indices[world.rank * per_rank : (world.rank + 1) * per_rank]


class TrainingSession:
    """The model, optimizer, schedule, sampler and data of one resolved run config.

    ``step(i)`` trains on the batch of step ``i`` and advances the schedule;
    ``evaluate(split)`` measures a split; ``diverged(loss)`` applies the session's
    :class:`DivergenceRule`. ``module`` is the plain model (what checkpoints hold),
    ``model`` the one stepped (DistributedDataParallel for a first-order optimizer on
    several ranks).
    """

    def __init__(
        self,
        resolved: dict,
        device: str = "cpu",
        divergence: DivergenceRule = NON_FINITE,
        world: World | None = None,
        workload: Workload | None = None,
    ) -> None:
        self.resolved, self.device, self.divergence = resolved, device, divergence
        self.world = world if world is not None else World()
        self.workload = workload if workload is not None else get_workload(resolved["workload"])
        self.data = load_workload_data(self.workload, resolved.get("data_dir"), device)
        self.module, self.spec, self.optimizer, self.scheduler = build_components(
            resolved, self.workload, device
        )
        self.model = self._stepped_model()
        self.sampler = BatchSampler(
            len(self.data.train), resolved["batch_size"], resolved["seed"], device
        )
        self.first_loss: float | None = None

    def _stepped_model(self) -> nn.Module:
        """DistributedDataParallel for a first-order optimizer on several ranks; a
        second-order optimizer averages gradients itself."""
        if self.world.size == 1 or self.spec.second_order:
            return self.module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(self.module)

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        """This rank's inputs and targets of the batch at ``step``."""
        indices = shard(self.sampler.indices(step), self.world)
        return self.data.train.inputs[indices], self.data.train.targets[indices]

    def step(self, step: int) -> Tensor:
        """Train on the batch of ``step``, then step the schedule; returns the batch loss
        (before the update, over the whole batch, left on the device)."""
        inputs, targets = self.batch(step)
        loss = train_step(self.model, self.workload, self.spec, self.optimizer, inputs, targets)
        if self.world.size > 1 and not self.spec.second_order:  # else: the batch's loss
            loss = mean_over_ranks(loss, "the loss all-reduce")
        self.scheduler.step()
        return loss.detach()

    def evaluate(self, split: str = "val", limit: int | None = None) -> dict:
        """Mean loss (and error) of the model over ``split`` (its first ``limit`` examples)."""
        data = getattr(self.data, split)
        inputs, targets = data.inputs[:limit], data.targets[:limit]
        return evaluate(self.module, self.workload, inputs, targets)

    def diverged(self, loss: float) -> bool:
        """Whether ``loss`` ends the session (the first loss seen is the reference)."""
        if self.first_loss is None:
            self.first_loss = loss
        return self.divergence.diverged(loss, self.first_loss)


__all__ = [
    "optimizer_step",
    "BatchSampler",
    "DivergenceRule",
    "NON_FINITE",
    "TrainingSession",
    "build_components",
    "evaluate",
    "load_workload_data",
    "shard",
    "train_step",
]
