"""``natgrad bench``: each benchmark runs from the command line and prints its figures."""

import json

import pytest

from natgrad.cli import main
from natgrad.data.locate import DatasetNotFoundError
from natgrad.workloads import get_workload


def _json_line(capsys) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1])


def test_inversion_prints_one_json_line_with_both_times(capsys):
    code = main(
        ["bench", "inversion", "--in", "96", "--out", "40", "--channels", "8"]
        + ["--repeats", "2", "--warmup", "0", "--device", "cpu", "--json"]
    )
    assert code == 0
    results = _json_line(capsys)
    assert results["full_s"] > 0 and results["doubly_factored_s"] > 0
    assert results["channels"] == 8 and results["locations"] == 12
    assert len(results["refresh_samples"]["full"]) == 2


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--in", "100", "--channels", "8"], "not a whole number of --channels 8 maps"),
        (["--repeats", "0"], "--repeats must be an integer >= 1"),
        (["--device", "tpu"], "use cpu or cuda"),
    ],
)
def test_inversion_rejects_bad_options_in_one_line(capsys, arguments, message):
    assert main(["bench", "inversion", *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def _require_fashion_mnist():
    try:
        get_workload("fmnist_autoencoder").load_data(None)
    except DatasetNotFoundError as error:
        pytest.skip(f"dataset not installed: {error}")


def test_step_reports_every_optimizer(capsys):
    _require_fashion_mnist()
    code = main(
        ["bench", "step", "--batches", "16", "--steps", "2", "--warmup", "1"]
        + ["--kfacs", "kfac", "--device", "cpu", "--json"]
    )
    assert code == 0
    results = _json_line(capsys)
    assert set(results["16"]["times"]) == {"kfac", "momentum"}
    assert results["16"]["times"]["kfac"]["count"] == 2


def test_time_to_target_writes_results_and_figure(tmp_path, capsys):
    _require_fashion_mnist()
    out = tmp_path / "ttt"
    code = main(
        ["bench", "time-to-target", "--batch", "32", "--max-steps", "3"]
        + ["--target", "1", "--report-targets", "--families", "adam", "kfac"]
        + ["--grid-size", "1", "--variant-damping", "0", "--out", str(out), "--json"]
    )
    assert code == 0
    results = _json_line(capsys)
    assert results["target"] == {"metric": "train_loss", "value": 1.0}
    assert (out / "results.json").exists() and (out / "time_to_target.png").exists()
