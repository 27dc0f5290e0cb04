"""The noisy quadratic model (Zhang et al. 2019): critical batch size of four optimizers.

The loss is a diagonal quadratic L(theta) = 1/2 sum_i h_i theta_i^2 with h_i = 1 / i,
i = 1..d. A mini-batch of size B gives the gradient h_i theta_i + eps_i with
Var(eps_i) = h_i / B (the noise covariance is the curvature over B, as for the Fisher
of a well-specified model). The optimizers are heavy-ball momentum on the
preconditioned gradient,

    v <- beta v - lr h_i^(-p) (h_i theta_i + eps_i),    theta <- theta + v,

with p = 0, beta = 0 (SGD); p = 0, beta tuned (momentum); p = 1/2, beta tuned (Adam-like
diagonal preconditioning); p = 1, beta tuned (K-FAC-like exact curvature).

Every dimension is linear with additive noise, so the second moments of x = (theta, v)
evolve exactly: M_{t+1} = A M_t A^T + Q, A = [[1 - a h, beta], [-a h, beta]],
Q = a^2 (h / B) [[1, 1], [1, 1]], a = lr h^(-p). With M* the fixed point (a discrete
Lyapunov equation), M_t = A^t (M_0 - M*) (A^t)^T + M*, and the expected loss is
1/2 sum_i h_i (M_t)_11. A^t comes from repeated squaring, so a step count costs
O(log t) 2x2 products. The spectrum is kept exact in its trace and grouped into
``levels`` log-spaced bands of equal curvature (the mean of 1 / i over the band, weighted
by its size). theta_0 has E theta_i^2 = 1, v_0 = 0.

For each optimizer and batch size, the expected loss is computed for every learning
rate and momentum of a grid; steps to the target = the first step at which the
expected loss is <= target (a geometric scan, then bisection inside the bracket). The
best grid point gives S(B); the critical batch size follows
:mod:`natgrad.experiments.scaling` (examples to the target twice their minimum).
Configurations whose expected dynamics are unstable (spectral radius >= 1 in some
band) are not admitted.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from natgrad.experiments.experiment import (
    PRESET_OPTION,
    Experiment,
    register_experiment,
    write_results,
)
from natgrad.experiments.scaling import (
    critical_batch_size,
    examples_to_target,
    fit_scaling_model,
)

NQM_OPTIMIZERS: dict[str, dict] = {
    "sgd": {"power": 0.0, "momentum": False, "label": "SGD"},
    "momentum": {"power": 0.0, "momentum": True, "label": "momentum"},
    "adam": {"power": 0.5, "momentum": True, "label": "Adam-like (h^-1/2)"},
    "kfac": {"power": 1.0, "momentum": True, "label": "K-FAC-like (h^-1)"},
}
MOMENTA = (0.0, 0.5, 0.75, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999)


@dataclass(frozen=True)
class NQMSetting:
    """The model and the search grid of one run (full or smoke)."""

    dimension: int = 10_000
    levels: int = 40
    target_fraction: float = 0.01  # target = target_fraction * initial loss
    batch_sizes: tuple[int, ...] = tuple(2**k for k in range(0, 23))
    lr_low: float = 1e-8
    lr_high: float = 4.0
    lr_per_decade: int = 8
    momenta: tuple[float, ...] = MOMENTA
    max_steps: int = 10**9
    scan_ratio: float = 1.1

    def learning_rates(self) -> np.ndarray:
        decades = math.log10(self.lr_high / self.lr_low)
        count = int(round(decades * self.lr_per_decade)) + 1
        return np.geomspace(self.lr_low, self.lr_high, count)


FULL = NQMSetting()
SMOKE = NQMSetting(
    levels=20,
    batch_sizes=tuple(4**k for k in range(0, 11)),
    lr_per_decade=4,
    momenta=(0.0, 0.9, 0.99, 0.999),
)


def spectrum(dimension: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Band curvatures h_k and sizes w_k of h_i = 1 / i grouped into log-spaced bands.

    h_k is the mean of 1 / i over band k, so sum_k w_k h_k = sum_i 1 / i exactly.
    """
    edges = np.unique(np.round(np.geomspace(1, dimension + 1, levels + 1)).astype(int))
    inverse = 1.0 / np.arange(1, dimension + 1)
    sizes = np.diff(edges)
    means = np.array(
        [inverse[lo - 1 : hi - 1].mean() for lo, hi in zip(edges, edges[1:], strict=False)]
    )
    return means, sizes.astype(float)


