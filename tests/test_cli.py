"""The listing commands and the data commands of the CLI."""

from __future__ import annotations

from natgrad.cli import main


def test_workloads_lists_every_workload(capsys) -> None:
    assert main(["workloads"]) == 0
    out = capsys.readouterr().out
    for name in (
        "fmnist_cnn",
        "fmnist_autoencoder",
        "mnist_autoencoder",
        "fmnist_mlp",
        "digits_mlp",
        "digits_logreg",
        "mnist1d_mlp",
    ):
        assert name in out
    assert "likelihood=bernoulli" in out and "likelihood=categorical" in out


def test_optimizers_lists_hyperparameters_and_spaces(capsys) -> None:
    assert main(["optimizers", "--spaces"]) == 0
    out = capsys.readouterr().out
    for name in ("sgd", "momentum", "nesterov", "rmsprop", "adam", "nadam"):
        assert f"{name} (" in out
    assert "beta2 = 0.999" in out
    assert "restricted" in out and "full" in out


def test_bench_step_parses_set_as_train_does_before_loading_data(capsys, monkeypatch) -> None:
    import natgrad.bench.step as step

    def no_data(batch):
        raise AssertionError("data loaded before --set was checked")

    monkeypatch.setattr(step, "fashion_batch", no_data)
    assert main(["bench", "step", "--set", "stat_every=two", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "stat_every" in err and "'two'" in err and len(err.strip().splitlines()) == 1
    hparams = step.kfac_hyperparameters("kfac", _bench_step_args("kl_clip=none", "stat_every=3"))
    assert hparams["kl_clip"] is None and hparams["stat_every"] == 3


def _bench_step_args(*assignments: str):
    import argparse

    import natgrad.bench.step as step

    parser = argparse.ArgumentParser()
    step.add_arguments(parser)
    return parser.parse_args([f"--set={a}" for a in assignments])


def test_data_list_and_bad_fetch(capsys, tmp_path) -> None:
    assert main(["data", "list"]) == 0
    assert "fashion-mnist" in capsys.readouterr().out
    assert main(["data", "fetch", "cifar10", "--dest", str(tmp_path)]) == 2
    assert "fashion-mnist" in capsys.readouterr().err


def test_threads_option(tmp_path, capsys) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        train = ["train", "--workload", "digits_logreg", "--optimizer", "sgd", "--steps", "3"]
        code = main(["--threads", "1", *train, "--out", str(tmp_path / "run")])
        assert code == 0 and torch.get_num_threads() == 1
        assert main(["--threads", "0", "workloads"]) == 2
        assert "--threads must be >= 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_experiment_lists_and_runs_one(capsys, tmp_path) -> None:
    assert main(["experiment"]) == 0
    assert "kfac-vs-sgd" in capsys.readouterr().out
    out_dir = tmp_path / "quadratic"
    command = ["--threads", "1", "experiment", "ill-conditioned-quadratic", "--quick"]
    assert main([*command, "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert (out_dir / "results.json").is_file()
    assert f"in {out_dir}" in printed


def test_each_experiment_parses_its_own_definition_of_a_shared_flag(
    capsys, tmp_path, monkeypatch
) -> None:
    from natgrad.experiments.experiment import EXPERIMENTS, Experiment, ExperimentOption

    received = {}

    def recorder(name):
        def run(out_dir, quick, **options):
            received[name] = options
            return {}

        return run

    for name, kind in (("counts", int), ("fractions", float)):
        option = ExperimentOption("--size", f"a {kind.__name__} (default: none)", kind)
        monkeypatch.setitem(
            EXPERIMENTS, name, Experiment(name, "test", recorder(name), options=(option,))
        )
    out = ["--out", str(tmp_path / "out")]
    assert main(["experiment", "fractions", "--size", "0.5", *out]) == 0
    assert main(["experiment", "counts", "--size", "3", *out]) == 0
    assert received == {"fractions": {"size": 0.5}, "counts": {"size": 3}}
    assert main(["experiment", "nqm", "--size", "3", *out]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "takes no --size" in error


def test_long_lists_are_summarized_for_printing() -> None:
    from natgrad.cli import _without_long_lists

    value = {"curve": list(range(30)), "short": [1, {"inner": list(range(25))}], "x": 1.5}
    assert _without_long_lists(value) == {
        "curve": "[30 values, see results.json]",
        "short": [1, {"inner": "[25 values, see results.json]"}],
        "x": 1.5,
    }


def every_option(parser, prefix=("natgrad",)):
    """(command, action) for every option of every subcommand."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from every_option(sub, (*prefix, name))
        elif not isinstance(action, argparse._HelpAction):
            yield " ".join(prefix), action


def test_every_option_has_help_with_its_default():
    from natgrad.cli import build_parser

    options = list(every_option(build_parser()))
    assert len(options) > 40
    for command, action in options:
        text = action.help or ""
        assert text, f"{command} {action.option_strings or action.dest} has no help"
        if action.option_strings:
            assert "default" in text or "required" in text, (command, action.option_strings)
            if action.default not in (None, False, [], argparse_suppress()):
                shown = text.replace("%(default)s", str(action.default))
                assert str(action.default) in shown, (command, action.option_strings)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS
