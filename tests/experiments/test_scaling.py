"""The critical-batch-size criterion on synthetic steps-to-target curves with known answers."""

from __future__ import annotations

import pytest

from natgrad.experiments.scaling import (
    critical_batch_size,
    fit_scaling_model,
    perfect_scaling_steps,
)

BATCHES = [2**k for k in range(11)]


def plateau_curve(examples: float, floor: float) -> list[float]:
    """Perfect scaling S = examples / B until the step count reaches ``floor``."""
    return [max(examples / b, floor) for b in BATCHES]


def test_perfect_scaling_then_plateau_crosses_at_a_measured_batch_size():
    # E = max(4096, 64 B): twice the minimum exactly at B = 128
    result = critical_batch_size(BATCHES, plateau_curve(4096, 64))
    assert result.bound == "estimate"
    assert result.value == pytest.approx(128.0)
    assert result.reference_examples == 4096


def test_crossing_between_batch_sizes_is_interpolated_on_log_axes():
    # E = 48 B past the knee (slope 1 in log-log), so E = 8192 at B = 8192 / 48
    result = critical_batch_size(BATCHES, plateau_curve(4096, 48))
    assert result.value == pytest.approx(8192 / 48)


def test_reference_is_the_most_efficient_batch_size_not_the_smallest():
    steps = plateau_curve(4096, 64)
    steps[0] = 10_000  # the smallest batch wastes examples (e.g. unstable at small B)
    result = critical_batch_size(BATCHES, steps)
    assert result.reference_batch == 2 and result.value == pytest.approx(128.0)


def test_unreached_batch_size_with_a_large_budget_gives_an_upper_bound():
    steps = plateau_curve(4096, 64)[:7] + [None] * 4  # not reached from B = 128 on
    result = critical_batch_size(BATCHES, steps, budgets=[1000] * 11)
    assert result.bound == "upper"
    # the budget bounds E(128) >= 128_000 >= 8192, so B_crit lies in (64, 128]
    assert 64 < result.value <= 128


def test_unreached_batch_size_with_a_small_budget_leaves_a_lower_bound():
    steps = plateau_curve(4096, 64)[:7] + [None] * 4
    result = critical_batch_size(BATCHES, steps, budgets=[10] * 11)
    assert (result.bound, result.value) == ("lower", 64.0)


def test_curve_that_never_doubles_gives_the_largest_batch_as_a_lower_bound():
    result = critical_batch_size(BATCHES, plateau_curve(1 << 20, 1))
    assert (result.bound, result.value) == ("lower", 1024.0)
    assert critical_batch_size(BATCHES, [None] * 11).value is None


def test_perfect_scaling_line_passes_through_the_reference_point():
    result = critical_batch_size(BATCHES, plateau_curve(4096, 64))
    line = perfect_scaling_steps(BATCHES, result)
    assert line[0] == 4096 and line[-1] == 4


@pytest.mark.parametrize(
    "batches, steps, message",
    [([4, 2], [1, 1], "increasing"), ([1, 2], [1], "same length")],
)
def test_bad_curves_are_rejected(batches, steps, message):
    with pytest.raises(ValueError, match=message):
        critical_batch_size(batches, steps)


def test_fit_recovers_the_model_it_fits():
    steps = [50.0 * (1 + 300 / b) for b in BATCHES]
    fit = fit_scaling_model(BATCHES, steps)
    assert fit.critical_batch == pytest.approx(300, rel=0.01)
    assert fit.min_steps == pytest.approx(50, rel=0.01) and fit.rms_log_error < 1e-2
    assert fit.min_examples == pytest.approx(15_000, rel=0.02)


def test_fit_is_not_moved_far_by_one_badly_tuned_batch_size():
    steps = [50.0 * (1 + 300 / b) for b in BATCHES]
    steps[5] *= 3  # B = 32 under-tuned: E(32) is three times too large
    crossing = critical_batch_size(BATCHES, steps)
    fit = fit_scaling_model(BATCHES, steps)
    assert crossing.value < 40  # the first crossing jumps to the bad point
    assert 150 < fit.critical_batch < 600
    assert fit_scaling_model(BATCHES[:2], steps[:2]) is None
