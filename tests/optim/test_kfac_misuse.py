"""Misuses of the second-order optimizers that once gave silently wrong results: each now
raises one clear error, or behaves as documented."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import natgrad


def _classifier(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    return model, torch.randn(8, 4), torch.randint(0, 3, (8,))


def _optimizer(owner: str, model: nn.Module):
    if owner == "KFAC":
        return natgrad.KFAC(model, lr=0.1, damping=0.1, likelihood="categorical")
    return natgrad.NaturalGradient(model, lr=0.1, damping=0.1, likelihood="categorical")


def _snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _unchanged(before: list[torch.Tensor], model: nn.Module) -> bool:
    return all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


# ---------------------------------------------------------------- parameter groups


@pytest.mark.parametrize("owner", ["KFAC", "NaturalGradient"])
def test_add_param_group_is_refused_with_one_line(owner):
    model, _, _ = _classifier()
    extra = nn.Parameter(torch.zeros(3))
    optimizer = _optimizer(owner, model)
    with pytest.raises(ValueError, match=r"add_param_group") as raised:
        optimizer.add_param_group({"params": [extra], "lr": 1.0})
    assert "\n" not in str(raised.value)
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("owner", ["KFAC", "NaturalGradient"])
def test_per_group_options_still_come_from_the_one_group(owner):
    """The supported way to change lr (schedulers) keeps working on the single group."""
    model, x, y = _classifier()
    optimizer = _optimizer(owner, model)
    optimizer.param_groups[0]["lr"] = 0.0
    before = _snapshot(model)

    def closure():
        outputs = model(x)
        return nn.functional.cross_entropy(outputs, y), outputs

    optimizer.step(closure)
    assert _unchanged(before, model)


# ---------------------------------------------------------------- the model argument


@pytest.mark.parametrize("owner", ["KFAC", "NaturalGradient"])
@pytest.mark.parametrize("kind", ["generator", "list", "param groups"])
def test_parameters_instead_of_the_model_are_refused(owner, kind):
    model, _, _ = _classifier()
    given = {
        "generator": lambda: model.parameters(),
        "list": lambda: list(model.parameters()),
        "param groups": lambda: [{"params": list(model.parameters())}],
    }[kind]()
    cls = natgrad.KFAC if owner == "KFAC" else natgrad.NaturalGradient
    with pytest.raises(TypeError, match=rf"{owner} takes the model \(an nn.Module\)") as raised:
        cls(given, lr=0.1)
    assert "\n" not in str(raised.value)


# ---------------------------------------------------------------- outputs not from the model


NOT_FROM_THE_MODEL = {
    "fresh tensor": lambda out: torch.randn(out.shape, requires_grad=True),
    "fresh tensor times one": lambda out: torch.randn(out.shape, requires_grad=True) * 1.0,
    "detached and re-attached": lambda out: out.detach().requires_grad_(),
    "another model's outputs": lambda out: nn.Linear(out.shape[1], out.shape[1])(out.detach()),
}


@pytest.mark.parametrize("owner", ["KFAC", "NaturalGradient"])
@pytest.mark.parametrize("kind", sorted(NOT_FROM_THE_MODEL))
def test_outputs_not_produced_by_the_model_are_refused(owner, kind):
    model, x, y = _classifier()
    optimizer = _optimizer(owner, model)
    before = _snapshot(model)

    def closure():
        outputs = model(x)
        loss = nn.functional.cross_entropy(outputs, y)
        return loss, NOT_FROM_THE_MODEL[kind](outputs)

    with pytest.raises(TypeError, match=r"outputs that do not depend on the model's parameters"):
        optimizer.step(closure)
    assert _unchanged(before, model)


@pytest.mark.parametrize("owner", ["KFAC", "NaturalGradient"])
def test_outputs_computed_from_the_model_outputs_are_accepted(owner):
    """A reshape of the model's outputs (e.g. a sequence model's (N*T, C) logits) is fine."""
    model, x, y = _classifier()
    optimizer = _optimizer(owner, model)
    before = _snapshot(model)

    def closure():
        outputs = model(x).reshape(8, 3)
        return nn.functional.cross_entropy(outputs, y), outputs

    optimizer.step(closure)
    assert not _unchanged(before, model)


# ---------------------------------------------------------------- damping 0 with eigen


def _categorical_step(model, x, y, **options):
    opt = natgrad.KFAC(
        model,
        lr=1.0,
        momentum=0.0,
        damping=0.0,
        likelihood="categorical",
        fisher="exact",
        stat_decay=0.0,
        **options,
    )

    def closure():
        outputs = model(x)
        return nn.functional.cross_entropy(outputs, y), outputs

    before = _snapshot(model)
    opt.step(closure)
    return opt, [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    want = want.detach()
    return float((got.detach().double() - want).norm() / want.norm())


def test_damping_zero_eigen_on_rank_deficient_factors_is_the_pseudo_inverse_step():
    """4 examples, 10 inputs: A (11 x 11 with the bias) has rank 4 and G (the softmax
    Hessian) has the null vector 1. With damping 0 the step is -G^+ V A^+ (float64 dense)."""
    torch.manual_seed(0)
    model = nn.Linear(10, 3)
    x, y = torch.randn(4, 10), torch.tensor([0, 1, 2, 1])
    _, (weight_step, bias_step) = _categorical_step(model, x, y, inverse="eigen")
    step = torch.cat([weight_step, bias_step[:, None]], dim=1)
    assert torch.isfinite(step).all()
    # the reference, from the definitions A = E[a a^T], G = E[H_out], V = dL/d[W b]
    a = torch.cat([x.double(), torch.ones(4, 1, dtype=torch.float64)], dim=1)
    W = torch.cat(
        [model.weight.double() - weight_step.double(), (model.bias - bias_step)[:, None]], 1
    )
    probs = torch.softmax(a @ W.T.double(), dim=1)
    A = a.T @ a / 4
    G = (torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]).mean(0)
    V = (probs - nn.functional.one_hot(y, 3).double()).T @ a / 4
    want = -torch.linalg.pinv(G) @ V @ torch.linalg.pinv(A)
    assert _relative_error(step, want) < 1e-4


def test_damping_zero_doubly_factored_eigen_step_is_the_pseudo_inverse_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(18, 3))
    x, y = torch.randn(4, 2, 3, 3), torch.tensor([0, 1, 2, 1])
    opt, (weight_step, bias_step) = _categorical_step(
        model, x, y, inverse="eigen", doubly_factored=["1"]
    )
    assert torch.isfinite(weight_step).all() and torch.isfinite(bias_step).all()
    factors = {
        k: v.double() for k, v in opt.preconditioners[0].state_dict().items() if "." not in k
    }
    K, Psi, G = factors["K"], factors["Psi"], factors["G"]
    linear = nn.Linear(18, 3).double()
    with torch.no_grad():
        linear.weight.copy_(model[1].weight - weight_step)
        linear.bias.copy_(model[1].bias - bias_step)
    loss = nn.functional.cross_entropy(linear(x.flatten(1).double()), y)
    V_weight, V_bias = torch.autograd.grad(loss, [linear.weight, linear.bias])
    # the factors were formed in float32: eigenvalues below 1e-5 of the largest are rounding
    G_pinv, K_pinv, Psi_pinv = (
        torch.linalg.pinv(F, rtol=1e-5, hermitian=True) for F in (G, K, Psi)
    )
    want_weight = -G_pinv @ V_weight @ torch.kron(K_pinv, Psi_pinv)
    assert _relative_error(weight_step, want_weight) < 1e-4
    assert _relative_error(bias_step, -G_pinv @ V_bias) < 1e-4


def test_damping_zero_doubly_factored_cholesky_bias_is_finite():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(18, 3))
    x, y = torch.randn(4, 2, 3, 3), torch.tensor([0, 1, 2, 1])
    _, steps = _categorical_step(model, x, y, doubly_factored=["1"])
    assert all(torch.isfinite(step).all() for step in steps)


# ---------------------------------------------------------------- NaN example, sampled targets


@pytest.mark.parametrize("likelihood", ["categorical", "bernoulli"])
@pytest.mark.parametrize("stat_fraction", [1.0, 0.5])
def test_nan_example_with_sampled_targets_skips_statistics_and_returns_a_nan_loss(
    likelihood, stat_fraction
):
    model, x, y = _classifier()
    x[1, 2] = float("nan")
    targets = y if likelihood == "categorical" else torch.rand(8, 3).round()
    opt = natgrad.KFAC(
        model, lr=0.1, likelihood=likelihood, fisher="mc", stat_fraction=stat_fraction
    )

    def closure():
        outputs = model(x)
        return opt.likelihood.loss(outputs, targets), outputs

    with pytest.warns(RuntimeWarning, match="non-finite curvature statistics skipped"):
        loss = opt.step(closure)
    assert not torch.isfinite(loss)
    assert opt.skipped_statistics == 1 and opt.stat_updates == 0


def test_training_run_with_a_nan_example_ends_diverged(tmp_path, monkeypatch):
    """`natgrad train` with the kfac preset (sampled targets on 1/8 of the batch)."""
    import dataclasses

    from natgrad.train import RunConfig, train
    from natgrad.train import runner as runner_module

    workload = runner_module.get_workload("digits_mlp")

    def poisoned_data(data_dir):
        data = workload.load_data(data_dir)
        data.train.inputs = data.train.inputs.clone()
        data.train.inputs[:, 0] = float("nan")
        return data

    poisoned = dataclasses.replace(workload, load_data=poisoned_data)
    monkeypatch.setattr(runner_module, "get_workload", lambda name: poisoned)
    monkeypatch.setattr(runner_module, "_DATA_CACHE", {})  # neither sees the others' data
    with pytest.warns(RuntimeWarning, match="non-finite curvature statistics skipped"):
        result = train(RunConfig("digits_mlp", "kfac", steps=5), tmp_path / "run")
    assert result.status == "diverged" and result.diverged_at_step == 1


# ---------------------------------------------------------------- torch.compile


def _kfac_exact(model):
    return natgrad.KFAC(model, lr=0.1, damping=0.1, fisher="exact", stat_decay=0.0)


def test_a_compiled_model_is_refused_at_construction():
    model, _, _ = _classifier()
    with pytest.raises(ValueError, match=r"torch.compile'd module") as raised:
        _kfac_exact(torch.compile(model, backend="aot_eager"))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("how", ["torch.compile", "Module.compile"])
def test_a_compiled_forward_in_the_closure_is_refused_before_any_update(how):
    """aot_eager (like inductor) returns the hooks' recorded outputs as siblings of the
    model output: the hidden layer would get no factors and a plain gradient step."""
    model, x, y = _classifier()
    opt = _kfac_exact(model)
    if how == "torch.compile":
        forward = torch.compile(model, backend="aot_eager")
    else:
        model.compile(backend="aot_eager")
        forward = model
    before = _snapshot(model)

    def closure():
        outputs = forward(x)
        return nn.functional.cross_entropy(outputs, y), outputs

    with pytest.raises(RuntimeError, match=r"layer 0 ran inside a torch.compile'd graph"):
        opt.step(closure)
    assert _unchanged(before, model)


def test_the_eager_compile_backend_takes_the_uncompiled_step():
    model, x, y = _classifier()
    twin, _, _ = _classifier()
    steps = []
    for net, forward in ((model, model), (twin, torch.compile(twin, backend="eager"))):
        opt = _kfac_exact(net)

        def closure(forward=forward):
            outputs = forward(x)
            return nn.functional.cross_entropy(outputs, y), outputs

        opt.step(closure)
        assert all(p.has_factors for p in opt.preconditioners)
        steps.append(_snapshot(net))
    for got, want in zip(steps[1], steps[0], strict=True):
        torch.testing.assert_close(got, want)


# ---------------------------------------------------------------- float64 models


def test_a_float64_model_gets_float32_factors_and_a_float32_accurate_step():
    """The README's statement: factors are float32 also for float64 models, so one step
    matches the damped step computed in float64 (gaussian likelihood: G = I) only to
    float32 accuracy."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    inputs = torch.randn(50, 4, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1, 3.0])
    targets = inputs @ torch.randn(4, 3, dtype=torch.float64) + 1.0
    damping = 1e-8
    opt = natgrad.KFAC(
        model, lr=1.0, momentum=0.0, damping=damping, likelihood="gaussian", fisher="exact"
    )

    def closure():
        outputs = model(inputs)
        return opt.likelihood.loss(outputs, targets), outputs

    before = torch.cat([model.weight.detach(), model.bias.detach()[:, None]], dim=1)
    opt.step(closure)
    assert opt.preconditioners[0].A.dtype == torch.float32
    assert model.weight.dtype == torch.float64
    got = torch.cat([model.weight.detach(), model.bias.detach()[:, None]], dim=1) - before
    # U = (G + gamma/pi I)^{-1} V (A + pi gamma I)^{-1} with G = I, in float64
    design = torch.cat([inputs, torch.ones(50, 1, dtype=torch.float64)], dim=1)
    A = design.T @ design / 50
    V = (design @ before.T - targets).T @ design / 50
    gamma, pi = damping**0.5, float((torch.trace(A) / 5) ** 0.5)
    want = -V @ torch.linalg.inv(A + pi * gamma * torch.eye(5, dtype=torch.float64))
    want = want / (1 + gamma / pi)
    assert 1e-9 < _relative_error(got, want) < 1e-3  # 1.4e-6 when measured
