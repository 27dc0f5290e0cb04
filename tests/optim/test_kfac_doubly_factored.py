"""K-FAC with doubly-factored layers: exactness on rank-one inputs, selection, checkpoints."""

import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import natgrad
from kfac_settings import EXACT_ONE_STEP
from natgrad.precondition.doubly_factored import DoublyFactoredPreconditioner
from natgrad.precondition.kronecker import KroneckerPreconditioner


def _unit_rows(count, dim, generator):
    rows = torch.randn(count, dim, generator=generator)
    return rows / rows.norm(dim=1, keepdim=True)


def _rank_one_grid(channels, locations, generator):
    """Inputs k_i psi_j^T for every pair (i, j): equal norms, directions not orthogonal,
    so E[vec(a) vec(a)^T] = E[k k^T] ⊗ E[psi psi^T] exactly and both are full rank."""
    ks = 1.5 * _unit_rows(2 * channels, channels, generator)
    psis = 0.7 * _unit_rows(2 * locations, locations, generator)
    return torch.einsum("ic,jl->ijcl", ks, psis).reshape(-1, channels, locations)


def _step(optimizer, model, x, y):
    def closure():
        outputs = model(x)
        return 0.5 * ((outputs - y) ** 2).sum(dim=1).mean(), outputs

    optimizer.step(closure)
    return [p.detach().clone() for p in model.parameters()]


