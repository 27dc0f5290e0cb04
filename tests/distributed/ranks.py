"""What the multi-process tests run on each rank: one K-FAC run per case on a shard.

Every rank builds the same model and the same global batch from fixed seeds, keeps
rows [rank * m / N, (rank + 1) * m / N) of it, and steps K-FAC with the data-parallel
coordinator; ``run_case(name, 0, 1)`` is the one-process reference on the whole batch.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from natgrad.distributed import Coordinator, RankFailure, World
from natgrad.optim.kfac import KFAC
from natgrad.optim.kfac_step_rules import DampingConfig

BATCH = 12
STEPS = 6
BASE = dict(lr=0.2, momentum=0.5, damping=0.05, weight_decay=1e-3, inv_every=2, stat_decay=0.9)
CASES = {
    # name: (KFAC options, coordinator options, wrap the model in DDP)
    "exact_broadcast_ddp_damping_rule": (
        dict(fisher="exact", adapt_damping=True, damping_config=DampingConfig(interval=2)),
        dict(precondition="broadcast"),
        True,
    ),
    "empirical_gather_eigen": (
        dict(fisher="empirical", inverse="eigen"),
        dict(precondition="gather"),
        False,
    ),
    "exact_adaptive": (
        dict(
            fisher="exact",
            adapt_step=True,
            adapt_damping=True,
            damping=1.0,
            damping_config=DampingConfig(interval=2),
        ),
        dict(precondition="broadcast"),
        False,
    ),
    "empirical_async_staleness_1": (
        dict(fisher="empirical"),
        dict(precondition="broadcast", staleness=1),
        False,
    ),
    # the first layer's 6 inputs read as a 2 x 3 map: K, Psi and G travel and are inverted;
    # output factors in blocks of at most 4 outputs (9 -> 3 blocks, 7 -> 2, 4 -> 1)
    "exact_doubly_factored_gather": (
        dict(fisher="exact", doubly_factored={"0": (2, 3)}, output_blocks=4),
        dict(precondition="gather"),
        False,
    ),
    "exact_doubly_factored_broadcast_async": (
        dict(fisher="exact", doubly_factored={"0": (2, 3)}, inverse="eigen", output_blocks=4),
        dict(precondition="broadcast", staleness=1),
        False,
    ),
    # a layer that joins at step 4 changes the assignment while a refresh is in flight
    "late_layer_async": (dict(fisher="exact"), dict(staleness=1), False),
}


class LateBranch(nn.Module):
    """The test MLP plus a side branch that the forward uses from its 4th call on."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        # the side branch's first layer (factors 7 and 16) costs the most: its arrival
        # reorders the whole longest-first assignment
        self.body, self.calls = body, 0
        self.side = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.body(x) + self.side(x) if self.calls > 3 else self.body(x)


# ranks 0 and 1 compute the gradients of the two halves of the batch, rank 2 only the
# statistics of the first half: the step of one process whose statistics take the first
# half of its batch (stat_fraction 0.5)
ROLES_CASE = (
    dict(
        fisher="exact",
        stat_fraction=0.5,
        adapt_damping=True,
        damping_config=DampingConfig(interval=2),
    ),
    dict(precondition="broadcast"),
    False,
)


def model_and_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 7), nn.Tanh(), nn.Linear(7, 4))
    inputs, targets = torch.randn(BATCH, 6), torch.randint(0, 4, (BATCH,))
    return model, inputs, targets


def run_case(name: str, rank: int, world_size: int) -> list[torch.Tensor]:
    """The parameters after STEPS steps of case ``name`` on this rank's shard."""
    options, coordinator_options, wrap = ROLES_CASE if name == "roles" else CASES[name]
    model, inputs, targets = model_and_batch()
    if name == "late_layer_async":
        model = LateBranch(model)
    if name == "roles" and world_size == 3:
        role = "statistics" if rank == 2 else "gradients"
        coordinator_options = {**coordinator_options, "role": role}
        options = {**options, "stat_fraction": 1.0}
        half = rank % 2
        shard = slice(half * BATCH // 2, (half + 1) * BATCH // 2)
    else:
        shard = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    inputs, targets = inputs[shard], targets[shard]
    stepped = DistributedDataParallel(model) if wrap and world_size > 1 else model
    opt = KFAC(stepped, likelihood="categorical", **{**BASE, **options})
    world = World.from_process_group() if world_size > 1 else World()
    opt.coordinator = Coordinator(world, **coordinator_options)

    def closure():
        outputs = stepped(inputs)
        return opt.likelihood.loss(outputs, targets), outputs

    losses = [opt.step(closure) for _ in range(STEPS)]
    opt.coordinator.close()
    return [p.detach().clone() for p in model.parameters()] + [torch.stack(losses)]


def join(init_file: str, rank: int, world_size: int, timeout_s: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )


def equality_worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    """Every case on this rank; rank 0 saves the results."""
    join(init_file, rank, world_size, 30)
    results = {name: run_case(name, rank, world_size) for name in CASES}
    if world_size == 3:
        results["roles"] = run_case("roles", rank, world_size)
    if rank == 0:
        torch.save(results, out_file)
    dist.destroy_process_group()


def dying_worker(
    rank: int, world_size: int, init_file: str, out_file: str, hang: bool = False
) -> None:
    """Rank 1 dies (or hangs) after two steps; rank 0 keeps stepping and must stop with
    RankFailure: at once when the connection drops, after the 5 s timeout for a hang."""
    join(init_file, rank, world_size, 5)
    model, inputs, targets = model_and_batch()
    opt = KFAC(model, likelihood="categorical", fisher="exact", **BASE)

    def closure():
        outputs = model(inputs)
        return opt.likelihood.loss(outputs, targets), outputs

    started = time.monotonic()
    try:
        for step in range(1000):
            if rank == 1 and step == 2:
                if hang:
                    time.sleep(600)
                os._exit(3)
            opt.step(closure)
    except RankFailure as failure:
        with open(out_file, "w") as stream:
            stream.write(f"{time.monotonic() - started:.3f}\n{failure}\n")
        sys.exit(1)
    except BaseException:
        with open(out_file, "w") as stream:
            stream.write("other\n" + traceback.format_exc())
        sys.exit(2)