class Matrices:
    """A batch of 2x2 matrices as four arrays (entries 11, 12, 21, 22) of one shape."""

    def __init__(self, a, b, c, d) -> None:
        self.a, self.b, self.c, self.d = a, b, c, d

    @classmethod
    def identity(cls, shape) -> Matrices:
        return cls(np.ones(shape), np.zeros(shape), np.zeros(shape), np.ones(shape))

    def __matmul__(self, other: Matrices) -> Matrices:
        return Matrices(
            self.a * other.a + self.b * other.c,
            self.a * other.b + self.b * other.d,
            self.c * other.a + self.d * other.c,
            self.c * other.b + self.d * other.d,
        )

    def where(self, mask, other: Matrices) -> Matrices:
        """Entries of ``other`` where ``mask`` holds, else these."""
        return Matrices(
            *(np.where(mask, o, s) for s, o in zip(self.entries(), other.entries(), strict=True))
        )

    def entries(self) -> tuple:
        return self.a, self.b, self.c, self.d

    def rows(self, rows) -> Matrices:
        """The matrices of the selected rows (first axis)."""
        return Matrices(*(entry[rows] for entry in self.entries()))


class Dynamics:
    """Expected-loss dynamics of one optimizer at one batch size, for a grid of configs.

    Arrays have shape (configs, bands): the transition A, the fixed point M* of the
    second moments and whether each config is stable in every band.
    """

    def __init__(self, h, w, transition: Matrices, fixed: tuple, stable: np.ndarray) -> None:
        self.h, self.w = h, w
        self.transition, self.fixed, self.stable = transition, fixed, stable
        self.powers = [transition]  # A^(2^k), grown on demand

    @classmethod
    def build(cls, h, w, lr, beta, power: float, batch_size: int) -> Dynamics:
        """Dynamics of lr[k], beta[k] on bands (h, w) with preconditioner h^(-power)."""
        h = np.asarray(h)[None, :]
        step = lr[:, None] * h ** (-power)
        beta = np.broadcast_to(beta[:, None], step.shape)
        transition = Matrices(1 - step * h, beta, -step * h, beta)
        trace = 1 - step * h + beta
        # Jury's criterion for x^2 - tr x + det: |det| < 1 and |tr| < 1 + det (det = beta).
        stable = ((np.abs(beta) < 1) & (np.abs(trace) < 1 + beta)).all(axis=1)
        fixed = fixed_point(transition, step**2 * h / batch_size, stable)
        return cls(h, np.asarray(w)[None, :], transition, fixed, stable)

    def subset(self, rows: np.ndarray) -> Dynamics:
        """The configs selected by ``rows`` (a boolean mask or indices)."""
        part = Dynamics(
            self.h,
            self.w,
            self.transition.rows(rows),
            tuple(m[rows] for m in self.fixed),
            self.stable[rows],
        )
        part.powers = [p.rows(rows) for p in self.powers]
        return part

    def _power_of_two(self, bit: int) -> Matrices:
        while len(self.powers) <= bit:
            self.powers.append(self.powers[-1] @ self.powers[-1])
        return self.powers[bit]

    def power(self, exponent: int) -> Matrices:
        """A^exponent, the same exponent for every config."""
        result = Matrices.identity(self.transition.a.shape)
        for bit in range(exponent.bit_length()):
            if (exponent >> bit) & 1:
                result = result @ self._power_of_two(bit)
        return result

    def power_per_config(self, exponents: np.ndarray) -> Matrices:
        """A^exponents[k] for config k."""
        result = Matrices.identity(self.transition.a.shape)
        for bit in range(int(exponents.max()).bit_length()):
            mask = ((exponents >> bit) & 1).astype(bool)[:, None]
            if mask.any():
                result = result.where(mask, result @ self._power_of_two(bit))
        return result

    def loss(self, transition_power: Matrices) -> np.ndarray:
        """Expected loss per config after the steps of ``transition_power`` (M_0 = e1 e1^T).

        (M_t)_11 = a (M_0 - M*) a^T + M*_11 with a the first row of A^t.
        """
        m11, m12, m22 = self.fixed
        p11, p12 = transition_power.a, transition_power.b
        second_moment = p11 * p11 * (1 - m11) - 2 * p11 * p12 * m12 - p12 * p12 * m22 + m11
        return 0.5 * (self.w * self.h * second_moment).sum(axis=1)


