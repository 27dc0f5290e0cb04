"""Every first-order optimizer against a plain float64 transcription of its equations.

The reference below is written from docs/REFERENCES.md section 1 (Choi et al. 2019, Table 1),
one scalar formula per line, independent of natgrad.optim.functional. One table of
optimizer configurations runs on three problems: an ill-conditioned quadratic,
Rosenbrock, and a small classifier.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from natgrad.optim import SGD, Adam, Momentum, NAdam, Nesterov, RMSProp, get_optimizer_spec
from natgrad.optim.optimizer_spec import BuildContext, resolve_hyperparameters
from natgrad.optim.schedules import split_schedule_hyperparameters

# ------------------------------------------------------------------ reference rules


def reference_step(rule: str, hp: dict, theta: torch.Tensor, g: torch.Tensor, state: dict):
    """One step of ``rule`` on a float64 tensor, straight from the written equations."""
    g = g + hp.get("weight_decay", 0.0) * theta
    t = state["t"] = state.get("t", 0) + 1
    lr = hp["lr"]
    if rule == "sgd":
        return theta - lr * g
    if rule in ("momentum", "nesterov"):
        gamma = hp["momentum"]
        v = state["v"] = gamma * state.get("v", torch.zeros_like(theta)) + g
        return theta - lr * v if rule == "momentum" else theta - lr * (gamma * v + g)
    if rule == "rmsprop":
        gamma, rho, eps = hp["momentum"], hp["rho"], hp["eps"]
        v = state["v"] = rho * state.get("v", torch.ones_like(theta)) + (1 - rho) * g**2
        root = torch.sqrt(v + eps) if hp.get("eps_inside_sqrt") else torch.sqrt(v) + eps
        m = state["m"] = gamma * state.get("m", torch.zeros_like(theta)) + lr * g / root
        return theta - m
    beta1, beta2, eps = hp["beta1"], hp["beta2"], hp["eps"]
    m = state["m"] = beta1 * state.get("m", torch.zeros_like(theta)) + (1 - beta1) * g
    v = state["v"] = beta2 * state.get("v", torch.zeros_like(theta)) + (1 - beta2) * g**2
    b = math.sqrt(1 - beta2**t) / (1 - beta1**t)
    numerator = m if rule == "adam" else beta1 * m + (1 - beta1) * g
    return theta - lr * b * numerator / (torch.sqrt(v) + eps)


CLASSES = {
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "rmsprop": RMSProp,
    "adam": Adam,
    "nadam": NAdam,
}

CONFIGS = [
    ("sgd", dict(lr=0.01)),
    ("sgd", dict(lr=0.01, weight_decay=0.1)),
    ("momentum", dict(lr=0.01, momentum=0.9)),
    ("nesterov", dict(lr=0.01, momentum=0.8, weight_decay=0.05)),
    ("rmsprop", dict(lr=0.01, momentum=0.5, rho=0.9, eps=1e-8)),
    ("rmsprop", dict(lr=0.01, momentum=0.0, rho=0.99, eps=1e-3, eps_inside_sqrt=True)),
    ("adam", dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)),
    ("adam", dict(lr=0.01, beta1=0.5, beta2=0.9, eps=1.0, weight_decay=0.01)),
    ("nadam", dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)),
    ("nadam", dict(lr=0.01, beta1=0.0, beta2=0.0, eps=1e-3)),
]

# ------------------------------------------------------------------ problems


def quadratic_problem():
    """f(x) = 1/2 x^T A x - b^T x with condition number 1000 in a rotated basis."""
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(-1, 2, 6, dtype=torch.float64)) @ q.T
    b = torch.randn(6, generator=generator, dtype=torch.float64)
    params = [torch.zeros(6, dtype=torch.float64, requires_grad=True)]
    return params, lambda ps: 0.5 * ps[0] @ a @ ps[0] - b @ ps[0], 1.0


def rosenbrock_problem():
    params = [torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)]

    def loss(ps):
        x, y = ps[0][0], ps[0][1]
        return (1 - x) ** 2 + 100 * (y - x**2) ** 2

    return params, loss, 0.02


def classifier_problem():
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(32, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=generator)
    params = list(model.parameters())

    def loss(ps):
        w1, b1, w2, b2 = ps
        logits = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        return nn.functional.cross_entropy(logits, y)

    return params, loss, 10.0


PROBLEMS = {
    "quadratic": quadratic_problem,
    "rosenbrock": rosenbrock_problem,
    "classifier": classifier_problem,
}


def scaled(hp: dict, lr_scale: float) -> dict:
    return {**hp, "lr": hp["lr"] * lr_scale}


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize(("rule", "hp"), CONFIGS)
def test_matches_float64_reference(rule, hp, problem, foreach):
    params, loss_fn, lr_scale = PROBLEMS[problem]()
    hp = scaled(hp, lr_scale)
    reference = [p.detach().clone() for p in params]
    reference_states = [{} for _ in params]
    optimizer = CLASSES[rule](params, **hp, foreach=foreach)
    for _ in range(25):
        ref_inputs = [p.clone().requires_grad_(True) for p in reference]
        ref_grads = torch.autograd.grad(loss_fn(ref_inputs), ref_inputs)
        reference = [
            reference_step(rule, hp, p, g, s)
            for p, g, s in zip(reference, ref_grads, reference_states, strict=True)
        ]
        optimizer.zero_grad()
        loss_fn(params).backward()
        optimizer.step()
        for param, expected in zip(params, reference, strict=True):
            torch.testing.assert_close(param.detach(), expected, rtol=1e-10, atol=1e-12)
    initial = PROBLEMS[problem]()[0]
    moved = sum((p.detach() - p0).abs().sum() for p, p0 in zip(params, initial, strict=True))
    assert torch.isfinite(moved) and moved > 0


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_and_nesterov_match_torch_sgd(nesterov):
    """torch.optim.SGD with dampening 0 implements the same two rules."""
    params, loss_fn, _ = classifier_problem()
    torch_params = [p.detach().clone().requires_grad_(True) for p in params]
    ours = (Nesterov if nesterov else Momentum)(params, lr=0.1, momentum=0.9, weight_decay=0.01)
    theirs = torch.optim.SGD(
        torch_params, lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01
    )
    for _ in range(20):
        for optimizer, ps in ((ours, params), (theirs, torch_params)):
            optimizer.zero_grad()
            loss_fn(ps).backward()
            optimizer.step()
    for a, b in zip(params, torch_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ Optimizer contract


def float32_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
    )


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 5, generator=generator)
        y = torch.randint(0, 2, (8,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize(("rule", "hp"), CONFIGS)
def test_foreach_matches_per_tensor_loop(rule, hp):
    models = [float32_model() for _ in range(2)]
    # a float64 head in the same param group exercises the device/dtype grouping
    for model in models:
        model[4].double()
        model.insert(4, _ToDouble())
    optimizers = [
        CLASSES[rule](m.parameters(), **hp, foreach=f)
        for m, f in zip(models, (True, False), strict=True)
    ]
    for model, optimizer in zip(models, optimizers, strict=True):
        train(model, optimizer, 15, seed=0)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


class _ToDouble(nn.Module):
    def forward(self, x):
        return x.double()


@pytest.mark.parametrize(("rule", "hp"), CONFIGS)
def test_state_dict_resume_equals_uninterrupted(rule, hp):
    uninterrupted = float32_model()
    optimizer = CLASSES[rule](uninterrupted.parameters(), **hp)
    train(uninterrupted, optimizer, 6, seed=0)
    first_half = copy.deepcopy(uninterrupted)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    train(uninterrupted, optimizer, 6, seed=1)

    resumed_optimizer = CLASSES[rule](first_half.parameters(), lr=123.0)  # overwritten by load
    buffer.seek(0)
    resumed_optimizer.load_state_dict(torch.load(buffer, weights_only=True))
    train(first_half, resumed_optimizer, 6, seed=1)
    for a, b in zip(uninterrupted.parameters(), first_half.parameters(), strict=True):
        assert torch.equal(a, b)
    assert all(s["step"] == 12 for s in resumed_optimizer.state.values())


def test_lr_scheduler_changes_the_update():
    param = torch.zeros(3, requires_grad=True)
    optimizer = SGD([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for expected_lr in (1.0, 0.5, 0.25):
        before = param.detach().clone()
        param.grad = torch.ones(3)
        optimizer.step()
        scheduler.step()
        torch.testing.assert_close(before - param.detach(), torch.full((3,), expected_lr))


def test_param_groups_keep_their_own_hyperparameters():
    a = torch.ones(2, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    optimizer = Momentum([{"params": [a]}, {"params": [b], "lr": 0.5, "momentum": 0.0}], lr=0.1)
    for _ in range(2):
        a.grad, b.grad = torch.ones(2), torch.ones(2)
        optimizer.step()
    torch.testing.assert_close(a.detach(), torch.full((2,), 1 - 0.1 * (1 + 1.9)))
    torch.testing.assert_close(b.detach(), torch.full((2,), 0.0))


def test_parameters_without_gradients_are_skipped():
    a = torch.ones(2, requires_grad=True)
    b = torch.ones(2, requires_grad=True)
    optimizer = Adam([a, b], lr=0.1)
    a.grad = torch.ones(2)
    optimizer.step()
    assert torch.equal(b.detach(), torch.ones(2)) and b not in optimizer.state
    assert optimizer.state[a]["step"] == 1


INVALID = [
    (SGD, dict(lr=-1e-3), "lr"),
    (SGD, dict(lr=0.1, weight_decay=-1.0), "weight_decay"),
    (Momentum, dict(lr=0.1, momentum=1.5), "momentum"),
    (Nesterov, dict(lr=0.1, momentum=-0.1), "momentum"),
    (RMSProp, dict(lr=0.1, rho=1.01), "rho"),
    (RMSProp, dict(lr=0.1, eps=-1e-8), "eps"),
    (RMSProp, dict(lr=0.1, momentum=float("nan")), "momentum"),
    (Adam, dict(lr=0.1, beta1=1.0), "beta1"),
    (Adam, dict(lr=0.1, beta2=-0.5), "beta2"),
    (NAdam, dict(lr=0.1, eps=-1.0), "eps"),
    (NAdam, dict(lr=float("nan")), "lr"),
]


@pytest.mark.parametrize(("cls", "kwargs", "argument"), INVALID)
def test_out_of_range_values_raise_naming_the_argument(cls, kwargs, argument):
    with pytest.raises(ValueError, match=rf"^{argument} must"):
        cls([torch.zeros(1, requires_grad=True)], **kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (SGD, dict(lr=0.0)),
        (Momentum, dict(lr=0.1, momentum=0.0)),
        (Momentum, dict(lr=0.1, momentum=1.0)),
        (RMSProp, dict(lr=0.1, rho=1.0, eps=0.0)),
        (RMSProp, dict(lr=0.1, rho=0.0)),
        (Adam, dict(lr=0.1, beta2=0.0, eps=0.0)),
        (NAdam, dict(lr=0.1, beta1=0.0, beta2=1.0)),
    ],
)
def test_boundary_values_are_valid(cls, kwargs):
    param = torch.ones(2, requires_grad=True)
    optimizer = cls([param], **kwargs)
    param.grad = torch.ones(2)
    optimizer.step()
    assert torch.isfinite(param).all()


def test_lr_is_required():
    with pytest.raises(TypeError):
        Adam([torch.zeros(1, requires_grad=True)])


# ------------------------------------------------------------------ registry


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_registry_builds_each_optimizer_with_workload_weight_decay(name):
    spec = get_optimizer_spec(name)
    assert not spec.second_order
    names = [h.name for h in spec.hyperparameters]
    assert {"lr", "weight_decay", "schedule", "warmup_steps", "decay_steps"} <= set(names)
    assert len(names) == len(set(names))
    optimizer_hp, schedule_hp = split_schedule_hyperparameters(resolve_hyperparameters(spec, {}))
    assert set(schedule_hp) == {"schedule", "warmup_steps", "decay_steps", "final_lr_fraction"}
    model = float32_model()
    optimizer = spec.build(model, BuildContext("categorical", weight_decay=3e-4), optimizer_hp)
    assert isinstance(optimizer, CLASSES[name])
    assert optimizer.param_groups[0]["weight_decay"] == 3e-4
    assert optimizer.param_groups[0]["lr"] == spec.defaults()["lr"]
    explicit = spec.build(model, BuildContext("categorical", 3e-4), {"lr": 0.5, "weight_decay": 0})
    assert explicit.param_groups[0]["weight_decay"] == 0
    assert explicit.param_groups[0]["lr"] == 0.5


def test_sparse_gradients_are_rejected():
    param = torch.zeros(4, requires_grad=True)
    optimizer = Adam([param], lr=0.1)
    param.grad = torch.sparse_coo_tensor([[0]], [1.0], (4,), check_invariants=True)
    with pytest.raises(RuntimeError, match="Adam does not support sparse gradients"):
        optimizer.step()


def trajectory(make_optimizer, steps: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    param = torch.randn(4, requires_grad=True)
    optimizer = make_optimizer([param])
    for _ in range(steps):
        optimizer.zero_grad()
        (param**4).sum().backward()
        optimizer.step()
    return param.detach()


@pytest.mark.parametrize("cls", [Adam, NAdam])
def test_adam_and_nadam_accept_torch_betas(cls):
    """Code written for torch.optim.Adam(params, lr, betas=...) drops in unchanged."""
    seed_names = trajectory(lambda p: cls(p, lr=0.1, beta1=0.5, beta2=0.75))
    assert not torch.equal(seed_names, trajectory(lambda p: cls(p, lr=0.1)))
    assert torch.equal(seed_names, trajectory(lambda p: cls(p, lr=0.1, betas=(0.5, 0.75))))
    assert torch.equal(seed_names, trajectory(lambda p: cls(p, 0.1, (0.5, 0.75))))
    group = cls([torch.zeros(1)], lr=0.1, betas=(0.5, 0.75)).param_groups[0]
    assert (group["beta1"], group["beta2"]) == (0.5, 0.75) and "betas" not in group
    with pytest.raises(ValueError, match="not both"):
        cls([torch.zeros(1)], lr=0.1, beta1=0.5, betas=(0.5, 0.75))
    with pytest.raises(ValueError, match="beta1"):
        cls([torch.zeros(1)], lr=0.1, betas=(1.0, 0.75))
    with pytest.raises(ValueError, match="pair"):
        cls([torch.zeros(1)], lr=0.1, betas=0.9)


def test_rmsprop_accepts_torch_alpha_as_rho():
    seed_names = trajectory(lambda p: RMSProp(p, lr=0.01, rho=0.5))
    assert not torch.equal(seed_names, trajectory(lambda p: RMSProp(p, lr=0.01)))
    assert torch.equal(seed_names, trajectory(lambda p: RMSProp(p, lr=0.01, alpha=0.5)))
    assert RMSProp([torch.zeros(1)], lr=0.1, alpha=0.5).param_groups[0]["rho"] == 0.5
    with pytest.raises(ValueError, match="not both"):
        RMSProp([torch.zeros(1)], lr=0.1, rho=0.5, alpha=0.5)
    with pytest.raises(ValueError, match="rho"):
        RMSProp([torch.zeros(1)], lr=0.1, alpha=1.5)
