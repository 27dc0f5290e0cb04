"""Report of a batch-size scaling folder: dispatch, tables, bounds and embedded figures."""

from __future__ import annotations

import json

from natgrad.cli import main
from natgrad.experiments.scaling import critical_batch_size
from natgrad.report.scaling import is_scaling_results, write_scaling_report

BATCHES = [16, 64, 256, 1024]


def synthetic_results() -> dict:
    """Two optimizers: one leaves perfect scaling at 64, one never reaches it at 1024."""
    curves = {
        "sgd": [1000, 260, 200, None],
        "kfac_adaptive": [900, 225, 57, 15],
    }
    rows, critical = {}, {}
    for name, steps in curves.items():
        rows[name] = [
            {
                "batch_size": b,
                "steps": s,
                "examples": None if s is None else b * s,
                "budget": 2000,
                "trials": 4,
                "reached": 3,
                "hyperparameters": {} if s is None else {"lr": 0.01 * b},
            }
            for b, s in zip(BATCHES, steps, strict=True)
        ]
        critical[name] = critical_batch_size(BATCHES, steps, [2000] * 4).to_dict()
    return {
        "experiment": "batch-scaling",
        "config": {
            "workload": "digits_mlp",
            "target_metric": "val_error",
            "target": 0.1,
            "trials": 4,
            "seed": 0,
            "eval_ratio": 1.1,
            "examples_budget": 10_000,
            "min_steps": 20,
            "max_steps": 2000,
            "preset": "smoke",
        },
        "target": 0.1,
        "target_metric": "val_error",
        "optimizers": {"sgd": "sgd", "kfac_adaptive": "kfac_adaptive"},
        "order": ["sgd", "kfac_adaptive"],
        "curves": rows,
        "critical": critical,
    }


def test_tables_show_bounds_unreached_points_and_hyperparameters(tmp_path):
    results = synthetic_results()
    assert results["critical"]["kfac_adaptive"]["bound"] == "lower"
    written = write_scaling_report(results, tmp_path)
    markdown = written["markdown"].read_text()
    assert "| kfac_adaptive | >= 1024 | lower |" in markdown and "B_crit (fit)" in markdown
    assert "| 1024 | not reached | n/a | 4 (3 reached) |  |" in markdown
    assert "| 256 | 57 | 14592 | 4 (3 reached) | lr=2.56 |" in markdown
    assert markdown.index("## sgd") < markdown.index("## kfac_adaptive")
    assert written["html"].read_text().count("data:image/png;base64,") == 3


def test_report_command_dispatches_on_the_experiment(tmp_path, capsys):
    results = synthetic_results()
    assert is_scaling_results(results) and not is_scaling_results({"config": {}})
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["report", str(tmp_path)]) == 0
    assert "# Batch-size scaling" in (tmp_path / "report.md").read_text()
    for name in ("steps_to_target", "examples_to_target", "best_learning_rate"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_every_page_and_figure_is_written_atomically(tmp_path, monkeypatch):
    import natgrad.jsonio

    renamed = []
    rename = natgrad.jsonio.os.replace

    def spy(source, target):
        renamed.append(target)
        rename(source, target)

    monkeypatch.setattr(natgrad.jsonio.os, "replace", spy)
    written = write_scaling_report(synthetic_results(), tmp_path)
    assert {"markdown", "html"} <= set(written) and len(written) > 2
    assert sorted(map(str, renamed)) == sorted(str(path) for path in written.values())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
