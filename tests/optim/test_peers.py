"""The contenders: AdamW, Muon (with AdamW on the rest), and heavyball's SOAP and Shampoo.

Each is built from the registry and trained by the runner; a resumed run equals an
uninterrupted one; bad hyperparameters raise ValueError naming the argument; without
heavyball, choosing SOAP or Shampoo is one line saying how to install it.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from natgrad.cli import main
from natgrad.optim import get_optimizer_spec
from natgrad.optim.optimizer_spec import BuildContext
from natgrad.optim.peers import (
    MissingPeerPackage,
    MuonAdamW,
    heavyball_available,
    hidden_layer_matrices,
)
from natgrad.train import RunConfig, train
from natgrad.train.harness import CurveRun
from natgrad.tune.spaces import load_space
from natgrad.workloads import get_workload
from simulated_crash import crash_then_resume, without_time

NEEDS_HEAVYBALL = pytest.mark.skipif(
    not heavyball_available(),
    reason='heavyball is not installed (pip install -e ".[peers]")',
)
PEERS = [
    "adamw",
    "muon",
    pytest.param("soap", marks=NEEDS_HEAVYBALL),
    pytest.param("shampoo", marks=NEEDS_HEAVYBALL),
]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.parametrize("name", PEERS)
def test_registry_entry_trains_digits_mlp(name):
    curve = CurveRun("digits_mlp", name, {"lr": 1e-2}, batch_size=64, steps=40).run_to_end()
    assert curve.status == "completed" and len(curve.losses) == 40
    assert _mean(curve.losses[-5:]) < 0.6 * _mean(curve.losses[:5])


@pytest.mark.parametrize("name", PEERS)
def test_resumed_run_equals_uninterrupted(tmp_path, monkeypatch, name):
    # digits_cnn: its fully connected hidden layer gives Muon a matrix; a linear decay
    # checks that the schedule resumes too
    config = RunConfig(
        "digits_cnn",
        name,
        steps=9,
        eval_every=3,
        checkpoint_every=3,
        hyperparameters={"schedule": "linear", "final_lr_fraction": 0.1},
    )
    reference = train(config, tmp_path / "reference")
    resumed = crash_then_resume(config, tmp_path / "crashed", monkeypatch, at_step=7)
    assert resumed.status == "completed"
    assert without_time(resumed.final) == without_time(reference.final)


@pytest.mark.parametrize(
    ("name", "setting", "argument"),
    [
        ("adamw", {"lr": -1.0}, "lr"),
        ("adamw", {"beta2": 1.0}, "beta2"),
        ("adamw", {"eps": -1e-8}, "eps"),
        ("muon", {"momentum": 1.5}, "momentum"),
        ("muon", {"adam_lr": -0.1}, "adam_lr"),
        ("muon", {"ns_steps": 0}, "ns_steps"),
        ("muon", {"adjust_lr_fn": "sqrt"}, "adjust_lr_fn"),
        ("muon", {"weight_decay": -0.5}, "weight_decay"),
        ("soap", {"shampoo_beta": 1.0}, "shampoo_beta"),
        ("soap", {"precondition_frequency": 0}, "precondition_frequency"),
        ("shampoo", {"beta1": -0.1}, "beta1"),
    ],
)
def test_bad_hyperparameter_raises_value_error_naming_it(name, setting, argument):
    model = get_workload("digits_cnn").build_model()
    spec = get_optimizer_spec(name)
    with pytest.raises(ValueError, match=rf"^{argument} must be"):
        spec.build(model, BuildContext("categorical"), {**spec.defaults(), **setting})


@pytest.mark.parametrize("name", ["soap", "shampoo"])
def test_without_heavyball_choosing_it_is_one_line_exit_2(tmp_path, capsys, monkeypatch, name):
    monkeypatch.setitem(sys.modules, "heavyball", None)  # import heavyball raises ImportError
    spec = get_optimizer_spec(name)
    with pytest.raises(MissingPeerPackage, match=r"pip install -e \"\.\[peers\]\""):
        spec.build(nn.Linear(3, 2), BuildContext("categorical"), spec.defaults())
    out = tmp_path / "run"
    code = main(
        ["train", "--workload", "digits_mlp", "--optimizer", name, "--steps", "2"]
        + ["--out", str(out)]
    )
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "heavyball" in error and "Traceback" not in error
    assert not out.exists()


@pytest.mark.parametrize("command", ["tune", "compare"])
def test_without_heavyball_tune_and_compare_refuse_before_any_trial(
    tmp_path, capsys, monkeypatch, command
):
    monkeypatch.setitem(sys.modules, "heavyball", None)
    out = tmp_path / "study"
    chosen = ["--optimizer", "soap"] if command == "tune" else ["--optimizers", "adam,soap"]
    code = main(
        [command, "--workload", "digits_mlp", *chosen, "--space", "restricted"]
        + ["--trials", "2", "--steps", "3", "--out", str(out)]
    )
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and 'pip install -e ".[peers]"' in error
    assert not out.exists()


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    vit = get_workload("fmnist_vit").build_model()
    names = {id(p): n for n, p in vit.named_parameters()}
    chosen = sorted(names[id(p)] for p in hidden_layer_matrices(vit))
    # the patch embedding (input layer), the head (output layer), the position
    # embedding, biases and norms go to AdamW
    assert chosen == sorted(
        f"blocks.{b}.{layer}.weight"
        for b in (0, 1)
        for layer in (
            "attention.query",
            "attention.key",
            "attention.value",
            "attention.output",
            "mlp.0",
            "mlp.2",
        )
    )
    cnn = get_workload("fmnist_cnn").build_model()
    assert [tuple(p.shape) for p in hidden_layer_matrices(cnn)] == [(1024, 3136)]


def test_muon_step_equals_torch_muon_and_adamw_side_by_side():
    """The documented usage (torch.optim.Muon on the hidden matrices, AdamW on the rest,
    stepped one after the other) is the reference for the combined optimizer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    twin = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    twin.load_state_dict(model.state_dict())
    combined = MuonAdamW(
        [model[2].weight],
        [p for n, p in model.named_parameters() if n != "2.weight"],
        lr=0.01,
        weight_decay=0.1,
    )
    muon = torch.optim.Muon(
        [twin[2].weight], lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"
    )
    adamw = torch.optim.AdamW(
        [p for n, p in twin.named_parameters() if n != "2.weight"], lr=0.01, weight_decay=0.1
    )
    inputs, targets = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(4):
        for net, optimizers in ((model, (combined,)), (twin, (muon, adamw))):
            for optimizer in optimizers:
                optimizer.zero_grad()
            nn.functional.cross_entropy(net(inputs), targets).backward()
            for optimizer in optimizers:
                optimizer.step()
    for mine, reference in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(mine, reference, rtol=0, atol=0)
    assert [g["algorithm"] for g in combined.param_groups] == ["muon", "adamw"]


