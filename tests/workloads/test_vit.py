"""fmnist_vit: the model's patches, K-FAC tracking its projections, training through the
Python API (expand and reduce) and through ``natgrad train``."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from natgrad.data import DatasetNotFoundError
from natgrad.optim.kfac import KFAC
from natgrad.workloads import get_workload
from natgrad.workloads.models import VisionTransformer


def test_patches_are_the_row_major_7x7_tiles():
    model = VisionTransformer()
    images = torch.arange(2 * 784, dtype=torch.float32).reshape(2, 1, 28, 28)
    patches = model.patches(images)
    assert patches.shape == (2, 16, 49)
    torch.testing.assert_close(patches[1, 5], images[1, 0, 7:14, 7:14].reshape(-1))
    torch.testing.assert_close(model.patches(images.flatten(1)), patches)


def _tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(width=16, depth=1, heads=2)


def test_kfac_tracks_every_projection_and_names_the_fallback_modules():
    with pytest.warns(UserWarning) as caught:
        opt = KFAC(_tiny_vit(), lr=0.1)
    names = sorted(layer.name for layer in opt.layers)
    assert names == sorted(
        ["embed", "head", "blocks.0.mlp.0", "blocks.0.mlp.2"]
        + [f"blocks.0.attention.{p}" for p in ("query", "key", "value", "output")]
    )
    message = str(caught[0].message)
    for expected in ("(root) (VisionTransformer", "blocks.0.norm1 (LayerNorm", "norm (LayerNorm"):
        assert expected in message


@pytest.mark.parametrize("sharing", ["expand", "reduce"])
def test_kfac_trains_the_vit_on_separable_data(sharing):
    model = _tiny_vit()
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 10, (64,), generator=generator)
    images = torch.randn(64, 1, 28, 28, generator=generator) * 0.3
    images[torch.arange(64), 0, labels, :] += 2.0  # the class is the bright row
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = KFAC.from_preset(
            "kfac_adaptive", model, likelihood="categorical", damping=0.1, sharing=sharing
        )

    def closure():
        outputs = model(images)
        return nn.functional.cross_entropy(outputs, labels), outputs

    losses = [float(opt.step(closure)) for _ in range(25)]
    assert all(layer.sharing == sharing for layer in opt.layers)
    assert losses[-1] < 0.3 * losses[0]


def test_natgrad_train_runs_kfac_on_fmnist_vit(tmp_path):
    try:
        get_workload("fmnist_vit").load_data(None)
    except DatasetNotFoundError as error:
        pytest.skip(f"dataset not installed: {error}")
    out = tmp_path / "vit"
    command = [sys.executable, "-m", "natgrad.cli", "--threads", "1", "train"]
    command += ["--workload", "fmnist_vit", "--optimizer", "kfac", "--steps", "6"]
    command += ["--eval-every", "3", "--set", "sharing=reduce", "--out", str(out), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert json.loads((out / "config.json").read_text())["hyperparameters"]["sharing"] == "reduce"