def fixed_point(transition: Matrices, noise, stable) -> tuple:
    """(m11, m12, m22) solving M = A M A^T + Q, Q = noise [[1, 1], [1, 1]] (stable configs)."""
    a, b, c, d = transition.entries()
    system = np.stack(
        [
            np.stack([1 - a * a, -2 * a * b, -b * b], -1),
            np.stack([-a * c, 1 - (a * d + b * c), -b * d], -1),
            np.stack([-c * c, -2 * c * d, 1 - d * d], -1),
        ],
        -2,
    )
    rhs = np.stack([noise, noise, noise], -1)[..., None]
    system = np.where(stable[:, None, None, None], system, np.eye(3))
    solution = np.linalg.solve(system, rhs)[..., 0]
    return solution[..., 0], solution[..., 1], solution[..., 2]


def fastest_to_target(
    dynamics: Dynamics, target: float, max_steps: int, ratio: float
) -> tuple[int, float]:
    """The config that first has expected loss <= target, and that step (inf if none).

    A geometric scan of steps (ratio ``ratio``) stops at the first grid step where any
    config is at the target; the winner is among those configs, and bisection inside
    the bracket (previous grid step, this one] finds each one's first such step.
    """
    grid = np.unique(np.round(np.geomspace(1, max_steps, _scan_points(max_steps, ratio))))
    current, previous = Matrices.identity(dynamics.transition.a.shape), 0
    for t in grid.astype(np.int64).tolist():
        current = current @ dynamics.power(t - previous)
        reached = dynamics.loss(current) <= target
        if reached.any():
            rows = np.flatnonzero(reached)
            lower = np.full(rows.size, previous, dtype=np.int64)
            upper = np.full(rows.size, t, dtype=np.int64)
            steps = _bisect(dynamics.subset(rows), target, lower, upper)
            return int(rows[np.argmin(steps)]), float(steps.min())
        previous = t
    return -1, math.inf


def _scan_points(max_steps: int, ratio: float) -> int:
    return int(math.ceil(math.log(max_steps) / math.log(ratio))) + 1


def _bisect(dynamics: Dynamics, target: float, lower, upper) -> np.ndarray:
    """Smallest t in (lower, upper] with loss <= target, assuming one crossing inside."""
    while (upper - lower > 1).any():
        middle = (lower + upper) // 2
        below = dynamics.loss(dynamics.power_per_config(middle)) <= target
        active = upper - lower > 1
        upper = np.where(active & below, middle, upper)
        lower = np.where(active & ~below, middle, lower)
    return upper.astype(float)


