"""Search spaces: every shipped file loads, maps the unit cube correctly, and fits the registry."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import tomllib

from natgrad.optim import OPTIMIZERS, get_optimizer_spec
from natgrad.tune.spaces import Dimension, SearchSpace, list_spaces, load_space

FIRST_ORDER = ["sgd", "momentum", "nesterov", "rmsprop", "adam", "nadam"]
ALL_SPACES = [(o, s) for o in FIRST_ORDER for s in ("restricted", "full")]


def test_every_first_order_optimizer_has_both_spaces():
    listing = list_spaces()
    for optimizer in FIRST_ORDER:
        assert listing[optimizer] == ["full", "restricted"]
    assert set(listing) <= set(OPTIMIZERS)


@pytest.mark.parametrize(("optimizer", "space"), ALL_SPACES)
def test_corners_and_centre_map_to_valid_hyperparameters(optimizer, space):
    search_space = load_space(optimizer, space)
    spec = get_optimizer_spec(optimizer)
    for u in (0.0, 0.5, 1.0):
        hp = search_space.to_hyperparameters([u] * search_space.dimension, total_steps=1000)
        assert set(hp) <= set(spec.defaults())
        assert "lr" in hp and hp["lr"] > 0
        for d in search_space.dimensions:
            assert d.low - 1e-12 <= hp[d.name] / (1000 if d.fraction_of_total_steps else 1)
            assert hp[d.name] / (1000 if d.fraction_of_total_steps else 1) <= d.high + 1e-12
        for name, value in search_space.fixed.items():
            assert hp[name] == value


@pytest.mark.parametrize("optimizer", FIRST_ORDER)
def test_restricted_space_searches_only_the_learning_rate(optimizer):
    restricted = load_space(optimizer, "restricted")
    assert [d.name for d in restricted.dimensions] == ["lr"]
    assert restricted.fixed.get("eps", 1e-8) == 1e-8
    for name in ("momentum", "beta1"):
        assert restricted.fixed.get(name, 0.9) == 0.9


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam", "nadam"])
def test_full_space_searches_eps_over_many_decades(optimizer):
    eps = {d.name: d for d in load_space(optimizer, "full").dimensions}["eps"]
    assert eps.scale == "log"
    assert math.log10(eps.high / eps.low) >= 10


def test_scales_map_the_unit_interval_as_written():
    log = Dimension("lr", "log", 1e-4, 1.0)
    assert log.value(0.0) == pytest.approx(1e-4)
    assert log.value(0.25) == pytest.approx(1e-3)
    assert log.value(1.0) == pytest.approx(1.0)
    linear = Dimension("x", "linear", 2.0, 4.0)
    assert linear.value(0.75) == pytest.approx(3.5)
    log1m = Dimension("momentum", "log1m", 0.0, 0.999)
    assert log1m.value(0.0) == pytest.approx(0.0)
    assert log1m.value(1 / 3) == pytest.approx(0.9)
    assert log1m.value(2 / 3) == pytest.approx(0.99)
    assert log1m.value(1.0) == pytest.approx(0.999)


def test_full_adam_point_maps_to_named_hyperparameters():
    space = load_space("adam", "full")
    names = [d.name for d in space.dimensions]
    point = [0.5] * space.dimension
    point[names.index("beta1")] = 1 / 3
    point[names.index("decay_steps")] = 1.0
    hp = space.to_hyperparameters(point, total_steps=400)
    assert hp["beta1"] == pytest.approx(0.9)
    assert hp["decay_steps"] == 400 and isinstance(hp["decay_steps"], int)
    assert hp["schedule"] == "linear"
    assert {"lr", "beta1", "beta2", "eps", "final_lr_fraction"} <= set(hp)


def test_describe_and_to_dict():
    space = load_space("momentum", "full")
    text = space.describe()
    assert "1 - momentum in [0.001, 1]" in text and "schedule" in text
    as_dict = space.to_dict()
    assert as_dict["optimizer"] == "momentum" and as_dict["space"] == "full"
    assert [d["name"] for d in as_dict["search"]] == [d.name for d in space.dimensions]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: load_space("lbfgs", "full"), "optimizer 'lbfgs'.*valid: adam"),
        (lambda: load_space("adam", "huge"), "space 'huge'.*valid: full, restricted"),
        (lambda: load_space("adam", "full").to_hyperparameters([0.5]), "point must have 6"),
        (lambda: load_space("sgd", "restricted").to_hyperparameters([1.5]), r"\[0, 1\]"),
        (lambda: load_space("sgd", "full").to_hyperparameters([0.5] * 3), "total_steps"),
        (lambda: Dimension("lr", "log", 0.0, 1.0), "low > 0"),
        (lambda: Dimension("lr", "cubic", 0.1, 1.0), "scale of 'lr'"),
        (lambda: Dimension("momentum", "log1m", 0.0, 1.0), "high < 1"),
        (lambda: Dimension("lr", "linear", 2.0, 1.0), "low must be <= high"),
    ],
)
def test_errors_are_clear(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_space_objects_can_be_built_directly():
    space = SearchSpace(
        "sgd", "custom", (Dimension("lr", "log", 0.01, 1.0),), {"schedule": "cosine"}
    )
    assert space.to_hyperparameters([1.0]) == {"schedule": "cosine", "lr": pytest.approx(1.0)}


def test_every_shipped_space_maps_to_hyperparameters_its_optimizer_accepts():
    for optimizer, names in list_spaces().items():
        assert optimizer in OPTIMIZERS, optimizer
        for name in names:
            space = load_space(optimizer, name)
            for corner in (0.0, 0.5, 1.0):
                point = [corner] * len(space.dimensions)
                values = space.to_hyperparameters(point, total_steps=100)
                assert set(values) <= set(OPTIMIZERS[optimizer].defaults())


def test_an_experiments_spaces_load_from_its_sub_folder():
    listing = list_spaces("batch-scaling")
    assert set(listing) == {"sgd", "momentum", "nesterov", "adam", "kfac", "kfac_adaptive"}
    assert all(names == ["batch-scaling"] for names in listing.values())
    assert "batch-scaling" not in list_spaces()  # the tuner's own listing is unchanged
    space = load_space("momentum", "batch-scaling", experiment="batch-scaling")
    assert [(d.name, d.scale) for d in space.dimensions] == [("lr", "log"), ("momentum", "log1m")]
    assert space.fixed == {"schedule": "constant"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: list_spaces("nope"),
            "no search spaces of experiment 'nope'; valid: batch-scaling",
        ),
        (
            lambda: load_space("rmsprop", "batch-scaling", experiment="batch-scaling"),
            "no batch-scaling search space for optimizer 'rmsprop'; valid: adam, kfac",
        ),
        (
            lambda: load_space("sgd", "full", experiment="batch-scaling"),
            "unknown space 'full' for 'sgd'; valid: batch-scaling",
        ),
    ],
)
def test_an_experiments_spaces_name_what_is_missing(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_package_data_ships_every_space_file():
    """A non-editable install holds only the files pyproject's package-data names."""
    root = Path(__file__).resolve().parents[2]
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    package = root / "src" / "natgrad"
    shipped = {
        path for pattern in setuptools["package-data"]["natgrad"] for path in package.glob(pattern)
    }
    space_files = set((package / "tune" / "spaces").rglob("*.json"))
    assert space_files and space_files <= shipped
