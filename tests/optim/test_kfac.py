"""The K-FAC optimizer: exactness on least squares, step rules against dense computations,
resume, fallback, non-finite statistics, autocast, argument checks and registry."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from kfac_settings import EXACT_GAUSSIAN, EXACT_ONE_STEP, kfac_with_fallback
from natgrad.curvature.dense import dense_fisher, flatten_params
from natgrad.curvature.likelihoods import Gaussian
from natgrad.optim.kfac import KFAC, DampingConfig
from natgrad.optim.kfac_step_equations import levenberg_marquardt_damping
from natgrad.optim.optimizer_spec import BuildContext, get_optimizer_spec, resolve_hyperparameters


def _regression(seed: int = 0, n: int = 24):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    return model, torch.randn(n, 3), torch.randn(n, 2)


def _closure(opt, model, inputs, targets):
    def closure():
        outputs = model(inputs)
        return opt.likelihood.loss(outputs, targets), outputs

    return closure


def _full_gradient(model, inputs, targets, weight_decay):
    """Flat gradient of the mean loss plus eta * theta, in float64."""
    wide = copy.deepcopy(model).double()
    loss = Gaussian().loss(wide(inputs.double()), targets.double())
    grads = torch.autograd.grad(loss, list(wide.parameters()))
    return torch.cat([g.reshape(-1) for g in grads]) + weight_decay * flatten_params(wide)


def test_one_step_on_linear_least_squares_lands_on_the_solution():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    inputs = torch.randn(50, 4)
    targets = inputs @ torch.randn(4, 3) + 0.3 * torch.randn(50, 3) + 1.0
    opt = KFAC(model, damping=1e-9, **EXACT_ONE_STEP)
    opt.step(_closure(opt, model, inputs, targets))
    design = torch.cat([inputs, torch.ones(50, 1)], dim=1).double()
    solution = torch.linalg.lstsq(design, targets.double()).solution  # (5, 3)
    torch.testing.assert_close(model.weight.detach().double(), solution[:4].T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.bias.detach().double(), solution[4], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weight_decay", [0.01, 0.3])
def test_levenberg_marquardt_rule_matches_dense_reduction_ratio(weight_decay):
    model, inputs, targets = _regression(1)
    damping = 0.5
    opt = KFAC(
        model,
        lr=0.7,
        damping=damping,
        weight_decay=weight_decay,
        likelihood="gaussian",
        fisher="exact",
        adapt_damping=True,
        damping_config=DampingConfig(interval=1),
    )
    closure = _closure(opt, model, inputs, targets)
    for _ in range(3):
        before = copy.deepcopy(model)
        old_damping = opt.param_groups[0]["damping"]
        opt.step(closure)
        wide = before.double()
        d = flatten_params(model).double() - flatten_params(wide)
        fisher = dense_fisher(wide, inputs.double(), "gaussian", kind="exact")
        grad = _full_gradient(before, inputs, targets, weight_decay)
        predicted = (
            0.5 * d @ (fisher + weight_decay * torch.eye(len(d), dtype=d.dtype)) @ d + grad @ d
        )
        # h = L + eta/2 ||theta||^2: the objective that the model M (with eta) models
        old_h = Gaussian().loss(wide(inputs.double()), targets.double())
        old_h = old_h + 0.5 * weight_decay * flatten_params(wide).pow(2).sum()
        with torch.no_grad():
            new_h = Gaussian().loss(model(inputs).double(), targets.double())
            new_h = new_h + 0.5 * weight_decay * flatten_params(model).double().pow(2).sum()
        rho = float((new_h - old_h) / predicted)
        assert opt.last_rho == pytest.approx(rho, rel=1e-3, abs=1e-4)
        omega = (19 / 20) ** 1
        expected = levenberg_marquardt_damping(old_damping, rho, omega, 1e-8, 1e8)
        assert opt.param_groups[0]["damping"] == pytest.approx(expected)


def test_levenberg_marquardt_rule_directions_and_bounds():
    omega = (19 / 20) ** 5
    assert levenberg_marquardt_damping(1.0, 0.9, omega, 0.0, 10.0) == pytest.approx(omega)
    assert levenberg_marquardt_damping(1.0, 0.1, omega, 0.0, 10.0) == pytest.approx(1 / omega)
    assert levenberg_marquardt_damping(1.0, 0.5, omega, 0.0, 10.0) == 1.0
    assert levenberg_marquardt_damping(1.0, float("nan"), omega, 0.0, 1.1) == 1.1
    assert levenberg_marquardt_damping(1e-9, 0.9, omega, 1e-8, 10.0) == 1e-8


@pytest.mark.parametrize("model_fraction", [1.0, 0.5])
def test_quadratic_model_alpha_mu_match_dense_two_by_two_solve(model_fraction):
    """alpha, mu solve the 2x2 model with the dense Fisher of the model's examples
    (the first ceil(model_fraction * m)) and the whole batch's gradient; a mu outside
    [0, 1] restarts the momentum (alpha along Delta alone)."""
    model, inputs, targets = _regression(2)
    count = math.ceil(model_fraction * inputs.shape[0])
    damping, weight_decay = 0.1, 0.01
    kwargs = dict(damping=damping, weight_decay=weight_decay, **EXACT_GAUSSIAN)
    opt = KFAC(
        model,
        lr=1.0,
        adapt_step=True,
        model_fraction=model_fraction,
        model_min_examples=1,
        **kwargs,
    )
    closure = _closure(opt, model, inputs, targets)
    previous = None
    for _ in range(3):
        before = copy.deepcopy(model)
        # the proposal Delta: a plain lr = 1, momentum = 0 step from the same state
        twin_model = copy.deepcopy(model)
        twin = KFAC(twin_model, lr=1.0, **kwargs)
        twin.load_state_dict(opt.state_dict())
        twin.step(_closure(twin, twin_model, inputs, targets))
        proposal = (flatten_params(twin_model) - flatten_params(before)).double()
        opt.step(closure)
        update = (flatten_params(model) - flatten_params(before)).double()
        wide = before.double()
        curvature = dense_fisher(wide, inputs[:count].double(), "gaussian", kind="exact")
        curvature += (damping + weight_decay) * torch.eye(len(update), dtype=torch.float64)
        grad = _full_gradient(before, inputs, targets, weight_decay)
        if previous is None:
            alpha = -(grad @ proposal) / (proposal @ curvature @ proposal)
            expected = alpha * proposal
        else:
            basis = torch.stack([proposal, previous], dim=1)
            coefficients = torch.linalg.solve(basis.T @ curvature @ basis, -basis.T @ grad)
            expected = basis @ coefficients
            if not 0.0 <= float(coefficients[1]) <= 1.0:  # momentum restart: Delta alone
                expected = -(grad @ proposal) / (proposal @ curvature @ proposal) * proposal
        torch.testing.assert_close(update, expected, rtol=2e-3, atol=1e-5)
        previous = update


def test_kl_clip_scales_the_step_by_the_documented_factor():
    model, inputs, targets = _regression(3)
    kwargs = dict(lr=0.5, damping=0.1, likelihood="gaussian", fisher="exact", stat_decay=0.0)
    plain_model = copy.deepcopy(model)
    plain = KFAC(plain_model, **kwargs)
    plain.step(_closure(plain, plain_model, inputs, targets))
    plain_step = flatten_params(plain_model) - flatten_params(model)
    grad = _full_gradient(model, inputs, targets, 0.0).float()
    proposal = -plain_step / 0.5  # U, the preconditioned gradient
    clip = 1e-3
    nu = min(1.0, math.sqrt(clip / (0.5**2 * float(grad @ proposal))))
    assert nu < 1.0
    clipped = KFAC(model, kl_clip=clip, **kwargs)
    start = flatten_params(model)
    clipped.step(_closure(clipped, model, inputs, targets))
    torch.testing.assert_close(flatten_params(model) - start, nu * plain_step, rtol=1e-4, atol=1e-7)


def _resume_setup(seed: int = 4):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3))
    data = torch.Generator().manual_seed(0)  # the same batch whatever the model's seed
    inputs = torch.randn(32, 4, generator=data)
    labels = torch.randint(0, 3, (32,), generator=data)
    opt = kfac_with_fallback(
        model,
        lr=0.05,
        momentum=0.9,
        damping=0.1,
        weight_decay=1e-3,
        likelihood="categorical",
        fisher="mc",
        stat_fraction=0.5,
        inv_every=2,
        adapt_damping=True,
        damping_config=DampingConfig(interval=2),
    )

    def closure():
        outputs = model(inputs)
        return torch.nn.functional.cross_entropy(outputs, labels), outputs

    return model, opt, closure


def test_state_dict_resume_equals_uninterrupted_run():
    model, opt, closure = _resume_setup()
    torch.manual_seed(10)
    for _ in range(6):
        opt.step(closure)
    reference = flatten_params(model)

    model, opt, closure = _resume_setup()
    torch.manual_seed(10)
    for _ in range(3):
        opt.step(closure)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict()))
    model, opt, closure = _resume_setup(seed=99)
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    torch.manual_seed(12345)  # the global RNG is elsewhere: the sampling RNG is in the state
    for _ in range(3):
        opt.step(closure)
    torch.testing.assert_close(flatten_params(model), reference, rtol=0, atol=0)


def test_unsupported_layer_trains_with_the_fallback_and_warns_once():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))
    inputs, labels = torch.randn(64, 4), torch.randint(0, 3, (64,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = KFAC(model, lr=0.1, momentum=0.5, damping=0.1, fisher="mc", inv_every=5)
        norm_before = model[1].weight.detach().clone()

        def closure():
            outputs = model(inputs)
            return torch.nn.functional.cross_entropy(outputs, labels), outputs

        losses = [float(opt.step(closure)) for _ in range(15)]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "1 (LayerNorm)" in messages[0] and "fallback" in messages[0]
    assert not torch.equal(model[1].weight.detach(), norm_before)
    assert losses[-1] < 0.8 * losses[0]


def test_excluded_linear_goes_to_the_fallback():
    model, inputs, targets = _regression(6)
    with pytest.warns(UserWarning, match=r"for 0 \(Linear: excluded\)"):
        opt = KFAC(model, lr=0.1, likelihood="gaussian", exclude=("0",))
    assert [layer.name for layer in opt.layers] == ["2"]
    before = model[0].weight.detach().clone()
    opt.step(_closure(opt, model, inputs, targets))
    assert not torch.equal(model[0].weight.detach(), before)


class _NaNOnSecondDraw(Gaussian):
    def sample(self, outputs, generator=None):
        object.__setattr__(self, "draws", getattr(self, "draws", 0) + 1)
        drawn = super().sample(outputs, generator)
        return drawn if self.draws == 1 else drawn * float("nan")


def test_non_finite_statistics_are_skipped_with_one_warning():
    model, inputs, targets = _regression(7)
    opt = KFAC(
        model, lr=0.1, likelihood=_NaNOnSecondDraw(), fisher="mc", stat_decay=0.5, inv_every=1
    )
    closure = _closure(opt, model, inputs, targets)
    opt.step(closure)
    factors = {k: getattr(opt.preconditioner(model[0]), k).clone() for k in ("A", "G")}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            opt.step(closure)
    assert len([w for w in caught if "non-finite" in str(w.message)]) == 1
    assert opt.skipped_statistics == 3
    for key, value in factors.items():
        torch.testing.assert_close(getattr(opt.preconditioner(model[0]), key), value)
    assert torch.isfinite(flatten_params(model)).all()


def test_runs_under_bfloat16_autocast_with_float32_statistics():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))
    inputs, labels = torch.randn(16, 1, 4, 4), torch.randint(0, 4, (16,))
    opt = KFAC(model, lr=0.1, damping=0.1, fisher="mc", stat_fraction=0.5)
    start = flatten_params(model)

    def closure():
        outputs = model(inputs)
        return torch.nn.functional.cross_entropy(outputs, labels), outputs

    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = [opt.step(closure) for _ in range(3)]
    assert all(torch.isfinite(loss) for loss in losses)
    state = opt.preconditioner(model[0])
    assert state.A.dtype == torch.float32 and state.G.dtype == torch.float32
    params = flatten_params(model)
    assert params.dtype == torch.float32 and torch.isfinite(params).all()
    assert not torch.equal(params, start)


def test_lr_scheduler_drives_the_param_group_and_the_fallback():
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    with pytest.warns(UserWarning):
        opt = KFAC(model, lr=0.1, likelihood="gaussian")
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    inputs, targets = torch.randn(8, 3), torch.randn(8, 2)
    opt.step(_closure(opt, model, inputs, targets))
    scheduler.step()
    opt.step(_closure(opt, model, inputs, targets))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert opt.fallback.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(lr=-1.0), "lr"),
        (dict(damping=-1e-3), "damping"),
        (dict(stat_decay=1.0), "stat_decay"),
        (dict(stat_decay=-0.1), "stat_decay"),
        (dict(inv_every=0), "inv_every"),
        (dict(stat_every=0), "stat_every"),
        (dict(model_min_examples=0), "model_min_examples"),
        (dict(stat_fraction=0.0), "stat_fraction"),
        (dict(stat_fraction=1.5), "stat_fraction"),
        (dict(model_fraction=0.0), "model_fraction"),
        (dict(model_fraction=2.0), "model_fraction"),
        (dict(momentum=1.5), "momentum"),
        (dict(fisher="hessian"), "empirical"),
        (dict(inverse="qr"), "eigen"),
        (dict(likelihood="poisson"), "gaussian"),
        (dict(kl_clip=0.0), "kl_clip"),
        (dict(exclude=("nope",)), "exclude"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    model = nn.Linear(2, 2)
    arguments = dict(lr=0.1) | kwargs
    with pytest.raises(ValueError, match=name):
        KFAC(model, **arguments)


def test_boundary_values_are_valid_and_step():
    """lr 0, momentum 0, damping 0, stat_decay 0: a step takes statistics, decomposes the
    undamped factors, and leaves the parameters where they were."""
    model, inputs, targets = _regression(4)
    before = flatten_params(model)
    opt = KFAC(
        model,
        lr=0.0,
        momentum=0.0,
        damping=0.0,
        stat_decay=0.0,
        stat_fraction=1.0,
        likelihood="gaussian",
        fisher="exact",
    )
    opt.step(_closure(opt, model, inputs, targets))
    torch.testing.assert_close(flatten_params(model), before, rtol=0, atol=0)
    assert opt.stat_updates == 1
    for layer in (model[0], model[2]):
        preconditioner = opt.preconditioner(layer)
        assert preconditioner.ready
        assert all(torch.isfinite(t).all() for t in preconditioner.decomposition.values())


def test_registry_builds_kfac_with_the_workload_likelihood_and_weight_decay():
    spec = get_optimizer_spec("kfac")
    assert spec.second_order
    hparams = resolve_hyperparameters(spec, {"lr": 0.2})
    opt = spec.build(nn.Linear(3, 2), BuildContext("gaussian", weight_decay=1e-4), hparams)
    assert isinstance(opt, KFAC)
    assert opt.likelihood.name == "gaussian"
    assert opt.param_groups[0]["weight_decay"] == 1e-4 and opt.param_groups[0]["lr"] == 0.2


def test_load_state_dict_keeps_float32_statistics_of_a_bfloat16_model():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(torch.bfloat16)
    inputs, labels = torch.randn(32, 4, dtype=torch.bfloat16), torch.randint(0, 3, (32,))

    def closure():
        outputs = model(inputs)
        return torch.nn.functional.cross_entropy(outputs.float(), labels), outputs

    opt = KFAC(model, lr=0.1, momentum=0.9, damping=0.1, inv_every=2)
    for _ in range(3):
        opt.step(closure)
    saved = copy.deepcopy(opt.state_dict())
    resumed = KFAC(model, lr=0.1, momentum=0.9, damping=0.1, inv_every=2)
    resumed.load_state_dict(saved)
    original_state, loaded_state = opt.state_dict()["state"], resumed.state_dict()["state"]
    assert original_state.keys() == loaded_state.keys()
    for index, original in original_state.items():
        loaded = loaded_state[index]
        assert "A" in original and "velocity" in original
        for key, value in original.items():
            if isinstance(value, torch.Tensor):
                assert loaded[key].dtype == value.dtype, key
                torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    assert opt.preconditioner(model[0]).A.dtype == torch.float32


def test_statistics_are_taken_every_stat_every_steps():
    model, inputs, targets = _regression(5)
    opt = KFAC(model, lr=0.1, damping=0.1, likelihood="gaussian", stat_every=3)
    closure = _closure(opt, model, inputs, targets)
    counts = []
    for _ in range(7):
        opt.step(closure)
        counts.append(opt.stat_updates)
    assert counts == [1, 1, 1, 2, 2, 2, 3]  # steps 1, 4 and 7


@pytest.mark.parametrize(
    "fraction, floor, expected",
    [(0.125, 8, 8), (0.125, 2, 3), (0.5, 1, 12), (0.125, 128, 24), (1.0, 1, 24)],
)
def test_quadratic_model_examples_are_a_fraction_with_a_floor(fraction, floor, expected):
    model, inputs, _ = _regression(6)
    opt = KFAC(
        model,
        lr=1.0,
        likelihood="gaussian",
        adapt_step=True,
        model_fraction=fraction,
        model_min_examples=floor,
    )
    (chosen,) = opt.quadratic_model.examples((inputs,))
    assert chosen.shape[0] == expected
    torch.testing.assert_close(chosen, inputs[:expected])
