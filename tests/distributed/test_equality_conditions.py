"""When N ranks take one process's steps (docs/DISTRIBUTED.md) and when they do not: a
statistics fraction is taken of each rank's own share, and BatchNorm in train mode
normalizes over each share; in eval mode, with the fraction 1, the steps are equal."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ranks import join
from torch import nn

from natgrad.distributed import Coordinator, World
from natgrad.optim.kfac import KFAC

START = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)
BATCH, STEPS = 12, 4
CASES = {  # name: (KFAC options, BatchNorm mode or None)
    "fraction 1": (dict(stat_fraction=1.0), None),
    "fraction 1/2": (dict(stat_fraction=0.5), None),
    "batchnorm eval": (dict(stat_fraction=1.0), "eval"),
    "batchnorm train": (dict(stat_fraction=1.0), "train"),
}


def run(name: str, rank: int, world_size: int) -> list[torch.Tensor]:
    options, batchnorm = CASES[name]
    torch.manual_seed(0)
    layers = [nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 4)]
    if batchnorm is not None:
        layers.insert(1, nn.BatchNorm1d(9))
    model = nn.Sequential(*layers).train(batchnorm != "eval")
    inputs, targets = torch.randn(BATCH, 6), torch.randint(0, 4, (BATCH,))
    shard = slice(rank * BATCH // world_size, (rank + 1) * BATCH // world_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BatchNorm's parameters go to the fallback
        opt = KFAC(model, lr=0.2, damping=0.05, fisher="exact", inv_every=1, **options)
    world = World.from_process_group() if world_size > 1 else World()
    opt.coordinator = Coordinator(world)

    def closure():
        outputs = model(inputs[shard])
        return opt.likelihood.loss(outputs, targets[shard]), outputs

    for _ in range(STEPS):
        opt.step(closure)
    opt.coordinator.close()
    return [p.detach().clone() for p in model.parameters()]


def worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    join(init_file, rank, world_size, 30)
    results = {name: run(name, rank, world_size) for name in CASES}
    if rank == 0:
        torch.save(results, out_file)
    dist.destroy_process_group()


def _equal(got: list[torch.Tensor], want: list[torch.Tensor]) -> bool:
    return all(torch.allclose(g, w, rtol=2e-5, atol=2e-6) for g, w in zip(got, want, strict=True))


def test_two_ranks_match_one_process_only_under_the_documented_conditions(tmp_path):
    out_file = tmp_path / "results.pt"
    mp.start_processes(
        worker,
        args=(2, str(tmp_path / "rendezvous"), str(out_file)),
        nprocs=2,
        join=True,
        start_method=START,
    )
    results = torch.load(out_file, weights_only=True)
    equal = {name: _equal(results[name], run(name, 0, 1)) for name in CASES}
    assert equal == {
        "fraction 1": True,
        "fraction 1/2": False,
        "batchnorm eval": True,
        "batchnorm train": False,
    }
