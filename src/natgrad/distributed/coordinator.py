"""Who computes what in a K-FAC step, and which tensors cross ranks.

K-FAC calls its coordinator at four points of a step and leaves the maths alone:

1. ``reduce_gradients``: gradients averaged over ranks (unless DistributedDataParallel
   already did it), weighted by each rank's examples, with the batch loss;
2. ``reduce_factors``: the batch factors A, G averaged over ranks the same way before
   they enter the moving averages, so every rank holds the factors of the whole batch;
3. ``refresh_inverses``: the refreshes that are due, each layer on the rank assigned to
   it (longest processing time first), now or on the asynchronous inverter, and the
   results sent to the ranks that need them;
4. ``precondition``: every rank applies every layer's inverse ("broadcast", the
   default), or each rank only its own layers and the results are gathered
   ("gather", KAISA's trade: no inverse traffic and only the owned inverses in memory,
   for a gradient-sized message every step).

``reduce_mean`` averages the other per-rank quantities (the damping rule's losses, the
quadratic model's Fisher products). A rank's ``role`` can limit what its mini-batch
feeds: gradients only, or statistics only (the statistics workers of Ba et al. 2017,
whose factors from separate mini-batches are merged into the running averages). With
one process and no asynchronous inverter every call is the plain local computation of
K-FAC; this is the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from natgrad.distributed.assignment import assign_longest_first
from natgrad.distributed.comms import (
    BUCKET_BYTES,
    all_reduce_sum,
    broadcast_each,
    collective,
    symmetric_from_upper,
    upper_triangle,
)
from natgrad.distributed.refresh_schedule import Decompositions, RefreshSchedule, decompose_all

PRECONDITION_MODES = ("broadcast", "gather")
ROLES = ("both", "gradients", "statistics")


@dataclass(frozen=True)
class World:
    """The ranks taking part: this process's rank, their number and the process group."""

    rank: int = 0
    size: int = 1
    group: object = None

    @classmethod
    def from_process_group(cls, group=None) -> World:
        """The default (or given) initialized process group of torch.distributed."""
        if not dist.is_available() or not dist.is_initialized():
            return cls()
        return cls(dist.get_rank(group), dist.get_world_size(group), group)


