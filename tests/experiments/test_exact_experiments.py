"""The exact-curvature experiments run (quick mode) and show the seed's effects."""

from __future__ import annotations

import json

import pytest

from natgrad.experiments import EXPERIMENTS, Experiment, get_experiment, register_experiment


def test_registry_lists_and_rejects_names():
    assert {"ill-conditioned-quadratic", "plateau"} <= set(EXPERIMENTS)
    with pytest.raises(ValueError, match="valid: .*plateau"):
        get_experiment("no-such-experiment")
    with pytest.raises(ValueError, match="already registered"):
        register_experiment(Experiment("plateau", "duplicate", lambda out, quick: {}))


def test_ill_conditioned_quadratic_newton_beats_first_order(tmp_path):
    results = get_experiment("ill-conditioned-quadratic").run(tmp_path, True)
    steps = results["steps_to_tolerance"]
    assert results["condition_number"] == pytest.approx(100.0)
    assert steps["Newton (NGD)"] == 1
    # GD at its best fixed step needs about (kappa / 4) ln(1e6) ~ 350 steps
    assert steps["GD"] is not None and steps["GD"] > 200
    assert steps["Momentum"] is not None and steps["Momentum"] < steps["GD"]
    assert steps["Adam"] is not None and steps["Adam"] > 10
    assert json.loads((tmp_path / "results.json").read_text())["steps_to_tolerance"] == steps
    assert (tmp_path / "trajectories.png").stat().st_size > 10_000


def test_plateau_natural_gradient_escapes_first(tmp_path):
    results = get_experiment("plateau").run(tmp_path, True)
    steps = results["steps_to_target"]
    assert steps["NGD"] is not None and steps["NGD"] < 40
    assert steps["SGD"] is None  # still on the plateau after 300 steps
    assert results["plateau_loss_sgd_step_100"] > 0.5
    assert (tmp_path / "loss_vs_steps.png").stat().st_size > 10_000
