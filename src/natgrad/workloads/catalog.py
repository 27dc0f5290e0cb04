"""The registered workloads. Each is model + data + likelihood + metrics + budget + target."""

from __future__ import annotations

from functools import partial

from torch import nn

from natgrad.data import load_splits
from natgrad.workloads.models import deep_autoencoder, mlp, simple_cnn, vision_transformer
from natgrad.workloads.workload import Split, Workload, WorkloadData, register_workload


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


def classification_task(dataset: str) -> dict:
    """The :class:`Workload` fields of a classifier of ``dataset``: integer labels as
    targets, scored by the categorical likelihood and the error rate."""
    return dict(
        load_data=partial(classification_data, dataset),
        likelihood_name="categorical",
        classification=True,
    )


def reconstruction_task(dataset: str) -> dict:
    """The :class:`Workload` fields of an autoencoder of ``dataset``: the flattened pixels
    as targets, scored by the Bernoulli likelihood."""
    return dict(
        load_data=partial(reconstruction_data, dataset),
        likelihood_name="bernoulli",
        classification=False,
    )


register_workload(
    Workload(
        name="fmnist_cnn",
        description="Choi et al.'s simple CNN (conv32-pool-conv64-pool-fc1024) on Fashion-MNIST",
        build_model=simple_cnn,
        **classification_task("fashion-mnist"),
        batch_size=256,
        steps=3000,
        target={"val_error": 0.10},
        eval_every=250,
    )
)
register_workload(
    Workload(
        name="fmnist_mlp",
        description="MLP 784-256-256-10 (ReLU) on Fashion-MNIST",
        build_model=partial(mlp, [784, 256, 256, 10]),
        **classification_task("fashion-mnist"),
        batch_size=128,
        steps=2000,
        target={"val_error": 0.13},
        eval_every=250,
    )
)
register_workload(
    Workload(
        name="fmnist_vit",
        description="Vision transformer (7x7 patches as 16 tokens, width 64, 2 pre-norm blocks "
        "of 4-head attention, mean-pooled head) on Fashion-MNIST",
        build_model=vision_transformer,
        **classification_task("fashion-mnist"),
        batch_size=128,
        steps=2000,
        target={"val_error": 0.16},
        eval_every=100,
    )
)
register_workload(
    Workload(
        name="fmnist_autoencoder",
        description="Deep autoencoder 784-1000-500-250-30-250-500-1000-784 (tanh) on Fashion-MNIST",
        build_model=deep_autoencoder,
        **reconstruction_task("fashion-mnist"),
        batch_size=1000,
        steps=1000,
        weight_decay=1e-5,
        target={"train_loss": 250.0},
        eval_every=50,
    )
)
register_workload(
    Workload(
        name="mnist_autoencoder",
        description="Deep autoencoder 784-1000-...-1000-784 (tanh) on the 5k MNIST subset",
        build_model=deep_autoencoder,
        **reconstruction_task("mnist-subset"),
        batch_size=500,
        steps=500,
        weight_decay=1e-5,
        target={"train_loss": 100.0},
        eval_every=50,
    )
)
register_workload(
    Workload(
        name="digits_mlp",
        description="MLP 64-64-10 (tanh) on scikit-learn's 8x8 digits",
        build_model=partial(mlp, [64, 64, 10], nn.Tanh),
        **classification_task("digits"),
        batch_size=64,
        steps=300,
        target={"val_error": 0.05},
        eval_every=50,
    )
)
register_workload(
    Workload(
        name="digits_cnn",
        description="The simple CNN (conv32-pool-conv64-pool-fc1024) on scikit-learn's 8x8 "
        "digits: its fc layer sees a 64 x 4 map",
        build_model=partial(simple_cnn, image_size=8),
        **classification_task("digits"),
        batch_size=64,
        steps=300,
        target={"val_error": 0.05},
        eval_every=50,
    )
)
register_workload(
    Workload(
        name="digits_logreg",
        description="Multinomial logistic regression on scikit-learn's 8x8 digits",
        build_model=partial(mlp, [64, 10]),
        **classification_task("digits"),
        batch_size=64,
        steps=300,
        target={"val_error": 0.06},
        eval_every=50,
    )
)
register_workload(
    Workload(
        name="mnist1d_mlp",
        description="MLP 40-100-100-10 (ReLU) on MNIST-1D generated locally",
        build_model=partial(mlp, [40, 100, 100, 10]),
        **classification_task("mnist1d"),
        batch_size=100,
        steps=2000,
        target={"val_error": 0.40},
        eval_every=200,
    )
)
