"""The demo: a tiny compare + report that prints a ranking table."""

from natgrad import cli
from natgrad.demo import demo_optimizers, run_demo


def test_demo_optimizers_are_registered_in_order():
    names = demo_optimizers()
    assert names[:6] == ["sgd", "momentum", "nesterov", "rmsprop", "adam", "nadam"]


def test_demo_writes_the_report_and_prints_the_ranking(tmp_path, capsys):
    results = run_demo(tmp_path, optimizers=["sgd", "adam"], trials=2, steps=20, seeds=1)
    printed = capsys.readouterr().out
    for space in ("restricted", "full"):
        for entry in results["ranking"][space]:
            assert f"{space:10s} {entry['rank']:4d}  {entry['optimizer']:10s}" in printed
    for name in ("report.md", "report.html", "best_of_k.png", "final_error.png", "lr_eps.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_demo_command_rejects_an_unknown_workload(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path), "--workload", "no_such"]) == 2
    assert "unknown workload 'no_such'" in capsys.readouterr().err