@pytest.mark.parametrize("name", ["adamw", "muon", "soap", "shampoo"])
def test_each_has_both_search_spaces_that_build(name, capsys):
    for space in ("restricted", "full"):
        hyperparameters = load_space(name, space).to_hyperparameters(
            [0.5] * load_space(name, space).dimension, total_steps=10
        )
        assert set(hyperparameters) <= set(get_optimizer_spec(name).defaults())
    assert main(["optimizers", "--spaces"]) == 0
    listing = capsys.readouterr().out
    assert f"{name} / restricted:" in listing and f"{name} / full:" in listing


def test_muon_param_groups_added_later_name_their_rule():
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))
    optimizer = MuonAdamW([model[2].weight], [model[0].weight, model[0].bias], lr=0.01)
    with pytest.raises(ValueError, match="needs 'algorithm' in \\['adamw', 'muon'\\]"):
        optimizer.add_param_group({"params": [model[4].weight]})
    with pytest.raises(ValueError, match="2-D parameters only"):
        optimizer.add_param_group({"params": [model[4].bias], "algorithm": "muon"})
    optimizer.add_param_group({"params": [model[4].weight, model[4].bias], "algorithm": "adamw"})
    before = model[4].weight.detach().clone()
    model(torch.randn(3, 4)).square().sum().backward()
    optimizer.step()
    assert not torch.equal(model[4].weight, before)  # the added group is stepped
    assert optimizer.param_groups[-1]["betas"] == (0.9, 0.999)
