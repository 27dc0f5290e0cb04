"""K-FAC's cost: the profiler phases of its step, and "auto" doubly factoring by cost."""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.profiler import record_function

from natgrad.bench.step import OUTSIDE_PHASES, phase_microseconds, profiled_phases
from natgrad.optim.kfac import KFAC, STEP_PHASES


def _tiny_classifier_step(**options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    inputs, targets = torch.randn(16, 6), torch.randint(0, 3, (16,))
    optimizer = KFAC(model, **options)

    def step() -> None:
        def closure():
            outputs = model(inputs)
            return nn.functional.cross_entropy(outputs, targets), outputs

        optimizer.step(closure)

    return step


def test_every_phase_of_the_adaptive_step_is_a_profiler_region():
    step = _tiny_classifier_step(
        lr=0.1, damping=1.0, adapt_step=True, adapt_damping=True, inv_every=2
    )
    phases = profiled_phases(step, 5, torch.device("cpu"))
    assert set(phases) == {*STEP_PHASES, OUTSIDE_PHASES}
    assert all(value >= 0.0 for value in phases.values())
    assert phases["forward_backward"] > 0.0 and phases["quadratic_model"] > 0.0


def test_the_fixed_step_has_no_quadratic_model_or_damping_phase():
    phases = profiled_phases(_tiny_classifier_step(lr=0.1), 3, torch.device("cpu"))
    assert "quadratic_model" not in phases and "damping" not in phases
    assert {"forward_backward", "inverses", "precondition", "step_rule", "apply"} <= set(phases)


def test_a_nested_phase_is_subtracted_from_the_one_around_it():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(2):
            with record_function("kfac.step_rule"):
                time.sleep(0.02)
                with record_function("kfac.quadratic_model"):
                    time.sleep(0.06)
    phases = phase_microseconds(profiler.events())
    assert 0.03e6 <= phases["step_rule"] < 0.09e6
    assert 0.11e6 <= phases["quadratic_model"] < 0.2e6
