"""The interleaved runs of the ablation benchmarks (natgrad.bench.interleaved)."""

from __future__ import annotations

from natgrad.bench.interleaved import race_and_print
from natgrad.train.harness import CurveRun


def test_every_run_steps_in_turn_and_is_reported(capsys):
    runs = {
        "sgd": CurveRun("digits_mlp", "sgd", {"lr": 0.1}, 32, 4),
        "adam": CurveRun("digits_mlp", "adam", {"lr": 1e-3}, 32, 4),
    }
    race_and_print(runs, "digits_mlp", steps=4, eval_every=2, eval_examples=100)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["step 2", "step 4", "sgd", "adam"]
    assert "sgd: err " in lines[0] and " | adam: err " in lines[0]
    assert all(len(run.curve.wall_times) == 4 for run in runs.values())
    assert lines[2].endswith("status completed")