def test_on_rank_one_inputs_the_doubly_factored_step_is_the_exact_natural_gradient():
    # gaussian likelihood, one Linear: the Fisher is exactly A ⊗ I, and A = K ⊗ Psi here;
    # no damping (every factor has full rank), so any damping scheme gives the same step
    generator = torch.Generator().manual_seed(0)
    channels, locations, out = 3, 4, 2
    x = _rank_one_grid(channels, locations, generator)
    y = torch.randn(x.shape[0], out, generator=generator)
    results = {}
    for name in ("doubly", "full", "natural"):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Flatten(), nn.Linear(channels * locations, out, bias=False))
        if name in ("doubly", "full"):
            doubly_factored = ["1"] if name == "doubly" else "off"
            optimizer = natgrad.KFAC(
                model, damping=0.0, doubly_factored=doubly_factored, **EXACT_ONE_STEP
            )
        else:
            optimizer = natgrad.NaturalGradient(
                model, lr=1.0, damping=0.0, likelihood="gaussian", fisher="exact"
            )
        results[name] = _step(optimizer, model, x, y)
        if name == "doubly":
            assert isinstance(optimizer.preconditioners[0], DoublyFactoredPreconditioner)
    torch.testing.assert_close(results["doubly"], results["natural"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results["doubly"], results["full"], rtol=1e-4, atol=1e-5)


def test_on_general_inputs_it_differs_from_full_kfac():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(40, 3, 4, generator=generator)
    y = torch.randn(40, 2, generator=generator)
    results = []
    for choice in ("off", ["1"]):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
        optimizer = natgrad.KFAC(model, damping=1e-3, doubly_factored=choice, **EXACT_ONE_STEP)
        results.append(_step(optimizer, model, x, y))
    assert not torch.allclose(results[0][0], results[1][0], rtol=1e-2)


def test_conv_patches_are_channels_by_kernel_offsets():
    generator = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(3, 4, kernel_size=2, bias=False)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(4 * 3 * 3, 2))
    x = torch.randn(5, 3, 4, 4, generator=generator)
    optimizer = natgrad.KFAC(
        model,
        lr=0.1,
        damping=0.1,
        likelihood="gaussian",
        fisher="exact",
        stat_decay=0.0,
        doubly_factored=["0"],
    )
    _step(optimizer, model, x, torch.randn(5, 2, generator=generator))
    preconditioner = optimizer.preconditioner(conv)
    assert isinstance(preconditioner, DoublyFactoredPreconditioner)
    # reference: every patch (im2col, channel-major) as a 3 x 4 matrix, rank one by SVD
    patches = F.unfold(x, 2).transpose(1, 2).reshape(-1, 3, 4).double()
    U, S, Vh = torch.linalg.svd(patches)
    k = U[:, :, 0] * S[:, :1].sqrt()
    psi = Vh[:, 0, :] * S[:, :1].sqrt()
    torch.testing.assert_close(
        preconditioner.factors["K"].double(), k.T @ k / len(k), rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(
        preconditioner.factors["Psi"].double(), psi.T @ psi / len(k), rtol=1e-4, atol=1e-6
    )
    assert isinstance(optimizer.preconditioner(model[2]), KroneckerPreconditioner)


def test_auto_doubly_factors_large_flattened_maps_only():
    torch.manual_seed(0)
    big = nn.Linear(64 * 64, 3)  # 4096 inputs from a (64, 8, 8) map
    model = nn.Sequential(nn.Flatten(), big, nn.Tanh(), nn.Linear(3, 2))
    optimizer = natgrad.KFAC(
        model, lr=0.1, damping=0.1, likelihood="gaussian", doubly_factored="auto"
    )
    _step(optimizer, model, torch.randn(8, 64, 8, 8), torch.randn(8, 2))
    assert isinstance(optimizer.preconditioner(big), DoublyFactoredPreconditioner)
    assert optimizer.preconditioner(big).factors["K"].shape == (64, 64)
    assert isinstance(optimizer.preconditioner(model[3]), KroneckerPreconditioner)


def test_auto_keeps_full_kfac_when_the_map_shape_is_unknown():
    torch.manual_seed(0)
    model = nn.Linear(4096, 2)
    optimizer = natgrad.KFAC(
        model, lr=0.1, damping=0.1, likelihood="gaussian", doubly_factored="auto"
    )
    _step(optimizer, model, torch.randn(4, 4096), torch.randn(4, 2))
    assert isinstance(optimizer.preconditioner(model), KroneckerPreconditioner)


def test_a_named_layer_without_a_known_shape_says_how_to_give_it():
    model = nn.Sequential(nn.Linear(12, 2))
    optimizer = natgrad.KFAC(model, lr=0.1, damping=0.1, likelihood="gaussian", doubly_factored="0")
    with pytest.raises(ValueError, match=r"doubly_factored=\{'0': \(channels, locations\)\}"):
        _step(optimizer, model, torch.randn(4, 12), torch.randn(4, 2))


def test_an_explicit_shape_is_used_and_checked():
    model = nn.Sequential(nn.Linear(12, 2))
    optimizer = natgrad.KFAC(
        model, lr=0.1, damping=0.1, likelihood="gaussian", doubly_factored={"0": (4, 3)}
    )
    _step(optimizer, model, torch.randn(6, 12), torch.randn(6, 2))
    assert optimizer.preconditioners[0].factors["K"].shape == (4, 4)
    with pytest.raises(ValueError, match="channels \\* locations = 12"):
        natgrad.KFAC(model, lr=0.1, doubly_factored={"0": (5, 3)})
    with pytest.raises(ValueError, match="names no tracked layer: nope"):
        natgrad.KFAC(model, lr=0.1, doubly_factored=["nope"])


def test_checkpoint_round_trip_resumes_exactly():
    generator = torch.Generator().manual_seed(4)
    x, y = torch.randn(10, 4, 3, generator=generator), torch.randn(10, 2, generator=generator)

    def build():
        torch.manual_seed(5)
        model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
        optimizer = natgrad.KFAC(
            model, lr=0.5, damping=0.1, likelihood="gaussian", inv_every=2, doubly_factored=["1"]
        )
        return model, optimizer

    model, optimizer = build()
    for _ in range(3):
        _step(optimizer, model, x, y)
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    expected = _step(optimizer, model, x, y)
    resumed_model, resumed = build()
    resumed_model.load_state_dict(saved_model)
    resumed.load_state_dict(saved_optimizer)
    assert isinstance(resumed.preconditioners[0], DoublyFactoredPreconditioner)
    assert all(
        torch.equal(a, b)
        for a, b in zip(expected, _step(resumed, resumed_model, x, y), strict=True)
    )


def test_natgrad_train_doubly_factors_a_cnn_fc_layer(tmp_path):
    out = tmp_path / "cnn"
    command = [sys.executable, "-m", "natgrad.cli", "--threads", "1", "train"]
    command += ["--workload", "digits_cnn", "--optimizer", "kfac", "--steps", "30"]
    command += ["--eval-every", "30", "--set", "doubly_factored=7", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["final"]["val_error"] < 0.5  # ten classes: 0.9 by chance
    config = json.loads((out / "config.json").read_text())
    assert config["hyperparameters"]["doubly_factored"] == "7"
