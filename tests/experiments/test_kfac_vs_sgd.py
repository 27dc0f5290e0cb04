"""The kfac-vs-sgd experiment: curve bookkeeping, interleaved runs, and the quick run."""

from __future__ import annotations

import json
import math

import pytest

from natgrad.experiments import get_experiment
from natgrad.experiments.kfac_vs_sgd import (
    Curve,
    CurveRun,
    common_target,
    per_step_gains,
    reachable_target,
    run_interleaved,
    training_curve,
)
from natgrad.train import RunConfig, train


def curve(losses: list[float], batch: int = 10, seconds_per_step: float = 1.0) -> Curve:
    times = [seconds_per_step * (k + 1) for k in range(len(losses))]
    return Curve("momentum", {"lr": 0.1}, batch, list(losses), times)


def test_smoothed_is_the_trailing_mean():
    losses = [float(v) for v in (9, 7, 5, 3, 1, 2, 8, 4, 6, 0, 5, 5)]
    expected = [
        sum(losses[max(0, k - 9) : k + 1]) / len(losses[max(0, k - 9) : k + 1])
        for k in range(len(losses))
    ]
    assert curve(losses).smoothed() == pytest.approx(expected)
    assert curve(losses).smoothed(window=2)[3] == pytest.approx(4.0)


def test_steps_and_time_to_target():
    falling = curve([10.0, 8.0, 6.0, 4.0, 2.0], seconds_per_step=0.5)
    # smoothed: 10, 9, 8, 7, 6
    assert falling.steps_to(8.0) == 3
    assert falling.time_to(8.0) == pytest.approx(1.5)
    assert falling.steps_to(5.0) is None and falling.time_to(5.0) is None
    diverged = curve([1.0])
    diverged.status = "diverged"
    assert diverged.final_loss() == math.inf


def test_targets_and_gains_on_synthetic_curves():
    kept = {
        "kfac": {10: curve([9.0] * 3 + [1.0] * 40), 40: curve([9.0] + [1.0] * 40)},
        "momentum": {10: curve([9.0] * 5 + [2.0] * 40), 40: curve([9.0] * 4 + [2.0] * 40)},
    }
    assert reachable_target(kept["kfac"]) == pytest.approx(1.0)
    assert common_target(kept) == pytest.approx(2.0)
    for by_batch in kept.values():
        target = reachable_target(by_batch)
        gains = per_step_gains(by_batch, target)
        assert gains["10"] == 1.0
        expected = by_batch[10].steps_to(target) / by_batch[40].steps_to(target)
        assert gains["40"] == pytest.approx(expected)
    kfac_gain = per_step_gains(kept["kfac"], 1.0)["40"]
    assert kfac_gain > per_step_gains(kept["momentum"], 2.0)["40"] > 1.0


def test_curve_run_matches_the_training_runner():
    """Same seed, batches and update as ``natgrad train``: the per-step losses agree."""
    hparams = {"lr": 3e-3, "momentum": 0.9}
    config = RunConfig(
        "mnist_autoencoder",
        "momentum",
        steps=3,
        batch_size=50,
        eval_every=1,
        hyperparameters=hparams,
        evaluate_test=False,
    )
    reference = [record["train_loss"] for record in train(config).history[1:]]
    ours = training_curve("mnist_autoencoder", "momentum", hparams, batch_size=50, steps=3)
    assert ours.losses == pytest.approx(reference, rel=1e-6)
    assert len(ours.wall_times) == 3 and ours.wall_times == sorted(ours.wall_times)


def test_interleaved_runs_stop_at_the_target():
    runs = [
        CurveRun("mnist_autoencoder", "momentum", {"lr": 3e-3}, batch_size=50, steps=6),
        CurveRun("mnist_autoencoder", "sgd", {"lr": 0.0}, batch_size=50, steps=6),
    ]
    first_loss = training_curve("mnist_autoencoder", "sgd", {"lr": 0.0}, 50, 1).losses[0]
    curves = run_interleaved(runs, target=first_loss * 1.001)
    # lr 0: the first smoothed loss already meets a target just above it
    assert len(curves[1].losses) == 1
    assert curves[1].losses[0] == pytest.approx(first_loss)
    assert 1 <= len(curves[0].losses) <= 6


def test_quick_experiment_writes_results_and_figure(tmp_path):
    results = get_experiment("kfac-vs-sgd").run(tmp_path, quick=True)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["per_step_gain"] == results["per_step_gain"]
    assert (tmp_path / "kfac_vs_sgd.png").stat().st_size > 10_000
    for name in ("kfac_adaptive", "momentum"):
        by_batch = results["kept"][name]
        assert set(by_batch) == {"50", "200"}
        assert results["per_step_gain"][name]["gains"]["50"] == 1.0
        for record in by_batch.values():
            assert record["status"] == "completed"
            assert record["steps_to_target"] is not None
            assert record["final_smoothed_loss"] < record["losses"][0]


def test_every_batch_size_gets_the_same_number_of_examples():
    from natgrad.experiments.kfac_vs_sgd import FULL, QUICK

    for setting in (FULL, QUICK):
        budgets = {batch * setting.steps(batch) for batch in setting.batch_sizes}
        assert budgets == {setting.examples}
    assert FULL.steps(250) == 16 * FULL.steps(4000)
