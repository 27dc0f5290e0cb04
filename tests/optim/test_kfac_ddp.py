"""K-FAC inside a DistributedDataParallel wrapper (one gloo process on this machine)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from natgrad.optim.kfac import KFAC


@pytest.fixture
def single_process_group(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def _train(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> KFAC:
    opt = KFAC(model, lr=0.1, momentum=0.5, damping=0.1, likelihood="categorical", inv_every=2)

    def closure():
        outputs = model(inputs)
        return opt.likelihood.loss(outputs, targets), outputs

    for _ in range(4):
        opt.step(closure)
    return opt


def test_ddp_wrapped_model_is_tracked_and_steps_like_the_plain_model(single_process_group):
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    inner = copy.deepcopy(plain)
    wrapped = DistributedDataParallel(inner)
    inputs, targets = torch.randn(12, 5), torch.randint(0, 3, (12,))

    torch.manual_seed(1)  # the optimizers seed their sampling RNG from the global one
    plain_opt = _train(plain, inputs, targets)
    torch.manual_seed(1)
    wrapped_opt = _train(wrapped, inputs, targets)

    assert [layer.name for layer in wrapped_opt.layers] == ["0", "2"]
    assert wrapped_opt.fallback is None
    for mine, theirs in zip(inner.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)
    assert plain_opt.stat_updates == wrapped_opt.stat_updates == 4
