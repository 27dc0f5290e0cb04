"""The kfac-vs-sgd experiment: curve bookkeeping, interleaved runs, and the quick run."""

from __future__ import annotations

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
)
from natgrad.train import RunConfig, train
from strict_json import load_file


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
    # Steps to the target counted by hand: the trailing mean of 10 losses first holds no
    # 9.0 at step 13 (three 9s, batch 10) and at step 11 (one 9, batch 40); momentum's
    # five and four 9s give steps 15 and 14. The base is the smallest batch whatever the
    # order of the dict; a batch that never reaches the target has no gain.
    largest_first = {160: curve([9.0] * 50), **dict(reversed(kept["kfac"].items()))}
    assert per_step_gains(largest_first, 1.0) == {
        "10": 1.0,
        "40": pytest.approx(13 / 11),
        "160": None,
    }
    assert per_step_gains(kept["momentum"], 2.0) == {"10": 1.0, "40": pytest.approx(15 / 14)}


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
    ours = CurveRun("mnist_autoencoder", "momentum", hparams, batch_size=50, steps=3).run_to_end()
    assert ours.losses == pytest.approx(reference, rel=1e-6)
    assert len(ours.wall_times) == 3 and ours.wall_times == sorted(ours.wall_times)


def test_interleaved_runs_stop_at_the_target():
    def runs(first_steps: int = 6, second_steps: int = 6) -> list[CurveRun]:
        return [
            CurveRun(
                "mnist_autoencoder", "momentum", {"lr": 3e-3}, batch_size=50, steps=first_steps
            ),
            CurveRun("mnist_autoencoder", "sgd", {"lr": 0.0}, batch_size=50, steps=second_steps),
        ]

    # Without a target each run takes its own number of steps: one that finishes early
    # does not stop the other.
    curves = run_interleaved(runs(first_steps=5, second_steps=2))
    assert [len(c.losses) for c in curves] == [5, 2]
    first_loss = curves[1].losses[0]
    # Same seed and first batch: both first losses equal, and each run stops at the
    # first step whose smoothed loss meets a target just above it.
    curves = run_interleaved(runs(), target=first_loss * 1.001)
    assert [len(c.losses) for c in curves] == [1, 1]
    assert curves[0].losses[0] == pytest.approx(first_loss)
    # A target below every loss: both run to the end.
    curves = run_interleaved(runs(first_steps=3, second_steps=3), target=0.0)
    assert [len(c.losses) for c in curves] == [3, 3]


def test_quick_experiment_writes_results_and_figure(tmp_path):
    results = get_experiment("kfac-vs-sgd").run(tmp_path, quick=True)
    stored = load_file(tmp_path / "results.json")
    assert stored["per_step_gain"] == results["per_step_gain"]
    assert (tmp_path / "kfac_vs_sgd.png").stat().st_size > 10_000
    for name in ("kfac_adaptive", "momentum"):
        by_batch = results["kept"][name]
        assert set(by_batch) == {"50", "200"}
        target = results["per_step_gain"][name]["target"]
        steps = {
            batch: first_step_at_or_below(r["losses"], target) for batch, r in by_batch.items()
        }
        assert steps == {batch: r["steps_to_target"] for batch, r in by_batch.items()}
        assert results["per_step_gain"][name]["gains"] == {
            "50": 1.0,
            "200": pytest.approx(steps["50"] / steps["200"]),
        }
        for record in by_batch.values():
            assert record["status"] == "completed"
            assert record["steps_to_target"] is not None
            assert record["final_smoothed_loss"] < record["losses"][0]


def first_step_at_or_below(losses: list[float], target: float, window: int = 10) -> int | None:
    """Independent of Curve: first step whose mean of the last ``window`` losses <= target."""
    for step in range(1, len(losses) + 1):
        recent = losses[max(0, step - window) : step]
        if sum(recent) / len(recent) <= target:
            return step
    return None


def test_every_batch_size_gets_the_same_number_of_examples():
    from natgrad.experiments.kfac_vs_sgd import FULL, QUICK

    for setting in (FULL, QUICK):
        budgets = {batch * setting.steps(batch) for batch in setting.batch_sizes}
        assert budgets == {setting.examples}
    assert FULL.steps(250) == 16 * FULL.steps(4000)
