"""The noisy quadratic model: exact expected dynamics, and the critical-batch ordering."""

from __future__ import annotations

import json

import numpy as np
import pytest

from natgrad.cli import main
from natgrad.experiments.nqm import NQM_OPTIMIZERS, Dynamics, fastest_to_target, spectrum


def iterate_second_moments(h, lr, beta, power, batch, steps):
    """E[theta^2] per band by iterating M <- A M A^T + Q step by step (no closed form)."""
    step = lr * h ** (-power)
    moments = []
    for band in range(h.size):
        a = np.array([[1 - step[band] * h[band], beta], [-step[band] * h[band], beta]])
        q = step[band] ** 2 * h[band] / batch * np.ones((2, 2))
        m = np.array([[1.0, 0.0], [0.0, 0.0]])
        for _ in range(steps):
            m = a @ m @ a.T + q
        moments.append(m[0, 0])
    return np.array(moments)


@pytest.mark.parametrize("power, beta", [(0.0, 0.0), (0.0, 0.9), (0.5, 0.6), (1.0, 0.95)])
def test_closed_form_loss_matches_iterating_the_recursion(power, beta):
    h, w = spectrum(200, 8)
    lr, batch, steps = 0.3, 16, 37
    dynamics = Dynamics.build(h, w, np.array([lr]), np.array([beta]), power, batch)
    expected = 0.5 * (w * h * iterate_second_moments(h, lr, beta, power, batch, steps)).sum()
    assert dynamics.loss(dynamics.power(steps))[0] == pytest.approx(expected, rel=1e-9)
    per_config = dynamics.power_per_config(np.array([steps]))
    assert dynamics.loss(per_config)[0] == pytest.approx(expected, rel=1e-9)


def test_monte_carlo_sgd_agrees_with_the_expected_loss():
    h, w = np.array([1.0, 0.1]), np.array([1.0, 1.0])
    lr, batch, steps, samples = 0.5, 4, 25, 40_000
    generator = np.random.default_rng(0)
    theta = np.ones((samples, 2))
    for _ in range(steps):
        noise = generator.standard_normal((samples, 2)) * np.sqrt(h / batch)
        theta = theta - lr * (h * theta + noise)
    simulated = 0.5 * (h * theta**2).sum(axis=1).mean()
    dynamics = Dynamics.build(h, w, np.array([lr]), np.array([0.0]), 0.0, batch)
    assert dynamics.loss(dynamics.power(steps))[0] == pytest.approx(simulated, rel=0.02)


def test_spectrum_keeps_the_trace_of_h_equal_to_one_over_i():
    h, w = spectrum(10_000, 40)
    assert w.sum() == 10_000
    assert (w * h).sum() == pytest.approx((1.0 / np.arange(1, 10_001)).sum())


def test_exact_curvature_without_noise_reaches_any_target_in_one_step():
    h, w = spectrum(1000, 10)
    dynamics = Dynamics.build(h, w, np.array([0.5, 1.0]), np.array([0.0, 0.0]), 1.0, 10**12)
    index, steps = fastest_to_target(dynamics, 1e-6, 10**6, 1.1)
    assert (index, steps) == (1, 1.0)


def test_unstable_learning_rates_are_flagged():
    h, w = np.array([1.0, 0.1]), np.array([1.0, 1.0])
    lr, beta = np.array([1.9, 2.1, 3.7, 3.9]), np.array([0.0, 0.0, 0.9, 0.9])
    dynamics = Dynamics.build(h, w, lr, beta, 0.0, 1)
    # heavy ball is stable for 0 < lr h < 2 (1 + beta)
    assert dynamics.stable.tolist() == [True, False, True, False]


def test_smoke_run_orders_critical_batch_sizes_through_the_cli(tmp_path, capsys):
    out = tmp_path / "nqm"
    assert (
        main(["--threads", "1", "experiment", "nqm", "--preset", "smoke", "--out", str(out)]) == 0
    )
    results = json.loads((out / "results.json").read_text())
    critical = results["critical_batch_size"]
    assert set(critical) == {"sgd", "momentum", "adam", "kfac"} == set(NQM_OPTIMIZERS)
    assert critical["sgd"] < critical["momentum"] < critical["adam"] < critical["kfac"]
    assert all(record["bound"] == "estimate" for record in results["critical"].values())
    for name in ("steps_to_target", "examples_to_target", "best_learning_rate"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    # perfect scaling at small batch: 4x the batch, 1/4 of the steps
    sgd = results["curves"]["sgd"]
    assert sgd[0]["steps"] / sgd[1]["steps"] == pytest.approx(4, rel=0.1)


def test_nqm_rejects_options_it_does_not_take(tmp_path, capsys):
    out = tmp_path / "nqm"
    assert main(["experiment", "nqm", "--workers", "2", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "takes no --workers" in error and "--preset" in error
    assert not out.exists()
    assert main(["experiment", "nqm", "--preset", "huge", "--out", str(out)]) == 2
    assert "smoke or full" in capsys.readouterr().err
