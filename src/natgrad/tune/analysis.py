"""Statistics of the comparison protocol: best-of-K bootstrap, intervals, ranks, inclusions.

- Best-of-K (Choi et al. 2019, following Shallue et al. 2018): for each k, draw k of the K
  trials with replacement B times and take the best (lowest) validation value of each
  draw; the curve is the median over draws with the 2.5% and 97.5% quantiles. Failed
  trials take part in the draws with the worst value (1 for an error rate).
- Final error: mean over the re-run seeds with a Student-t 95% interval,
  ``mean +- t_{0.975, n-1} s / sqrt(n)``.
- Ranks: by mean. A rank interval follows from the score intervals, so the two never
  disagree: optimizer i can rank no better than 1 + #{j : high_j < low_i} (those whose
  whole interval lies below its own) and no worse than n - #{j : low_j > high_i}. Two
  optimizers whose intervals overlap therefore share the ranks they could swap. (A
  bootstrap of the seeds does not work with few seeds: with two seeds there are only
  four resampled means, which can all fall on one side while the t-interval overlaps.)
- Inclusions (Choi et al. section 3): a more general optimizer must not be worse than
  one it includes, beyond the intervals; if it is, its search space is too small (or
  under-sampled) to contain the included optimizer's good region.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from natgrad.tune.spaces import SearchSpace

# (included, more general): SGD in Momentum in RMSProp/Adam; SGD in Nesterov in NAdam.
INCLUSIONS: tuple[tuple[str, str], ...] = (
    ("sgd", "momentum"),
    ("sgd", "nesterov"),
    ("momentum", "rmsprop"),
    ("momentum", "adam"),
    ("nesterov", "nadam"),
)
BOUNDARY_TOLERANCE = 0.02


def failure_value(values: Sequence[float | None], metric: str) -> float:
    """The value a failed trial takes: 1 for error rates, else the worst finite value seen."""
    if metric.endswith("error"):
        return 1.0
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return max(finite) if finite else math.nan


def best_of_k(
    values: Sequence[float | None], metric: str, resamples: int, seed: int = 0
) -> dict[str, list[float]]:
    """Bootstrap best-of-k curve for k = 1..K: median and 95% band of the min of k draws."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    worst = failure_value(values, metric)
    filled = np.array([v if v is not None and math.isfinite(v) else worst for v in values])
    count = len(filled)
    rng = np.random.default_rng(seed)
    curve: dict[str, list[float]] = {"k": [], "median": [], "low": [], "high": []}
    for k in range(1, count + 1):
        draws = filled[rng.integers(0, count, size=(resamples, k))].min(axis=1)
        curve["k"].append(k)
        curve["median"].append(float(np.median(draws)))
        curve["low"].append(float(np.quantile(draws, 0.025)))
        curve["high"].append(float(np.quantile(draws, 0.975)))
    return curve


def mean_interval(
    samples: Sequence[float], level: float = 0.95, bounds: tuple[float, float] | None = None
) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean; a single sample has zero width.

    ``bounds`` clips the interval to the metric's range (an error rate lies in [0, 1]);
    with few seeds the unclipped t-interval can reach past it.
    """
    values = np.asarray(samples, dtype=float)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if values.size < 2:
        return mean, mean, mean
    half = (
        stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    )
    low, high = mean - float(half), mean + float(half)
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return mean, low, high


def rank_with_intervals(
    samples: dict[str, Sequence[float]], bounds: tuple[float, float] | None = None
) -> list[dict]:
    """Optimizers ranked by mean (1 = best), each with its t-interval and the rank
    interval those intervals allow (see the module docstring)."""
    names = sorted(samples, key=lambda name: (np.mean(samples[name]), name))
    intervals = {name: mean_interval(samples[name], bounds=bounds) for name in names}
    table = []
    for position, name in enumerate(names):
        mean, low, high = intervals[name]
        surely_better = sum(1 for other in names if other != name and intervals[other][2] < low)
        surely_worse = sum(1 for other in names if other != name and intervals[other][1] > high)
        table.append(
            {
                "optimizer": name,
                "rank": position + 1,
                "rank_interval": [1 + surely_better, len(names) - surely_worse],
                "mean": mean,
                "interval": [low, high],
                "values": [float(v) for v in samples[name]],
            }
        )
    return table


def inclusion_checks(ranking: list[dict], space: str) -> list[dict]:
    """Check each inclusion pair present: general worse beyond the intervals is a violation."""
    by_name = {entry["optimizer"]: entry for entry in ranking}
    checks = []
    for included, general in INCLUSIONS:
        if included not in by_name or general not in by_name:
            continue
        small, big = by_name[included], by_name[general]
        consistent = not big["interval"][0] > small["interval"][1]
        message = (
            f"{general} ({space}) is not worse than {included}, which it includes"
            if consistent
            else f"{general} ({space}) is worse than {included} ({big['mean']:.4f} vs "
            f"{small['mean']:.4f}, intervals apart) although it includes it: the {space} search "
            f"space of {general} is too small or too sparsely sampled"
        )
        checks.append(
            {"included": included, "general": general, "consistent": consistent, "message": message}
        )
    return checks


def boundary_warnings(space: SearchSpace, point: Sequence[float], label: str) -> list[str]:
    """Messages for each coordinate of the best point within 2% of its range's edge."""
    messages = []
    for dimension, u in zip(space.dimensions, point, strict=True):
        if BOUNDARY_TOLERANCE <= u <= 1 - BOUNDARY_TOLERANCE:
            continue
        edge = "lower" if u < BOUNDARY_TOLERANCE else "upper"
        messages.append(
            f"{label}: best {dimension.name} = {dimension.value(u):.4g} lies at the {edge} edge "
            f"of its search range ({dimension.describe()}); consider widening it"
        )
    return messages


def rank_flips(first: list[dict], second: list[dict]) -> list[dict]:
    """Pairs ordered differently by two rankings; whether their intervals are apart in both."""
    first_mean = {e["optimizer"]: e for e in first}
    second_mean = {e["optimizer"]: e for e in second}
    names = sorted(set(first_mean) & set(second_mean))
    flips = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            before = first_mean[a]["mean"] - first_mean[b]["mean"]
            after = second_mean[a]["mean"] - second_mean[b]["mean"]
            if before * after < 0:
                winner_first, winner_second = (a, b) if before < 0 else (b, a)
                separated = _apart(first_mean[a], first_mean[b]) and _apart(
                    second_mean[a], second_mean[b]
                )
                flips.append(
                    {
                        "first_better": winner_first,
                        "then_better": winner_second,
                        "intervals_apart": separated,
                    }
                )
    return flips


def _apart(one: dict, other: dict) -> bool:
    """Whether the two 95% intervals do not overlap."""
    return one["interval"][1] < other["interval"][0] or other["interval"][1] < one["interval"][0]


def steps_to_target(history: Sequence[Sequence[float]], target: float) -> int | None:
    """First evaluated step whose metric (column 2 of a compact history) is <= target."""
    for row in history:
        if row[2] is not None and math.isfinite(row[2]) and row[2] <= target:
            return int(row[0])
    return None
