"""Losses read back in batches (as on an accelerator) give the run of a per-step read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from natgrad.train.config import RunConfig
from natgrad.train.runner import Run


def _run(config: RunConfig, out: Path, readback_every: int):
    run = Run(config, out, resume=False, overwrite=False, progress=False)
    run.readback_every = readback_every
    return run.run()


def test_batched_readback_keeps_every_metric(tmp_path: Path) -> None:
    config = RunConfig("digits_mlp", "adam", steps=23, eval_every=10, hyperparameters={"lr": 3e-3})
    results = {every: _run(config, tmp_path / f"every{every}", every) for every in (1, 7)}

    def without_time(history):
        return [{k: v for k, v in record.items() if k != "wall_time"} for record in history]

    assert without_time(results[1].history) == without_time(results[7].history)
    assert [r["step"] for r in results[7].history] == [0, 10, 20, 23]


@pytest.mark.parametrize("every", [1, 9])
def test_batched_readback_finds_the_step_that_diverged(tmp_path: Path, every: int) -> None:
    config = RunConfig("digits_logreg", "sgd", steps=50, hyperparameters={"lr": 1e38})
    reference = _run(config, tmp_path / "reference", 1)
    result = _run(config, tmp_path / f"every{every}", every)
    assert result.status == "diverged"
    summary = json.loads((tmp_path / f"every{every}" / "summary.json").read_text())
    assert summary["diverged_at_step"] == reference.diverged_at_step
    assert summary["step"] >= summary["diverged_at_step"]
