"""The quadratic model's forward-mode products: one vectorized jvp equals one jvp per
tangent, and models that vmap cannot batch (BatchNorm in training mode) fall back."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from natgrad.optim.kfac import KFAC


def _directions(model: nn.Module, count: int, seed: int) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(p.shape, generator=generator) for p in model.parameters()]
        for _ in range(count)
    ]


def test_vectorized_jvp_equals_one_jvp_per_tangent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    inputs = (torch.randn(10, 4),)
    opt = KFAC(model, lr=0.1, likelihood="gaussian", adapt_step=True)
    vectors = _directions(model, 2, seed=1)
    batched, outputs = opt.quadratic_model.output_directions(vectors, inputs)
    assert opt.quadratic_model.batched_jvp
    opt.quadratic_model.batched_jvp = False
    looped, looped_outputs = opt.quadratic_model.output_directions(vectors, inputs)
    torch.testing.assert_close(outputs, looped_outputs)
    for fast, slow in zip(batched, looped, strict=True):
        torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    manual = torch.func.jvp(lambda x: model(x), (inputs[0],), (torch.zeros(10, 4),))[0]
    torch.testing.assert_close(outputs, manual)


class _CubeFunction(torch.autograd.Function):
    """x^3 with a forward-mode rule but no vmap rule: jvp runs it, vmap refuses it."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 3 * x**2 * tangent


class _Cube(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _CubeFunction.apply(x)


def _train(model: nn.Module, steps: int = 8) -> tuple[KFAC, list[float]]:
    torch.manual_seed(1)
    inputs, targets = torch.randn(16, 4), torch.randn(16, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # BatchNorm goes to the fallback
        opt = KFAC(model, lr=0.1, damping=0.1, likelihood="gaussian", adapt_step=True)

    def closure():
        outputs = model(inputs)
        return opt.likelihood.loss(outputs, targets), outputs

    return opt, [float(opt.step(closure)) for _ in range(steps)]


def test_batchnorm_model_trains_and_its_running_statistics_see_only_the_closure():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    opt, losses = _train(model)
    assert opt.quadratic_model.batched_jvp
    assert losses[-1] < losses[0]
    # the closure's forward counts once per step; the quadratic model's does not count
    assert int(model[1].num_batches_tracked) == len(losses)


def test_model_that_vmap_cannot_batch_falls_back_to_one_jvp_per_tangent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), _Cube(), nn.Tanh(), nn.Linear(6, 3))
    opt, losses = _train(model)
    assert not opt.quadratic_model.batched_jvp
    assert losses[-1] < losses[0]
