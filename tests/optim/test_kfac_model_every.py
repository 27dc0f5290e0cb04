"""``model_every``: the quadratic model's Fisher products every k steps, alpha and mu
reused in between; the run resumes exactly from a checkpoint taken between two models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from natgrad.optim.kfac import KFAC


def _setup(seed: int = 0, **options):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(64, 6, generator=generator)
    labels = torch.randint(0, 3, (64,), generator=generator)
    opt = KFAC(
        model,
        lr=1.0,
        damping=0.1,
        inv_every=2,
        adapt_step=True,
        adapt_damping=True,
        **options,
    )

    def closure():
        outputs = model(inputs)
        return nn.functional.cross_entropy(outputs, labels), outputs

    return model, opt, closure


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_model_runs_every_k_steps_and_the_steps_between_reuse_its_alpha_and_mu():
    model, opt, closure = _setup(model_every=3)
    calls = []
    gram = opt.quadratic_model.gram
    opt.quadratic_model.gram = lambda *a, **k: calls.append(opt.steps) or gram(*a, **k)
    for _ in range(7):
        coefficients = opt.model_rule.step_coefficients
        opt.step(closure)
        if opt.steps in (2, 4, 5, 7):  # reused steps keep the latest alpha and mu
            assert torch.equal(opt.model_rule.step_coefficients, coefficients)
        elif coefficients is not None:
            assert not torch.equal(opt.model_rule.step_coefficients, coefficients)
    # the model at steps 1 (nothing to reuse), 3 and 6; the damping rule's M(d) at step 5
    assert calls == [1, 3, 5, 6]


def test_reused_update_is_alpha_times_the_natural_gradient_plus_mu_times_the_previous():
    model, opt, closure = _setup(model_every=3)
    opt.step(closure)  # model at step 1 (nothing to reuse yet)
    alpha, mu = opt.model_rule.step_coefficients
    previous = [opt.state[layer.weight]["previous_update"].clone() for layer in opt.layers]
    before = _params(model)
    proposals = []
    precondition = opt.precondition
    opt.precondition = lambda grads, gamma: (
        proposals.append(precondition(grads, gamma)) or (proposals[-1])
    )
    opt.step(closure)  # step 2: reused
    expected = [-alpha * U + mu * prev for U, prev in zip(proposals[0], previous, strict=True)]
    for layer, want in zip(opt.layers, expected, strict=True):
        torch.testing.assert_close(opt.state[layer.weight]["previous_update"], want)
    assert not torch.equal(_params(model), before)


def test_model_every_one_is_the_model_at_every_step():
    _, plain_opt, plain_closure = _setup()
    plain_model = plain_opt.model
    _, every_opt, every_closure = _setup(model_every=1)
    for _ in range(4):
        plain_opt.step(plain_closure)
        every_opt.step(every_closure)
    torch.testing.assert_close(_params(plain_model), _params(every_opt.model), rtol=0, atol=0)


def test_resume_between_two_models_equals_the_uninterrupted_run():
    model, opt, closure = _setup(model_every=3)
    for _ in range(8):
        opt.step(closure)
    reference = _params(model)

    model, opt, closure = _setup(model_every=3)
    for _ in range(4):  # the model ran at step 3; steps 5 reuses its alpha, mu
        opt.step(closure)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
    model, opt, closure = _setup(seed=99, model_every=3)
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    for _ in range(4):
        opt.step(closure)
    torch.testing.assert_close(_params(model), reference, rtol=0, atol=0)


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_model_every_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="model_every must be an integer >= 1"):
        _setup(model_every=value)
