"""Every registered workload: data shapes, a forward pass and a finite loss."""

from __future__ import annotations

import pytest
import torch

from natgrad.data import DatasetNotFoundError
from natgrad.workloads import WORKLOADS, get_workload
from natgrad.workloads.models import deep_autoencoder, simple_cnn


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_forward_pass_and_loss(name: str) -> None:
    workload = get_workload(name)
    try:
        data = workload.load_data(None)
    except DatasetNotFoundError as error:
        pytest.skip(f"dataset not installed: {error}")
    assert len(data.train) > len(data.val) > 0 and len(data.test) > 0
    torch.manual_seed(0)
    model = workload.build_model()
    inputs, targets = data.train.inputs[:8], data.train.targets[:8]
    outputs = model(inputs)
    loss = workload.loss(outputs, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    if workload.classification:
        assert outputs.shape == (8, 10)
        assert targets.dtype == torch.int64
    else:
        assert outputs.shape == targets.shape == (8, 784)
        assert float(targets.min()) >= 0.0 and float(targets.max()) <= 1.0


def test_simple_cnn_architecture() -> None:
    model = simple_cnn()
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [
        (32, 1, 5, 5),
        (32,),
        (64, 32, 5, 5),
        (64,),
        (1024, 3136),
        (1024,),
        (10, 1024),
        (10,),
    ]


def test_autoencoder_has_a_linear_code_layer() -> None:
    model = deep_autoencoder()
    linear_sizes = [m.out_features for m in model if isinstance(m, torch.nn.Linear)]
    assert linear_sizes == [1000, 500, 250, 30, 250, 500, 1000, 784]
    kinds = [type(m).__name__ for m in model]
    code = kinds.index("Linear", 0)
    # the layer producing the 30-unit code is followed directly by the next Linear
    linears = [i for i, k in enumerate(kinds) if k == "Linear"]
    assert kinds[linears[3] + 1] == "Linear"
    assert kinds.count("Tanh") == 6 and code == 1
