"""The batch-scaling experiment: smoke run through the CLI, resume, extend, bad input."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from natgrad.cli import main
from natgrad.experiments.batch_scaling import (
    SCALING_SPACES,
    configure,
    evaluation_steps,
)
from natgrad.optim import get_optimizer_spec

SMALL = ["--optimizers", "sgd,kfac_adaptive", "--batch-sizes", "16,64"]


def run_smoke(out, *extra) -> int:
    command = ["--threads", "1", "experiment", "batch-scaling", "--preset", "smoke"]
    return main([*command, *SMALL, "--out", str(out), *extra])


def trials_by_study(out) -> dict[str, list[tuple[int, dict]]]:
    url = f"sqlite:///{out / 'study.db'}"
    listing = {}
    for summary in optuna.get_all_study_summaries(url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        listing[summary.study_name] = sorted(
            (t.user_attrs["point_index"], t.user_attrs["hyperparameters"])
            for t in study.get_trials()
        )
    return listing


@pytest.fixture(scope="module")
def smoke_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling") / "smoke"
    assert run_smoke(out, "--trials", "2") == 0
    return out


def test_smoke_run_writes_results_figures_and_one_study_per_batch(smoke_folder):
    results = json.loads((smoke_folder / "results.json").read_text())
    assert results["experiment"] == "batch-scaling"
    assert set(results["critical_batch_size"]) == {"sgd", "kfac_adaptive"}
    for name, rows in results["curves"].items():
        assert [row["batch_size"] for row in rows] == [16, 64]
        for row in rows:
            assert row["trials"] == 2
            if row["steps"] is not None:
                assert row["examples"] == row["steps"] * row["batch_size"]
                assert row["steps"] <= row["budget"]
                assert row["steps"] == min(s for s in row["trial_steps"] if s is not None)
        assert results["critical"][name]["bound"] in ("estimate", "upper", "lower")
    # the smoke target is reachable: K-FAC gets there at both batch sizes
    assert all(row["steps"] is not None for row in results["curves"]["kfac_adaptive"])
    for figure in ("steps_to_target", "examples_to_target", "best_learning_rate"):
        assert (smoke_folder / f"{figure}.png").stat().st_size > 10_000
    assert len(trials_by_study(smoke_folder)) == 4


def test_rerun_resumes_without_new_trials_and_more_trials_extend(smoke_folder):
    before = trials_by_study(smoke_folder)
    assert run_smoke(smoke_folder, "--trials", "2") == 0
    assert trials_by_study(smoke_folder) == before
    assert run_smoke(smoke_folder, "--trials", "3") == 0
    after = trials_by_study(smoke_folder)
    for name, trials in after.items():
        assert [index for index, _ in trials] == [0, 1, 2]
        assert trials[:2] == before[name]  # the first points are kept, not re-run
    results = json.loads((smoke_folder / "results.json").read_text())
    assert all(row["trials"] == 3 for rows in results["curves"].values() for row in rows)


def test_other_settings_in_the_same_storage_are_refused(smoke_folder, capsys):
    stored = (smoke_folder / "results.json").read_text()
    assert run_smoke(smoke_folder, "--trials", "2", "--target", "0.3") == 2
    error = capsys.readouterr().err
    assert "target: stored 0.15, asked 0.3" in error and "another --out" in error
    assert (smoke_folder / "results.json").read_text() == stored


def test_report_renders_the_folder(smoke_folder, capsys):
    assert main(["report", str(smoke_folder)]) == 0
    markdown = (smoke_folder / "report.md").read_text()
    assert "# Batch-size scaling" in markdown and "## Critical batch size" in markdown
    assert "![Steps to the target vs batch size" in markdown
    assert "| 16 |" in markdown
    page = (smoke_folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-sizes", "64,16"], "--batch-sizes must be increasing"),
        (["--batch-sizes", "16,x"], "--batch-sizes must be a comma-separated list"),
        (["--optimizers", "lbfgs"], "optimizer 'lbfgs'"),
        (["--workload", "nope"], "unknown workload 'nope'"),
        (["--trials", "0"], "--trials must be an integer >= 1"),
        (["--target-metric", "accuracy"], "target metric must be one of val_error, val_loss"),
        (["--batch-sizes", "16,4096"], "exceeds the"),
        (["--workers", "0"], "--workers must be an integer >= 1"),
        (["--preset", "huge"], "--preset must be one of smoke, full"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    command = ["experiment", "batch-scaling", "--preset", "smoke", "--out", str(out), *extra]
    assert main(command) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message in error
    assert not out.exists()


def test_folder_of_another_run_is_refused(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"config": {}}))
    assert run_smoke(tmp_path) == 2
    assert "holds results of another run" in capsys.readouterr().err
    assert not (tmp_path / "study.db").exists()


def test_a_training_run_folder_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert run_smoke(tmp_path) == 2
    assert "holds a training run" in capsys.readouterr().err
    assert not (tmp_path / "study.db").exists()


def test_evaluation_steps_grow_geometrically_and_end_at_the_budget():
    steps = evaluation_steps(1000, 1.1)
    assert steps[:11] == list(range(1, 12)) and steps[-1] == 1000
    gaps = [b / a for a, b in zip(steps[10:-2], steps[11:-1], strict=True)]
    assert all(1.0 < gap <= 1.1 + 1 / steps[10] for gap in gaps)


def test_presets_and_overrides():
    config = configure("smoke", batch_sizes="8,32", trials=5)
    assert config.batch_sizes == (8, 32) and config.trials == 5
    assert config.preset.startswith("smoke (changed: batch_sizes, trials")
    full = configure(None)
    assert full.preset == "full" and full.workload == "mnist1d_mlp"
    assert full.budget(16) == full.max_steps  # 10,000 steps capped
    assert full.budget(128) == math.ceil(full.examples_budget / 128)
    assert full.budget(3200) == full.min_steps


@pytest.mark.parametrize("optimizer", sorted(SCALING_SPACES))
def test_scaling_spaces_map_to_hyperparameters_the_optimizer_accepts(optimizer):
    space = SCALING_SPACES[optimizer]
    valid = set(get_optimizer_spec(optimizer).defaults())
    for corner in (0.0, 1.0):
        values = space.to_hyperparameters([corner] * space.dimension)
        assert set(values) <= valid and values["schedule"] == "constant"
