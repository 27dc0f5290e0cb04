"""The optimizer contract, one table over every registered optimizer.

Every entry of ``natgrad.optim.OPTIMIZERS`` is built through the registry, as the
command line and the tuner build it, and must: resume exactly from a state_dict saved
with ``torch.save`` and loaded with ``weights_only=True``; follow an LR scheduler;
refuse a bad hyperparameter with a ValueError naming it; take every registry default from
its constructor's signature unless the entry declares it in its preset (the command
line's settings); state the closure contract
when it owns the backward pass; and converge on a small least-squares problem and a
tiny classifier (and, for first-order optimizers, on Rosenbrock's function) at some
learning rate of a coarse grid. A new optimizer gets the whole contract by its
registration.
"""

from __future__ import annotations

import copy
import inspect
import io
import math

import pytest
import torch
from torch import nn

import natgrad  # noqa: F401  (registers every optimizer)
from natgrad.optim.optimizer_spec import OPTIMIZERS, BuildContext, resolve_hyperparameters
from natgrad.optim.schedules import SCHEDULE_HYPERPARAMETERS
from natgrad.train.session import optimizer_step

NAMES = sorted(OPTIMIZERS)
SCHEDULE_NAMES = {h.name for h in SCHEDULE_HYPERPARAMETERS}
LR_GRID = (1e-3, 1e-2, 1e-1, 1.0)


def _ignores_lr(name: str) -> bool:
    """Step rules that take their step size from a model of the loss, not from lr."""
    return bool(OPTIMIZERS[name].defaults().get("adapt_step"))


def _build(name: str, model: nn.Module, likelihood: str, **overrides):
    spec = OPTIMIZERS[name]
    missing = spec.unavailable() if spec.unavailable is not None else None
    if missing is not None:  # an optional extra that is not installed
        pytest.skip(missing)
    values = resolve_hyperparameters(spec, overrides)
    return spec.build(model, BuildContext(likelihood=likelihood, weight_decay=0.0), values)


def _step(name: str, optimizer, model: nn.Module, loss_fn, x, y) -> float:
    """One step the way the runner takes it: a closure for second-order optimizers."""

    def closure():
        outputs = model(x)
        return loss_fn(outputs, y), outputs

    return float(optimizer_step(optimizer, closure, OPTIMIZERS[name].second_order))