def optimizer_grid(setting: NQMSetting, uses_momentum: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every (lr, beta) pair searched: beta = 0 only for SGD."""
    momenta = np.array(setting.momenta if uses_momentum else (0.0,))
    lr, beta = np.meshgrid(setting.learning_rates(), momenta, indexing="ij")
    return lr.ravel(), beta.ravel()


def tune_batch(setting: NQMSetting, name: str, batch_size: int, target: float) -> dict:
    """The best (lr, beta) of the grid at one batch size and its steps to the target."""
    h, w = spectrum(setting.dimension, setting.levels)
    options = NQM_OPTIMIZERS[name]
    lr, beta = optimizer_grid(setting, options["momentum"])
    dynamics = Dynamics.build(h, w, lr, beta, options["power"], batch_size)
    lr, beta = lr[dynamics.stable], beta[dynamics.stable]
    dynamics = dynamics.subset(dynamics.stable)
    best, steps = fastest_to_target(dynamics, target, setting.max_steps, setting.scan_ratio)
    if not math.isfinite(steps):
        return {"batch_size": batch_size, "steps": None, "hyperparameters": {}}
    grid = setting.learning_rates()
    return {
        "batch_size": batch_size,
        "steps": int(steps),
        "hyperparameters": {"lr": float(lr[best]), "momentum": float(beta[best])},
        "lr_at_grid_edge": bool(lr[best] in (grid[0], grid[-1])),
    }


def initial_loss(setting: NQMSetting) -> float:
    h, w = spectrum(setting.dimension, setting.levels)
    return 0.5 * float((w * h).sum())


def measure(setting: NQMSetting) -> dict:
    """Tuned steps to the target at every batch size and each optimizer's B_crit."""
    target = setting.target_fraction * initial_loss(setting)
    curves, critical, fits = {}, {}, {}
    for name in NQM_OPTIMIZERS:
        rows = [tune_batch(setting, name, b, target) for b in setting.batch_sizes]
        steps = [row["steps"] for row in rows]
        budgets = [setting.max_steps] * len(rows)
        critical[name] = critical_batch_size(setting.batch_sizes, steps, budgets).to_dict()
        fit = fit_scaling_model(setting.batch_sizes, steps)
        fits[name] = None if fit is None else fit.to_dict()
        for row, examples in zip(rows, examples_to_target(setting.batch_sizes, steps), strict=True):
            row["examples"] = examples
        curves[name] = rows
    return {"target": target, "curves": curves, "critical": critical, "fits": fits}


def run(out_dir: Path, quick: bool = False, preset: str | None = None) -> dict:
    """Measure the NQM (smoke grid with ``quick`` or preset "smoke"), write results and figures."""
    from natgrad.report.scaling import write_scaling_figures

    name = preset or ("smoke" if quick else "full")
    if name not in ("smoke", "full"):
        raise ValueError(f"--preset must be smoke or full, got {name!r}")
    setting = SMOKE if name == "smoke" else FULL
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    measured = measure(setting)
    results = {
        "experiment": "nqm",
        "preset": name,
        "setting": {**asdict(setting), "learning_rates": len(setting.learning_rates())},
        "initial_loss": initial_loss(setting),
        "target": measured["target"],
        "target_metric": "expected loss",
        "optimizers": {k: v["label"] for k, v in NQM_OPTIMIZERS.items()},
        "order": list(NQM_OPTIMIZERS),
        "curves": measured["curves"],
        "critical": measured["critical"],
        "critical_fit": measured["fits"],
        "critical_batch_size": {k: v["value"] for k, v in measured["critical"].items()},
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
    }
    results["figures"] = sorted(p.name for p in write_scaling_figures(results, out_dir).values())
    write_results(out_dir, results)
    return results


register_experiment(
    Experiment(
        name="nqm",
        description="noisy quadratic model: critical batch size of SGD, momentum, Adam, K-FAC",
        run=run,
        options=(PRESET_OPTION,),
    )
)

__all__ = ["NQM_OPTIMIZERS", "NQMSetting", "Dynamics", "spectrum", "measure", "run"]
