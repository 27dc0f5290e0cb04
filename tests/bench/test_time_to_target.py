"""``natgrad bench time-to-target``: the three races' wiring, the JSON object, the skipped
families, reanalysis, and one line with exit status 2 for every bad option."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from natgrad.cli import main
from natgrad.data.locate import DatasetNotFoundError
from natgrad.optim import OPTIMIZERS, get_optimizer_spec
from natgrad.optim.optimizer_spec import OptimizerSpec
from natgrad.workloads import get_workload


@pytest.fixture(autouse=True)
def _fashion_mnist():
    try:
        get_workload("fmnist_vit").load_data(None)
    except DatasetNotFoundError as error:
        pytest.skip(f"dataset not installed: {error}")


def race(tmp_path, capsys, *options: str) -> dict:
    """Run the benchmark with ``--json``; its one JSON line."""
    code = main(["bench", "time-to-target", "--out", str(tmp_path / "out"), *options, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


TINY = ["--batch", "16", "--max-steps", "2", "--grid-size", "1", "--variant-damping", "0"]


@pytest.mark.parametrize(
    ("workload", "metric", "target"),
    [
        ("fmnist_autoencoder", "train_loss", 250.0),
        ("fmnist_cnn", "val_error", 0.12),
        ("fmnist_vit", "val_error", 0.16),
    ],
)
def test_each_race_runs_every_family_and_prints_one_object(
    tmp_path, capsys, workload, metric, target
):
    result = race(
        tmp_path,
        capsys,
        "--workload",
        workload,
        *TINY,
        "--families",
        "adam",
        "muon",
        "kfac",
        "--eval-every",
        "1",
        "--eval-examples",
        "64",
    )
    assert result["workload"] == workload
    assert result["target"] == {"metric": metric, "value": target}
    assert set(result["best"]) == {"adam", "muon", "kfac"}
    for entry in result["best"].values():  # two steps reach no real target
        assert {"steps": None, "seconds": None, "setting": None}.items() <= entry.items()
    assert [r["optimizer"] for r in result["runs"]] == ["adam", "muon", "kfac_adaptive"]
    assert all(r["steps_run"] == 2 and r["status"] == "completed" for r in result["runs"])
    if metric == "val_error":  # evaluated after each step, on 64 examples
        assert all([s for s, _ in r["evaluations"]] == [1, 2] for r in result["runs"])
    stored = json.loads((tmp_path / "out/results.json").read_text())
    assert (tmp_path / "out/time_to_target.png").exists()
    # the same initial weights and first batch: the same first loss for every run
    first_losses = {curve["losses"][0] for curve in stored["curves"].values()}
    assert len(first_losses) == 1


def test_best_is_the_fastest_grid_point_with_its_steps_seconds_and_setting(tmp_path, capsys):
    result = race(
        tmp_path,
        capsys,
        "--workload",
        "fmnist_vit",
        "--batch",
        "32",
        "--max-steps",
        "6",
        "--grid-size",
        "3",
        "--families",
        "adam",
        "adamw",
        "--eval-every",
        "3",
        "--eval-examples",
        "100",
        "--target",
        "0.95",
    )
    stored = json.loads((tmp_path / "out/results.json").read_text())
    assert [r["hyperparameters"]["lr"] for r in result["runs"]] == [1e-3, 2e-3, 4e-3] * 2
    for family in ("adam", "adamw"):
        runs = [r for r in result["runs"] if r["family"] == family]
        reached = [r for r in runs if r["steps_to_target"] is not None]
        assert reached, "an error rate of 0.95 is reached at the first evaluation"
        fastest = min(reached, key=lambda r: r["seconds_to_target"])
        best = result["best"][family]
        assert best["steps"] == fastest["steps_to_target"] == 3
        wall_times = stored["curves"][fastest["label"]]["wall_times"]
        assert best["seconds"] == wall_times[2]
        assert best["setting"] == {"optimizer": family, "lr": fastest["hyperparameters"]["lr"]}
        # stopped at the target: no step after the evaluation that reached it
        assert fastest["steps_run"] == 3


def test_unavailable_families_are_skipped_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "heavyball", None)  # as if not installed
    monkeypatch.delitem(OPTIMIZERS, "ekfac", raising=False)
    code = main(
        ["bench", "time-to-target", "--workload", "fmnist_vit", *TINY, "--eval-every", "5"]
        + ["--families", "adam", "soap", "ekfac", "--out", str(tmp_path / "out"), "--json"]
    )
    assert code == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert set(result["best"]) == {"adam"}
    assert set(result["skipped"]) == {"soap", "ekfac"}
    assert 'pip install -e ".[peers]"' in result["skipped"]["soap"]
    lines = captured.err.strip().splitlines()
    assert lines == [f"{name}: skipped ({result['skipped'][name]})" for name in ("soap", "ekfac")]


def test_ekfac_runs_once_registered_with_a_damping_grid(tmp_path, capsys, monkeypatch):
    kfac_adaptive = get_optimizer_spec("kfac_adaptive")
    ekfac = OptimizerSpec(
        "ekfac",
        "stand-in",
        kfac_adaptive.factory,
        kfac_adaptive.hyperparameters,
        second_order=True,
    )
    monkeypatch.setitem(OPTIMIZERS, "ekfac", ekfac)
    result = race(
        tmp_path,
        capsys,
        "--workload",
        "fmnist_vit",
        "--batch",
        "16",
        "--max-steps",
        "2",
        "--eval-every",
        "5",
        "--families",
        "ekfac",
    )
    assert [r["hyperparameters"] for r in result["runs"]] == [
        {"damping": 0.01},
        {"damping": 0.1},
        {"damping": 1.0},
    ]
    assert "ekfac" in result["best"] and result["skipped"] == {}


def test_reanalyze_recomputes_from_the_stored_curves(tmp_path, capsys):
    options = ["--workload", "fmnist_vit", *TINY, "--families", "adam", "--eval-every", "1"]
    options += ["--eval-examples", "50"]
    first = race(tmp_path, capsys, *options, "--target", "0.01")
    assert first["best"]["adam"]["steps"] is None
    stored = tmp_path / "out/results.json"
    copy = tmp_path / "first.json"
    copy.write_text(stored.read_text())
    again = race(tmp_path, capsys, *options, "--target", "1.0", "--reanalyze", str(copy))
    assert again["best"]["adam"]["steps"] == 1  # the first evaluation, from the same curve
    assert again["runs"][0]["evaluations"] == first["runs"][0]["evaluations"]


def _one_line_exit_2(capsys, arguments: list[str]) -> str:
    code = main(["bench", "time-to-target", *arguments])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    return error


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--target", "nan"], "--target must be a finite number > 0"),
        (["--target", "-1"], "--target must be a finite number > 0"),
        (["--workload", "fmnist_vit", "--target", "1.5"], "validation error, in (0, 1]"),
        (["--report-targets", "inf"], "--report-targets must be a finite number > 0"),
        (["--grid-size", "0"], "--grid-size must be >= 1 (an empty grid)"),
        (["--target-metric", "val_error", "--target", "0.5"], "is not a classifier"),
        (["--workload", "fmnist_cnn", "--target-metric", "train_loss"], "--target is needed"),
        (["--time-limit", "-1"], "--time-limit must be a finite number of seconds > 0"),
        (["--time-limit", "nan"], "--time-limit must be a finite number of seconds > 0"),
        (["--max-steps", "0"], "--max-steps must be >= 1"),
        (["--eval-every", "0"], "--eval-every must be >= 1"),
        (["--eval-examples", "-5"], "--eval-examples must be >= 0"),
        (["--batch", "0"], "--batch must be >= 1"),
        (["--families", "adam", "lion"], "unknown --families lion"),
        (["--families", "adam", "adam"], "--families names one twice"),
        (["--variant-damping", "-0.1"], "--variant-damping must be a finite number >= 0"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--device", "tpu"], "use cpu or cuda"),
    ],
)
def test_bad_option_is_one_line_and_touches_no_file(tmp_path, capsys, arguments, message):
    out = tmp_path / "out"
    error = _one_line_exit_2(capsys, [*arguments, "--out", str(out)])
    assert message in error
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "not a results.json of bench time-to-target"),
        ('{"workload": "fmnist_vit", "curves": {"a": {"losses": []}}}', "not a results.json"),
        ('{"workload": "fmnist_cnn", "curves": {}}', "its workload is fmnist_cnn"),
        ('{"workload": "fmnist_vit", "curves": {}}', "has no run 'adam (adam) lr=0.002'"),
    ],
)
def test_reanalyze_of_a_bad_file_names_it(tmp_path, capsys, content, message):
    path = tmp_path / "earlier.json"
    path.write_text(content)
    out = tmp_path / "out"
    error = _one_line_exit_2(
        capsys,
        ["--workload", "fmnist_vit", "--families", "adam", "--grid-size", "1"]
        + ["--reanalyze", str(path), "--out", str(out)],
    )
    assert str(path) in error and message in error
    assert not out.exists()


def test_reanalyze_of_a_missing_file_names_it(tmp_path, capsys):
    missing = tmp_path / "nowhere.json"
    error = _one_line_exit_2(capsys, ["--reanalyze", str(missing), "--out", str(tmp_path / "o")])
    assert str(missing) in error and "no such file" in error


class _BrokenStep(torch.optim.SGD):
    """An optimizer whose third step fails as a factorization of NaN curvature would."""

    def step(self, closure=None):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            raise RuntimeError("linalg.cholesky: The factorization could not be completed\nmore")
        return super().step(closure)


def test_a_run_whose_step_raises_is_marked_failed_and_the_others_go_on(
    tmp_path, capsys, monkeypatch
):
    sgd = get_optimizer_spec("sgd")
    broken = OptimizerSpec(
        "ekfac",
        "fails at step 3",
        lambda model, ctx, kwargs: _BrokenStep(model.parameters(), lr=kwargs["lr"]),
        sgd.hyperparameters,
    )
    monkeypatch.setitem(OPTIMIZERS, "ekfac", broken)
    code = main(
        ["bench", "time-to-target", "--workload", "fmnist_vit", "--batch", "16"]
        + ["--max-steps", "5", "--grid-size", "1", "--eval-every", "10"]
        + ["--families", "ekfac", "adam", "--out", str(tmp_path / "out"), "--json"]
    )
    captured = capsys.readouterr()
    assert code == 0
    runs = {r["family"]: r for r in json.loads(captured.out)["runs"]}
    assert runs["ekfac"]["status"] == "failed" and runs["ekfac"]["steps_run"] == 2
    assert runs["ekfac"]["error"] == (
        "RuntimeError: linalg.cholesky: The factorization could not be completed"
    )
    assert runs["adam"]["status"] == "completed" and runs["adam"]["steps_run"] == 5
    assert "failed at step 3: RuntimeError" in captured.err
