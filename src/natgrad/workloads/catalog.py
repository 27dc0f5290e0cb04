"""The registered workloads. Each is model + data + likelihood + metrics + budget + target.

A classifier reads integer labels and is scored by a categorical likelihood; an
autoencoder reconstructs the flattened pixels under a Bernoulli likelihood. A new
workload is one ``register`` call below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import nn

from natgrad.data import load_splits
from natgrad.workloads.models import deep_autoencoder, mlp, simple_cnn, vision_transformer
from natgrad.workloads.registry import Split, Workload, WorkloadData, register_workload


def classification_data(dataset: str, data_dir: str | None) -> WorkloadData:
    """Inputs as stored by the data layer, integer class labels as targets."""
    splits = load_splits(dataset, data_dir)
    return WorkloadData(
        train=Split(splits.train_x, splits.train_y),
        val=Split(splits.val_x, splits.val_y),
        test=Split(splits.test_x, splits.test_y),
    )


def reconstruction_data(dataset: str, data_dir: str | None) -> WorkloadData:
    """Autoencoder data: the targets are the flattened pixel intensities in [0, 1]."""
    splits = load_splits(dataset, data_dir)

    def split(inputs):
        return Split(inputs, inputs.flatten(1))

    return WorkloadData(
        train=split(splits.train_x), val=split(splits.val_x), test=split(splits.test_x)
    )


@dataclass(frozen=True)
class Task:
    """What a workload's targets are and how its outputs are scored."""

    load_data: Callable[[str, str | None], WorkloadData]
    likelihood_name: str
    classification: bool


CLASSIFICATION = Task(classification_data, "categorical", classification=True)
RECONSTRUCTION = Task(reconstruction_data, "bernoulli", classification=False)


def register(
    task: Task,
    name: str,
    description: str,
    build_model: Callable[[], nn.Module],
    dataset: str,
    *,
    batch_size: int,
    steps: int,
    target: dict[str, float],
    eval_every: int,
    weight_decay: float = 0.0,
) -> Workload:
    """Register the workload ``name``: ``task`` on ``dataset`` with its budget and target."""
    return register_workload(
        Workload(
            name=name,
            description=description,
            build_model=build_model,
            load_data=partial(task.load_data, dataset),
            likelihood_name=task.likelihood_name,
            classification=task.classification,
            batch_size=batch_size,
            steps=steps,
            weight_decay=weight_decay,
            target=target,
            eval_every=eval_every,
        )
    )


register(
    CLASSIFICATION,
    "fmnist_cnn",
    "Choi et al.'s simple CNN (conv32-pool-conv64-pool-fc1024) on Fashion-MNIST",
    simple_cnn,
    "fashion-mnist",
    batch_size=256,
    steps=3000,
    target={"val_error": 0.10},
    eval_every=250,
)
register(
    CLASSIFICATION,
    "fmnist_mlp",
    "MLP 784-256-256-10 (ReLU) on Fashion-MNIST",
    partial(mlp, [784, 256, 256, 10]),
    "fashion-mnist",
    batch_size=128,
    steps=2000,
    target={"val_error": 0.13},
    eval_every=250,
)
register(
    CLASSIFICATION,
    "fmnist_vit",
    "Vision transformer (7x7 patches as 16 tokens, width 64, 2 pre-norm blocks "
    "of 4-head attention, mean-pooled head) on Fashion-MNIST",
    vision_transformer,
    "fashion-mnist",
    batch_size=128,
    steps=2000,
    target={"val_error": 0.16},
    eval_every=100,
)
register(
    RECONSTRUCTION,
    "fmnist_autoencoder",
    "Deep autoencoder 784-1000-500-250-30-250-500-1000-784 (tanh) on Fashion-MNIST",
    deep_autoencoder,
    "fashion-mnist",
    batch_size=1000,
    steps=1000,
    target={"train_loss": 250.0},
    eval_every=50,
    weight_decay=1e-5,
)
register(
    RECONSTRUCTION,
    "mnist_autoencoder",
    "Deep autoencoder 784-1000-...-1000-784 (tanh) on the 5k MNIST subset",
    deep_autoencoder,
    "mnist-subset",
    batch_size=500,
    steps=500,
    target={"train_loss": 100.0},
    eval_every=50,
    weight_decay=1e-5,
)
register(
    CLASSIFICATION,
    "digits_mlp",
    "MLP 64-64-10 (tanh) on scikit-learn's 8x8 digits",
    partial(mlp, [64, 64, 10], nn.Tanh),
    "digits",
    batch_size=64,
    steps=300,
    target={"val_error": 0.05},
    eval_every=50,
)
register(
    CLASSIFICATION,
    "digits_cnn",
    "The simple CNN (conv32-pool-conv64-pool-fc1024) on scikit-learn's 8x8 "
    "digits: its fc layer sees a 64 x 4 map",
    partial(simple_cnn, image_size=8),
    "digits",
    batch_size=64,
    steps=300,
    target={"val_error": 0.05},
    eval_every=50,
)
register(
    CLASSIFICATION,
    "digits_logreg",
    "Multinomial logistic regression on scikit-learn's 8x8 digits",
    partial(mlp, [64, 10]),
    "digits",
    batch_size=64,
    steps=300,
    target={"val_error": 0.06},
    eval_every=50,
)
register(
    CLASSIFICATION,
    "mnist1d_mlp",
    "MLP 40-100-100-10 (ReLU) on MNIST-1D generated locally",
    partial(mlp, [40, 100, 100, 10]),
    "mnist1d",
    batch_size=100,
    steps=2000,
    target={"val_error": 0.40},
    eval_every=200,
)