class Coordinator:
    """Data-parallel K-FAC over ``world`` (one process by default).

    Args:
        world: the ranks (default: the initialized process group, else one process).
        precondition: "broadcast" (every rank holds every inverse; traffic only at
            inverse steps) or "gather" (each rank inverts and applies its own layers;
            the preconditioned gradients are gathered every step).
        staleness: None for synchronous inverses; an integer s >= 0 computes refreshes
            on a background thread and installs them s steps after they were due
            (s = 0 is bit-for-bit the synchronous result).
        bucket_bytes: the largest buffer of one all-reduce.
        role: what this rank's mini-batch feeds: "both" (default), "gradients" (its
            factors get weight 0) or "statistics" (its gradients and losses get weight
            0: a statistics worker on separate mini-batches, Ba et al. 2017). Every
            rank still steps, so all keep the same parameters. Not with
            DistributedDataParallel, which averages every rank's gradients alike.
    """

    def __init__(
        self,
        world: World | None = None,
        precondition: str = "broadcast",
        staleness: int | None = None,
        bucket_bytes: int = BUCKET_BYTES,
        role: str = "both",
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
        if precondition not in PRECONDITION_MODES:
            raise ValueError(
                f"precondition must be one of {', '.join(PRECONDITION_MODES)}; got {precondition!r}"
            )
        self.world = world if world is not None else World.from_process_group()
        self.mode = precondition
        self.role = role
        self.refresh_schedule = RefreshSchedule(staleness)
        self.bucket_bytes = bucket_bytes
        self.calls = 0
        self.examples = 1
        self.device = torch.device("cpu")
        self._owners: tuple[tuple, list[int]] | None = None
        self._specs: dict[int, list[tuple[str, tuple, torch.dtype]]] = {}
        self._scheduled: list[tuple[int, dict[int, int]]] = []

    @property
    def distributed(self) -> bool:
        return self.world.size > 1

    def owners(self, preconditioners: Sequence) -> list[int]:
        """The rank that refreshes each layer: LPT on the estimated costs (a layer without
        factors yet counts as free; the ranks agree since their factors are the same)."""
        costs = tuple(refresh_cost(p) for p in preconditioners)
        if self._owners is None or self._owners[0] != costs:
            self._owners = (costs, assign_longest_first(costs, self.world.size))
        return self._owners[1]

    # ------------------------------------------------------------ reductions

    def reduce_gradients(
        self, model: nn.Module, params: Sequence[Tensor], loss: Tensor, examples: int
    ) -> Tensor:
        """Average ``.grad`` of ``params`` over ranks, weighted by examples; the whole
        batch's loss. A DistributedDataParallel model has averaged them already.

        Without DDP, one host sync (whether each gradient exists on some rank).
        """
        self.examples = examples if self.role != "statistics" else 0
        self.device = loss.device
        if not self.distributed:
            return loss
        weight = float(self.examples)
        scalars = torch.stack([loss.detach().float() * weight, loss.new_tensor(weight).float()])
        if isinstance(model, DistributedDataParallel):
            if self.role != "both":
                raise ValueError(
                    f"role {self.role!r} needs a model without DistributedDataParallel "
                    "(the coordinator weights each rank's gradients itself)"
                )
            (total,) = all_reduce_sum([scalars], "the loss all-reduce", self.bucket_bytes)
            return (total[0] / total[1]).to(loss.dtype)
        present = [p.grad is not None for p in params]
        flags = torch.tensor(present, dtype=torch.float32, device=loss.device)
        grads = [p.grad.mul(weight) if p.grad is not None else torch.zeros_like(p) for p in params]
        reduced = all_reduce_sum(
            [*grads, torch.cat([scalars, flags])], "the gradient all-reduce", self.bucket_bytes
        )
        totals = reduced[-1]
        counts = totals[2:].tolist()
        if counts and totals[1].item() == 0.0:
            raise ValueError("no rank has role 'both' or 'gradients': no gradients to average")
        for param, grad, count in zip(params, reduced[:-1], counts, strict=True):
            param.grad = None if count == 0 else grad.div_(totals[1].to(grad.device))
        return (totals[0] / totals[1]).to(loss.dtype)

    def reduce_mean(self, tensor: Tensor, weight: float | None = None) -> Tensor:
        """The ``weight``-weighted mean over ranks of ``tensor`` (weight: this step's examples)."""
        if not self.distributed:
            return tensor
        weight = float(self.examples if weight is None or self.role == "statistics" else weight)
        packed = torch.cat(
            [tensor.detach().float().reshape(-1) * weight, tensor.new_ones(1).float() * weight]
        )
        (total,) = all_reduce_sum([packed], "an all-reduce of per-rank averages", self.bucket_bytes)
        return (total[:-1] / total[-1]).reshape(tensor.shape).to(tensor.dtype)

    def reduce_factors(self, batch_factors: list, examples: int) -> list:
        """The factors of the whole batch (A and G, or K, Psi and G of a doubly-factored
        layer): sum_r n_r F_r / sum_r n_r over ranks, per layer.

        A layer without factors on some rank (it did not reach that rank's loss) is left
        out on every rank for this step. The factors travel as upper triangles.
        """
        if not self.distributed or not batch_factors:
            return batch_factors
        present = torch.tensor(
            [f is not None for f in batch_factors], dtype=torch.float32, device=self.device
        )
        (counts,) = all_reduce_sum([present], "the factor all-reduce", self.bucket_bytes)
        kept = [i for i, count in enumerate(counts.tolist()) if count == self.world.size]
        weight = float(examples) if self.role != "gradients" else 0.0
        pieces = []
        for index in kept:
            pieces += [upper_triangle(m) * weight for m in batch_factors[index].matrices()]
        pieces.append(torch.full((1,), weight, device=self.device))
        reduced = all_reduce_sum(pieces, "the factor all-reduce", self.bucket_bytes)
        total_weight = reduced[-1]
        if kept and float(total_weight) == 0.0:
            raise ValueError("no rank has role 'both' or 'statistics': no factors to average")
        result: list = [None] * len(batch_factors)
        start = 0
        for index in kept:
            matrices = batch_factors[index].matrices()
            averaged = [
                symmetric_from_upper(reduced[start + k].div_(total_weight), m.shape[0])
                for k, m in enumerate(matrices)
            ]
            start += len(matrices)
            result[index] = type(batch_factors[index])(*averaged)  # same kind, same order
        return result

    # ------------------------------------------------------------ inverses

    def refresh_inverses(self, preconditioners: Sequence, gamma: float, force: bool) -> None:
        """Refresh the due decompositions (all when ``force``d, else those never computed).

        Called once per step. A layer without a decomposition yet is decomposed at once
        (there is nothing stale to use meanwhile); the others go through the inverter,
        and every rank installs them at the same step (the schedule depends on the step
        alone, so the ranks agree without talking).
        """
        step = self.calls
        self.calls += 1
        owners = self.owners(preconditioners)
        mine = {i for i, owner in enumerate(owners) if owner == self.world.rank}
        everywhere = self.mode == "broadcast"
        due = [
            i
            for i, p in enumerate(preconditioners)
            if p.has_factors and (force or not p.ready) and (everywhere or i in mine)
        ]
        first = [i for i in due if not preconditioners[i].ready]
        later = [i for i in due if preconditioners[i].ready]
        self.refresh_schedule.submit(
            step, {i: preconditioners[i] for i in later if i in mine}, gamma
        )
        if later:  # who computes them is fixed now, even if the assignment changes later
            senders = {i: owners[i] for i in later}
            self._scheduled.append((self.refresh_schedule.install_step(step), senders))
        results = self.refresh_schedule.due(step)
        results.update(decompose_all({i: preconditioners[i] for i in first if i in mine}, gamma))
        installing = {i: owners[i] for i in first}
        while self._scheduled and self._scheduled[0][0] <= step:
            installing.update(self._scheduled.pop(0)[1])
        if self.distributed and everywhere and installing:
            results = self._exchange(preconditioners, results, installing)
        for index, decomposition in results.items():
            preconditioners[index].install(decomposition)

    def _exchange(
        self, preconditioners: Sequence, results: Decompositions, installing: dict[int, int]
    ) -> Decompositions:
        """The decompositions of the layers in ``installing`` (layer -> the rank that
        computed it) on every rank: one packed broadcast per such rank."""
        unknown = sorted(i for i in installing if i not in self._specs)
        if unknown:
            self._learn_specs(results, unknown)
        sends, keys = [], []
        for src in range(self.world.size):
            layers = sorted(i for i, sender in installing.items() if sender == src)
            tensors, send_keys = [], []
            for index in layers:
                device = _device_of(preconditioners[index])
                for key, shape, dtype in self._specs[index]:
                    if src == self.world.rank:
                        tensors.append(results[index][key])
                    else:
                        tensors.append(torch.empty(shape, dtype=dtype, device=device))
                    send_keys.append((index, key))
            sends.append((tensors, src))
            keys.append(send_keys)
        exchanged: Decompositions = {}
        received = broadcast_each(sends, "the inverse broadcast")
        for send_keys, tensors in zip(keys, received, strict=True):
            for (index, key), tensor in zip(send_keys, tensors, strict=True):
                exchanged.setdefault(index, {})[key] = tensor
        return exchanged

    def _learn_specs(self, results: Decompositions, layers: list[int]) -> None:
        """Keys, shapes and dtypes of each layer's decomposition, from its owner (once)."""
        mine = {
            index: [(key, tuple(t.shape), t.dtype) for key, t in sorted(results[index].items())]
            for index in layers
            if index in results
        }
        gathered: list = [None] * self.world.size
        with collective("the inverse broadcast"):
            dist.all_gather_object(gathered, mine, group=self.world.group)
        for specs in gathered:
            self._specs.update(specs)

    # ------------------------------------------------------------ preconditioning

    def precondition(
        self, preconditioners: Sequence, grads: Sequence[Tensor | None], gamma: float
    ) -> list[Tensor | None]:
        """U per layer: all locally ("broadcast"), or owned ones locally and gathered."""
        if not self.distributed or self.mode == "broadcast":
            return [
                None if V is None else p.apply(V, gamma)
                for p, V in zip(preconditioners, grads, strict=True)
            ]
        owners = self.owners(preconditioners)
        sends, layers_by_src = [], []
        for src in range(self.world.size):
            layers = [i for i, V in enumerate(grads) if V is not None and owners[i] == src]
            if src == self.world.rank:
                tensors = [preconditioners[i].apply(grads[i], gamma) for i in layers]
            else:
                tensors = [
                    torch.empty(grads[i].shape, dtype=torch.float32, device=grads[i].device)
                    for i in layers
                ]
            sends.append((tensors, src))
            layers_by_src.append(layers)
        proposals: list[Tensor | None] = [None] * len(grads)
        received = broadcast_each(sends, "the preconditioned-gradient gather")
        for layers, tensors in zip(layers_by_src, received, strict=True):
            for index, tensor in zip(layers, tensors, strict=True):
                proposals[index] = tensor
        return proposals

    def close(self) -> None:
        """Stop the background inverter (pending refreshes are dropped)."""
        self.refresh_schedule.close()


def _device_of(preconditioner) -> torch.device:
    return next(iter(preconditioner.state_dict().values())).device


def refresh_cost(preconditioner) -> float:
    """Estimated cost of refreshing a preconditioner, as its kind estimates it (about d^3
    per square running factor of size d: d_A^3 + d_G^3 for a Kronecker layer); 0 before
    it has factors."""
    return preconditioner.refresh_cost()


def default_coordinator() -> Coordinator:
    """Data-parallel over the initialized process group, else the local computation."""
    return Coordinator(World.from_process_group())


__all__ = ["Coordinator", "World", "PRECONDITION_MODES", "ROLES", "default_coordinator"]
