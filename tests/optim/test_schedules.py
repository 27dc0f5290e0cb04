"""Learning-rate schedules: values at chosen steps, composition with warm-up, errors."""

from __future__ import annotations

import math

import pytest
import torch

from natgrad.optim import SGD
from natgrad.optim.schedules import (
    SCHEDULE_HYPERPARAMETERS,
    build_schedule,
    schedule_multiplier,
    split_schedule_hyperparameters,
)


def learning_rates(total_steps: int, base_lr: float = 2.0, **schedule) -> list[float]:
    """The lr each optimizer step used, with scheduler.step() after every step."""
    param = torch.zeros(1, requires_grad=True)
    optimizer = SGD([param], lr=base_lr)
    scheduler = build_schedule(optimizer, total_steps, **schedule)
    used = []
    for _ in range(total_steps):
        used.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones(1)
        optimizer.step()
        scheduler.step()
    return used


def test_constant_keeps_the_initial_lr():
    assert learning_rates(5) == [2.0] * 5


def test_linear_decay_reaches_the_final_fraction_then_stays():
    used = learning_rates(8, schedule="linear", decay_steps=4, final_lr_fraction=0.25)
    # f(k) = 1 - 0.75 k / 4 for k <= 4, then 0.25
    expected = [2.0 * (1 - 0.75 * min(k, 4) / 4) for k in range(8)]
    assert used == pytest.approx(expected, rel=1e-12)
    assert used[4:] == pytest.approx([0.5] * 4)


def test_decay_steps_zero_means_the_whole_run():
    used = learning_rates(10, schedule="linear", final_lr_fraction=0.0)
    assert used == pytest.approx([2.0 * (1 - k / 10) for k in range(10)])


def test_cosine_decay_values():
    used = learning_rates(6, schedule="cosine", decay_steps=4, final_lr_fraction=0.1)
    expected = [2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(k, 4) / 4))) for k in range(6)]
    assert used == pytest.approx(expected, rel=1e-12)
    assert used[2] == pytest.approx(2.0 * 0.55)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_warmup_composes_with_every_schedule(schedule):
    used = learning_rates(12, schedule=schedule, warmup_steps=4, final_lr_fraction=0.5)
    assert used[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    after_warmup = learning_rates(8, schedule=schedule, final_lr_fraction=0.5)
    assert used[4:] == pytest.approx(after_warmup)


def test_multiplier_matches_scheduler():
    multiplier = schedule_multiplier(20, "cosine", warmup_steps=3, decay_steps=10)
    used = learning_rates(20, base_lr=1.0, schedule="cosine", warmup_steps=3, decay_steps=10)
    assert used == pytest.approx([multiplier(k) for k in range(20)])


def test_scheduler_state_dict_resumes():
    param = torch.zeros(1, requires_grad=True)
    optimizer = SGD([param], lr=1.0)
    scheduler = build_schedule(optimizer, 10, "linear")
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    fresh_optimizer = SGD([param], lr=1.0)
    fresh = build_schedule(fresh_optimizer, 10, "linear")
    fresh.load_state_dict(state)
    fresh_optimizer.step()
    fresh.step()
    optimizer.step()
    scheduler.step()
    assert fresh.get_last_lr() == pytest.approx(scheduler.get_last_lr())
    assert scheduler.get_last_lr() == pytest.approx([0.6])


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        (dict(schedule="step"), "schedule"),
        (dict(total_steps=0), "total_steps"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(warmup_steps=11), "warmup_steps"),
        (dict(decay_steps=2.5), "decay_steps"),
        (dict(final_lr_fraction=1.5), "final_lr_fraction"),
        (dict(final_lr_fraction=-0.1), "final_lr_fraction"),
    ],
)
def test_bad_arguments_raise(kwargs, argument):
    optimizer = SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    arguments = {"total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=argument) as error:
        build_schedule(optimizer, **arguments)
    if argument == "schedule":
        assert "constant, linear, cosine" in str(error.value)


def test_split_schedule_hyperparameters():
    names = {h.name for h in SCHEDULE_HYPERPARAMETERS}
    assert names == {"schedule", "warmup_steps", "decay_steps", "final_lr_fraction"}
    optimizer_kwargs, schedule_kwargs = split_schedule_hyperparameters(
        {"lr": 0.1, "momentum": 0.9, "schedule": "linear", "decay_steps": 5}
    )
    assert optimizer_kwargs == {"lr": 0.1, "momentum": 0.9}
    assert schedule_kwargs == {"schedule": "linear", "decay_steps": 5}
    defaults = {h.name: h.default for h in SCHEDULE_HYPERPARAMETERS}
    assert learning_rates(3, **defaults) == [2.0] * 3
