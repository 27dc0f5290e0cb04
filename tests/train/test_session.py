"""The training session that the runner, the harness and the experiments share."""

from __future__ import annotations

import math

import pytest

from natgrad.experiments.batch_scaling import DIVERGENCE as SCALING_DIVERGENCE
from natgrad.train import RunConfig, train
from natgrad.train.harness import DIVERGENCE as HARNESS_DIVERGENCE
from natgrad.train.harness import CurveRun
from natgrad.train.session import NON_FINITE, DivergenceRule, TrainingSession


@pytest.mark.parametrize("optimizer", ["adam", "kfac"])
def test_a_session_takes_the_steps_of_a_training_run(optimizer: str) -> None:
    config = RunConfig("digits_mlp", optimizer, steps=6, eval_every=6, evaluate_test=False)
    result = train(config)
    session = TrainingSession(config.resolved())
    losses = [float(session.step(step)) for step in range(6)]
    assert session.evaluate("val")["loss"] == result.final["val_loss"]
    assert session.evaluate("val")["error"] == result.final["val_error"]
    assert result.final["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-12)


def test_the_harness_steps_the_session_of_the_same_config() -> None:
    run = CurveRun("digits_mlp", "sgd", {"lr": 0.05}, batch_size=32, steps=4)
    for _ in range(4):
        run.advance()
    resolved = RunConfig(
        "digits_mlp", "sgd", steps=4, batch_size=32, hyperparameters={"lr": 0.05}
    ).resolved()
    session = TrainingSession(resolved)
    assert [float(session.step(step)) for step in range(4)] == run.curve.losses


def test_a_non_finite_loss_always_diverges() -> None:
    for rule in (NON_FINITE, HARNESS_DIVERGENCE, SCALING_DIVERGENCE):
        assert rule.diverged(math.nan, 1.0) and rule.diverged(math.inf, 1.0)
        assert not rule.diverged(2.0, 1.0)
    assert not NON_FINITE.diverged(1e30, 1.0)


def test_a_threshold_is_absolute_or_relative_to_the_first_loss() -> None:
    absolute = DivergenceRule(threshold=1e4)
    assert absolute.diverged(1.1e4, 1e6) and not absolute.diverged(9e3, 1.0)
    relative = DivergenceRule(threshold=1e3, relative_to_first=True)
    assert relative.diverged(1.1e4, 10.0) and not relative.diverged(9e3, 10.0)
    assert relative.diverged(1.1e3, 0.01)  # the reference is at least 1
    assert not relative.diverged(9e2, 0.01)


def test_a_session_keeps_its_first_loss_as_the_reference() -> None:
    resolved = RunConfig("digits_logreg", "sgd", steps=2).resolved()
    session = TrainingSession(resolved, divergence=DivergenceRule(10.0, relative_to_first=True))
    assert not session.diverged(5.0)
    assert not session.diverged(49.0) and session.diverged(51.0)


def test_a_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="threshold must be > 0"):
        DivergenceRule(threshold=0.0)


def test_a_harness_run_stops_at_its_sessions_divergence_rule() -> None:
    run = CurveRun("digits_mlp", "sgd", {"lr": 0.05}, batch_size=32, steps=5)
    run.session.divergence = DivergenceRule(threshold=1e-9)  # every finite loss is too large
    run.advance()
    assert run.curve.status == "diverged"
    assert run.curve.losses == []  # the diverged step is not kept
    assert run.done