def _classifier(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs in 4-D and a small tanh network (a tiny classifier)."""
    generator = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(3, 4, generator=generator)
    y = torch.arange(48) % 3
    x = centres[y] + 0.5 * torch.randn(48, 4, generator=generator)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    return model, x, y


def _least_squares(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """y = W x + noise with badly scaled inputs (condition number 100), one Linear."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=generator) * torch.logspace(0, 1, 5)
    y = x @ torch.randn(5, 2, generator=generator) + 0.01 * torch.randn(64, 2, generator=generator)
    torch.manual_seed(seed)
    return nn.Linear(5, 2), x, y


def _cross_entropy(outputs, y):
    return nn.functional.cross_entropy(outputs, y)


def _half_squared_error(outputs, y):
    return 0.5 * (outputs - y).pow(2).sum(dim=1).mean()


def _train(name, make, loss_fn, likelihood, steps, **overrides) -> tuple[float, float]:
    model, x, y = make()
    optimizer = _build(name, model, likelihood, **overrides)
    first = float(loss_fn(model(x), y))
    last = first
    for _ in range(steps):
        last = _step(name, optimizer, model, loss_fn, x, y)
    last = float(loss_fn(model(x), y))
    return first, last


def _quietly(function, *args, **kwargs):
    """Run ``function`` with the fallback's one-time warning silenced (tested elsewhere)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return function(*args, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_resume_from_a_saved_state_dict_equals_the_uninterrupted_run(name):
    torch.manual_seed(0)
    model, x, y = _classifier()
    optimizer = _quietly(_build, name, model, "categorical")
    for _ in range(3):
        _step(name, optimizer, model, _cross_entropy, x, y)
    saved_model = copy.deepcopy(model.state_dict())
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    global_rng = torch.get_rng_state()  # the runner's checkpoints carry it too
    for _ in range(3):
        _step(name, optimizer, model, _cross_entropy, x, y)

    resumed, _, _ = _classifier(seed=1)  # other weights: all of them come from the checkpoint
    resumed.load_state_dict(saved_model)
    torch.manual_seed(123)  # a fresh process draws other numbers
    resumed_optimizer = _quietly(_build, name, resumed, "categorical")
    buffer.seek(0)
    resumed_optimizer.load_state_dict(torch.load(buffer, weights_only=True))
    torch.set_rng_state(global_rng)  # heavyball's Shampoo draws gradient noise from it
    for _ in range(3):
        _step(name, resumed_optimizer, resumed, _cross_entropy, x, y)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_an_lr_scheduler_drives_the_step(name):
    if _ignores_lr(name):
        pytest.skip(f"{name} takes its step size from the quadratic model; lr is unused")
    final = {}
    for factor in (0.0, 0.5, 1.0):
        torch.manual_seed(0)
        model, x, y = _classifier()
        # small enough that a KL clip is not active (it bounds lr * nu, not lr)
        optimizer = _quietly(_build, name, model, "categorical", lr=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step, f=factor: f)
        assert all(group["lr"] == 1e-3 * factor for group in optimizer.param_groups)
        for _ in range(2):
            _step(name, optimizer, model, _cross_entropy, x, y)
            scheduler.step()
        final[factor] = torch.cat([p.detach().flatten() for p in model.parameters()])
    start = torch.cat([p.detach().flatten() for p in _classifier()[0].parameters()])
    torch.testing.assert_close(final[0.0], start, rtol=0, atol=0)  # lr 0: nothing moves
    assert not torch.equal(final[0.5], final[1.0])


def _constructor_defaults(name: str) -> dict[str, object]:
    """The keyword defaults of the class the registry builds for ``name`` (none when it
    cannot be built here)."""
    spec = OPTIMIZERS[name]
    try:
        spec.check_available()
    except ValueError:
        return {}
    model, _, _ = _classifier()
    optimizer_class = type(_quietly(_build, name, model, "categorical"))
    parameters = inspect.signature(optimizer_class).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("name", NAMES)
def test_registry_defaults_are_the_signature_defaults_or_the_declared_preset(name):
    spec = OPTIMIZERS[name]
    signature = _constructor_defaults(name)
    for hyper in spec.hyperparameters:
        if hyper.name in SCHEDULE_NAMES:  # the runner's, not the constructor's
            continue
        if hyper.name in spec.preset:
            expected, source = spec.preset[hyper.name], "its preset"
        else:
            assert hyper.name in signature, f"{name}: {hyper.name} has no signature default"
            expected, source = signature[hyper.name], "the signature"
        assert hyper.default == expected and type(hyper.default) is type(expected), (
            f"{name}: registry default {hyper.name}={hyper.default!r}, {source} says {expected!r}"
        )


def _float_hyperparameters(name: str) -> list[str]:
    spec = OPTIMIZERS[name]
    return [
        h.name
        for h in spec.hyperparameters
        if h.name not in SCHEDULE_NAMES and isinstance(h.default, float) and h.name != "eps"
    ] + ["lr"] * ("lr" not in spec.defaults())


@pytest.mark.parametrize(
    ("name", "argument"),
    [(name, argument) for name in NAMES for argument in _float_hyperparameters(name)],
)
def test_a_negative_hyperparameter_raises_value_error_naming_it(name, argument):
    model, _, _ = _classifier()
    with pytest.raises(ValueError, match=argument):
        _quietly(_build, name, model, "categorical", **{argument: -1.0})


@pytest.mark.parametrize("name", NAMES)
def test_a_non_finite_lr_raises_value_error_naming_it(name):
    model, _, _ = _classifier()
    with pytest.raises(ValueError, match="lr"):
        _quietly(_build, name, model, "categorical", lr=math.nan)


@pytest.mark.parametrize("name", [n for n in NAMES if OPTIMIZERS[n].second_order])
def test_second_order_step_states_the_closure_contract(name):
    model, x, y = _classifier()
    optimizer = _quietly(_build, name, model, "categorical")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises((TypeError, ValueError), match="closure"):
        optimizer.step()
    with pytest.raises(TypeError, match=r"\(loss, outputs\)"):
        optimizer.step(lambda: _cross_entropy(model(x), y))
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def _best_reduction(name, make, loss_fn, likelihood, steps) -> float:
    """The smallest final/initial loss ratio over the learning-rate grid (lr-free rules once)."""
    grid = (None,) if _ignores_lr(name) else LR_GRID
    ratios = []
    for lr in grid:
        overrides = {} if lr is None else {"lr": lr}
        first, last = _quietly(_train, name, make, loss_fn, likelihood, steps, **overrides)
        if math.isfinite(last):
            ratios.append(last / first)
    return min(ratios, default=math.inf)


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_badly_scaled_least_squares(name):
    ratio = _best_reduction(name, _least_squares, _half_squared_error, "gaussian", steps=300)
    assert ratio < 0.01, f"{name}: best loss ratio {ratio:.3g} after 300 steps"


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_a_tiny_classifier(name):
    ratio = _best_reduction(name, _classifier, _cross_entropy, "categorical", steps=100)
    assert ratio < 0.1, f"{name}: best loss ratio {ratio:.3g} after 100 steps"


def _rosenbrock(point: torch.Tensor) -> torch.Tensor:
    return (1 - point[0]) ** 2 + 100 * (point[1] - point[0] ** 2) ** 2


@pytest.mark.parametrize("name", NAMES)
def test_first_order_optimizers_descend_rosenbrock(name):
    if OPTIMIZERS[name].second_order:
        pytest.skip(f"{name} needs a model with a likelihood; covered by the rows above")
    best = math.inf
    for lr in (1e-4, 1e-3, 1e-2, 3e-2):
        holder = nn.Module()
        holder.point = nn.Parameter(torch.tensor([-1.2, 1.0]))
        optimizer = _build(name, holder, "gaussian", lr=lr)
        for _ in range(2000):
            optimizer.zero_grad()
            loss = _rosenbrock(holder.point)
            loss.backward()
            optimizer.step()
        final = float(_rosenbrock(holder.point.detach()))
        if math.isfinite(final):
            best = min(best, final)
    start = float(_rosenbrock(torch.tensor([-1.2, 1.0])))
    assert best < 0.01 * start, f"{name}: best {best:.3g} from {start:.3g}"
