"""Batch scaling where no trial reaches the target: what was measured is still reported
(unreached batch sizes marked at their budget), and impossible targets are refused first."""

from __future__ import annotations

import pytest

from natgrad.cli import main
from natgrad.experiments.batch_scaling import ScalingConfig, measure
from natgrad.report.scaling import write_scaling_figures, write_scaling_report
from strict_json import load_file

UNREACHABLE = ScalingConfig(
    workload="digits_logreg",
    optimizers=("sgd",),
    batch_sizes=(16, 32),
    target=0.0,  # no error at all on the validation split: not within 4 steps
    target_metric="val_error",
    trials=1,
    examples_budget=64,
    min_steps=2,
    max_steps=4,
)


def test_an_unreached_target_still_writes_results_figures_and_a_report(tmp_path):
    out = tmp_path / "scaling"
    results = measure(UNREACHABLE, out)
    stored = load_file(out / "results.json")
    rows = stored["curves"]["sgd"]
    assert [row["steps"] for row in rows] == [None, None]
    assert [row["reached"] for row in rows] == [0, 0] and rows[0]["budget"] == 4
    assert {"steps_to_target.png", "examples_to_target.png"} <= set(stored["figures"])
    assert measure(UNREACHABLE, out)["curves"] == results["curves"]  # a rerun reports again
    written = write_scaling_report(stored, out)
    assert "not reached" in written["markdown"].read_text()


def test_nothing_reached_and_no_budget_recorded_still_draws(tmp_path):
    rows = [{"batch_size": b, "steps": None, "examples": None} for b in (8, 16)]
    critical = {"sgd": {"value": None, "bound": "lower"}}
    results = {"experiment": "nqm", "optimizers": {"sgd": "SGD"}, "target": 0.1}
    results.update(curves={"sgd": rows}, critical=critical)

    assert set(write_scaling_figures(results, tmp_path)) >= {"steps_to_target"}


@pytest.mark.parametrize(
    ("metric", "target", "message"),
    [
        ("val_error", "-0.1", "--target must be >= 0"),
        ("val_loss", "-1", "--target must be >= 0"),
        ("val_error", "nan", "--target must be a finite number"),
    ],
)
def test_an_impossible_target_is_refused_before_any_trial(
    tmp_path, capsys, metric, target, message
):
    out = tmp_path / "bad"
    command = ["experiment", "batch-scaling", "--preset", "smoke", "--out", str(out)]
    assert main([*command, "--target-metric", metric, f"--target={target}"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message in error, error
    assert not out.exists()
