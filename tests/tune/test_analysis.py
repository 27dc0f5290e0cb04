"""Statistics of the comparison against exact or independent references."""

import math

import numpy as np
import pytest
from scipy import stats

from natgrad.tune import analysis
from natgrad.tune.spaces import load_space


def exact_min_quantile(values, k, q):
    """Quantile q of the min of k draws with replacement: P(min <= v_(j)) = 1 - (1 - j/K)^k."""
    ordered = sorted(values)
    count = len(ordered)
    for j, value in enumerate(ordered, start=1):
        if 1 - (1 - j / count) ** k >= q:
            return value
    return ordered[-1]


def test_best_of_k_matches_the_exact_distribution_of_the_minimum():
    values = [5.0, 4.0, 3.0, 2.0, 1.0]
    curve = analysis.best_of_k(values, "val_loss", resamples=20000, seed=1)
    assert curve["k"] == [1, 2, 3, 4, 5]
    for k, median in zip(curve["k"], curve["median"], strict=True):
        assert median == exact_min_quantile(values, k, 0.5)
    assert curve["low"][0] == 1.0 and curve["high"][0] == 5.0
    assert all(a >= b for a, b in zip(curve["median"], curve["median"][1:], strict=False))


def test_failed_trials_count_as_the_worst_value():
    assert analysis.failure_value([0.2, None], "val_error") == 1.0
    assert analysis.failure_value([0.2, 0.7, None], "val_loss") == 0.7
    curve = analysis.best_of_k([None, None, None], "val_error", resamples=50)
    assert curve["median"] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="resamples"):
        analysis.best_of_k([1.0], "val_error", resamples=0)


def test_mean_interval_is_the_student_t_interval():
    samples = [0.11, 0.13, 0.12, 0.16]
    mean, low, high = analysis.mean_interval(samples)
    ref_low, ref_high = stats.t.interval(
        0.95, len(samples) - 1, loc=np.mean(samples), scale=stats.sem(samples)
    )
    assert mean == pytest.approx(np.mean(samples))
    assert (low, high) == pytest.approx((ref_low, ref_high))
    assert analysis.mean_interval([0.3]) == (0.3, 0.3, 0.3)


def ranking(**groups):
    return analysis.rank_with_intervals(groups)


def test_ranks_and_rank_intervals():
    table = ranking(adam=[0.10, 0.11, 0.10], sgd=[0.30, 0.31, 0.29], momentum=[0.20, 0.21, 0.19])
    assert [e["optimizer"] for e in table] == ["adam", "momentum", "sgd"]
    assert [e["rank_interval"] for e in table] == [[1, 1], [2, 2], [3, 3]]
    close = ranking(a=[0.10, 0.20, 0.15], b=[0.12, 0.18, 0.16])
    assert close[0]["rank_interval"] == [1, 2]


def test_two_seeds_with_overlapping_intervals_share_their_ranks():
    """The issue's case: SGD's mean is best but its 2-seed interval overlaps Adam's."""
    table = ranking(sgd=[0.100, 0.102], adam=[0.103, 0.110], rmsprop=[0.30, 0.31])
    by_name = {e["optimizer"]: e for e in table}
    assert by_name["sgd"]["interval"][1] > by_name["adam"]["interval"][0]
    assert by_name["sgd"]["rank_interval"] == [1, 2] == by_name["adam"]["rank_interval"]


def test_rank_intervals_agree_with_the_score_intervals():
    rng = np.random.default_rng(0)
    for _ in range(200):
        groups = {
            f"o{i}": list(
                rng.normal(rng.uniform(0, 1), rng.uniform(0.001, 0.2), rng.integers(1, 5))
            )
            for i in range(rng.integers(2, 6))
        }
        table = ranking(**groups)
        for one in table:
            assert one["rank_interval"][0] <= one["rank"] <= one["rank_interval"][1]
            for other in table:
                if one["mean"] >= other["mean"]:
                    continue
                (low, high), (other_low, other_high) = one["rank_interval"], other["rank_interval"]
                if one["interval"][1] < other["interval"][0]:  # apart: surely better
                    assert low < other_low and high < other_high
                else:  # overlapping: they could swap, so their rank intervals overlap
                    assert other_low <= high and low <= other_high


def test_inclusion_check_names_the_space_that_is_too_small():
    table = ranking(momentum=[0.10, 0.11, 0.10], adam=[0.30, 0.31, 0.29], sgd=[0.12, 0.13, 0.12])
    checks = {(c["included"], c["general"]): c for c in analysis.inclusion_checks(table, "full")}
    assert checks[("momentum", "adam")]["consistent"] is False
    assert "full search space of adam is too small" in checks[("momentum", "adam")]["message"]
    assert checks[("sgd", "momentum")]["consistent"] is True
    overlapping = ranking(momentum=[0.10, 0.14, 0.12], adam=[0.11, 0.16, 0.13])
    assert analysis.inclusion_checks(overlapping, "full")[0]["consistent"] is True


def test_boundary_warning_when_the_best_point_is_on_an_edge():
    space = load_space("sgd", "restricted")
    (message,) = analysis.boundary_warnings(space, [0.995], "sgd/restricted")
    assert "upper edge" in message and "lr" in message
    assert analysis.boundary_warnings(space, [0.01], "x")[0].count("lower edge") == 1
    assert analysis.boundary_warnings(space, [0.5], "x") == []


def test_rank_flips_and_steps_to_target():
    restricted = ranking(momentum=[0.10, 0.10], adam=[0.20, 0.20], sgd=[0.30, 0.30])
    full = ranking(momentum=[0.10, 0.10], adam=[0.05, 0.05], sgd=[0.30, 0.30])
    assert analysis.rank_flips(restricted, full) == [
        {"first_better": "momentum", "then_better": "adam", "intervals_apart": True}
    ]
    noisy = ranking(momentum=[0.10, 0.30], adam=[0.05, 0.25], sgd=[0.30, 0.30])
    assert analysis.rank_flips(restricted, noisy)[0]["intervals_apart"] is False
    assert analysis.rank_flips(restricted, restricted) == []
    history = [[0, 0.0, 0.9, math.nan], [50, 1.0, 0.2, 0.5], [100, 2.0, 0.04, 0.1]]
    assert analysis.steps_to_target(history, 0.05) == 100
    assert analysis.steps_to_target(history, 0.01) is None


def test_mean_interval_is_clipped_to_the_metric_range() -> None:
    samples = [0.0, 0.0, 0.09]
    mean, low, high = analysis.mean_interval(samples)
    assert low < 0.0  # the raw t-interval reaches below zero with three seeds
    clipped_mean, clipped_low, clipped_high = analysis.mean_interval(samples, bounds=(0.0, 1.0))
    assert (clipped_mean, clipped_low, clipped_high) == (mean, 0.0, high)
