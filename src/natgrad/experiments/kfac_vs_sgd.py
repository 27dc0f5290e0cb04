"""K-FAC against SGD with momentum on the deep autoencoder, at several batch sizes m.

The seed's claim (Martens & Grosse 2015, s.13): K-FAC's progress per step keeps growing
as the mini-batch grows (its curvature estimate and its gradient both improve), about
linearly in m or better, while SGD's gain from a larger batch is sublinear (past a
point, a larger batch only lowers the gradient noise it cannot exploit). Every run
processes the same number of training examples, so a run at m takes examples / m
steps; linear per-step gain is then the same loss curve against examples processed.
For each m, each optimizer trains from the same seeded initialization with every
point of a small grid, and the point whose smoothed training loss ends lowest is
kept: Momentum (0.9) over learning rates, and the registry's ``kfac_adaptive`` (step
length and momentum from the quadratic model, Levenberg-Marquardt damping) over the
initial damping. The results are the training loss against steps, examples and
wall-clock time, and the per-step gain ``steps_to_target(m_0) / steps_to_target(m)``
of each optimizer to its own target (the lowest loss all its kept runs reach, since
SGD's plateau lies far above where K-FAC goes), with the linear gain m / m_0 as the
reference. Training loss is the mini-batch loss before each update (the runner's
definition), smoothed over a trailing window of ``SMOOTHING`` steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from natgrad.experiments.registry import (
    Experiment,
    register_experiment,
    single_thread,
    write_results,
)
from natgrad.train.config import RunConfig
from natgrad.train.runner import (
    BatchSampler,
    build_components,
    load_workload_data,
    train_step,
)
from natgrad.workloads import get_workload

SMOOTHING = 10
DIVERGED_LOSS = 1e4  # per-example nats; the autoencoder starts near 550


@dataclass
class Curve:
    """One training run: per-step mini-batch loss and cumulative training wall time."""

    optimizer: str
    hyperparameters: dict
    batch_size: int
    losses: list[float] = field(default_factory=list)
    wall_times: list[float] = field(default_factory=list)
    status: str = "completed"

    def record(self, loss: float, seconds: float) -> None:
        """Append one step's loss and time, or mark the run diverged (the step not kept)."""
        if not math.isfinite(loss) or loss > DIVERGED_LOSS:
            self.status = "diverged"
            return
        previous = self.wall_times[-1] if self.wall_times else 0.0
        self.losses.append(loss)
        self.wall_times.append(previous + seconds)

    def smoothed(self, window: int = SMOOTHING) -> list[float]:
        """Trailing mean of the last ``window`` mini-batch losses at each step."""
        result, total = [], 0.0
        for index, value in enumerate(self.losses):
            total += value
            if index >= window:
                total -= self.losses[index - window]
            result.append(total / min(index + 1, window))
        return result

    def final_loss(self) -> float:
        """Smoothed loss at the last step (infinite for a diverged or empty run)."""
        if self.status != "completed" or not self.losses:
            return math.inf
        return self.smoothed()[-1]

    def first_reaching(self, target: float) -> int | None:
        """Index of the first step whose smoothed loss is <= ``target`` (None if never)."""
        return next((i for i, value in enumerate(self.smoothed()) if value <= target), None)

    def steps_to(self, target: float) -> int | None:
        index = self.first_reaching(target)
        return None if index is None else index + 1

    def time_to(self, target: float) -> float | None:
        index = self.first_reaching(target)
        return None if index is None else self.wall_times[index]


class SteppedRun:
    """A training run advanced one step at a time, so that several can be interleaved.

    It owns the data, the runner's batch sampler and the curve; a subclass trains on one
    batch in :meth:`train_on` and returns the loss. The recorded time of a step is the
    batch lookup plus :meth:`train_on`.
    """

    def __init__(self, data, curve: Curve, batch_size: int, steps: int, seed: int) -> None:
        self.data, self.curve, self.steps = data, curve, steps
        self.sampler = BatchSampler(len(data.train), batch_size, seed, "cpu")

    @property
    def done(self) -> bool:
        return self.curve.status != "completed" or len(self.curve.losses) >= self.steps

    def train_on(self, inputs, targets) -> float:
        raise NotImplementedError

    def advance(self) -> None:
        """One training step on the sampler's next batch; records its loss and time."""
        started = time.perf_counter()
        indices = self.sampler.indices(len(self.curve.losses))
        inputs, targets = self.data.train.inputs[indices], self.data.train.targets[indices]
        loss = self.train_on(inputs, targets)
        self.curve.record(loss, time.perf_counter() - started)


class CurveRun(SteppedRun):
    """A natgrad training run, stepped so that several runs can be interleaved.

    The model, optimizer, schedule and batches are those of ``natgrad train`` with the
    same seed; evaluation is left out, so the recorded times are pure training time.
    """

    def __init__(
        self,
        workload_name: str,
        optimizer: str,
        hyperparameters: dict,
        batch_size: int,
        steps: int,
        seed: int = 0,
        data_dir: str | None = None,
    ) -> None:
        self.workload = get_workload(workload_name)
        resolved = RunConfig(
            workload_name,
            optimizer,
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            hyperparameters=dict(hyperparameters),
            data_dir=data_dir,
            evaluate_test=False,
        ).resolved()
        data = load_workload_data(self.workload, data_dir, "cpu")
        curve = Curve(optimizer, dict(hyperparameters), batch_size)
        super().__init__(data, curve, batch_size, steps, seed)
        self.model, self.spec, self.optimizer, self.scheduler = build_components(
            resolved, self.workload, "cpu"
        )

    def train_on(self, inputs, targets) -> float:
        """The runner's update on one batch, then the schedule's step."""
        loss = float(
            train_step(self.model, self.workload, self.spec, self.optimizer, inputs, targets)
        )
        self.scheduler.step()
        return loss


def run_interleaved(
    runs: list[CurveRun],
    time_limit: float | None = None,
    target: float | None = None,
) -> list[Curve]:
    """Step every unfinished run once per round, so that all of them see the same load.

    A run stops after its ``steps``, at divergence, after ``time_limit`` seconds of its
    own training time, or once its smoothed loss reaches ``target``.
    """

    def finished(run: CurveRun) -> bool:
        curve = run.curve
        if run.done:
            return True
        if time_limit is not None and curve.wall_times and curve.wall_times[-1] >= time_limit:
            return True
        return target is not None and bool(curve.losses) and curve.smoothed()[-1] <= target

    active = list(runs)
    while active:
        for run in active:
            run.advance()
        active = [run for run in active if not finished(run)]
    return [run.curve for run in runs]


def training_curve(
    workload_name: str,
    optimizer: str,
    hyperparameters: dict,
    batch_size: int,
    steps: int,
    seed: int = 0,
    data_dir: str | None = None,
) -> Curve:
    """Train one run for ``steps`` steps (or until it diverges); its per-step curve."""
    run = CurveRun(workload_name, optimizer, hyperparameters, batch_size, steps, seed, data_dir)
    return run_interleaved([run])[0]


@dataclass(frozen=True)
class Setting:
    """Sizes of one run of the experiment (full or quick)."""

    workload: str
    batch_sizes: tuple[int, ...]
    examples: int  # training examples per run: examples // m steps at batch size m
    momentum_grid: tuple[float, ...]  # learning rates (momentum 0.9)
    kfac_grid: tuple[float, ...]  # initial damping lambda_0 (then Levenberg-Marquardt)

    def steps(self, batch_size: int) -> int:
        """Steps of a run at ``batch_size``: the example budget in whole batches."""
        return max(1, self.examples // batch_size)


FULL = Setting(
    workload="fmnist_autoencoder",
    batch_sizes=(250, 1000, 4000),
    examples=320_000,
    momentum_grid=(3e-3, 1e-2),
    kfac_grid=(0.1, 1.0),
)
QUICK = Setting(
    workload="mnist_autoencoder",
    batch_sizes=(50, 200),
    examples=1_600,
    momentum_grid=(3e-3,),
    kfac_grid=(1.0,),
)


def _grids(setting: Setting) -> dict[str, list[dict]]:
    return {
        "momentum": [{"lr": lr, "momentum": 0.9} for lr in setting.momentum_grid],
        "kfac_adaptive": [{"damping": damping} for damping in setting.kfac_grid],
    }


def reachable_target(by_batch: dict[int, Curve]) -> float:
    """The lowest smoothed loss that every run of ``by_batch`` reaches (largest minimum)."""
    return max(min(curve.smoothed()) for curve in by_batch.values())


def common_target(kept: dict[str, dict[int, Curve]]) -> float:
    """The lowest smoothed loss that every kept run of every optimizer reaches."""
    return max(reachable_target(by_batch) for by_batch in kept.values())


def per_step_gains(by_batch: dict[int, Curve], target: float) -> dict[str, float | None]:
    """steps_to_target(m_0) / steps_to_target(m) for each batch size m, m_0 the smallest."""
    base = by_batch[min(by_batch)].steps_to(target)
    gains: dict[str, float | None] = {}
    for batch, curve in sorted(by_batch.items()):
        steps = curve.steps_to(target)
        gains[str(batch)] = None if base is None or steps is None else base / steps
    return gains


def _setting_label(curve: Curve) -> str:
    """The tuned hyperparameter of a curve as text, e.g. "lr=0.01" or "damping=1"."""
    return " ".join(f"{k}={v:g}" for k, v in curve.hyperparameters.items() if k != "momentum")


def _plot(kept: dict[str, dict[int, Curve]], gains: dict, out_dir: Path) -> None:
    """Loss vs steps, vs examples and vs time (targets dotted); per-step gain vs m."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(21, 4.8))
    by_steps, by_examples, by_time, gain_axes = axes
    colors = {"kfac_adaptive": "tab:red", "momentum": "tab:blue"}
    styles = ["-", "--", ":", "-."]
    for name, by_batch in kept.items():
        for style, (batch, curve) in zip(styles, sorted(by_batch.items()), strict=False):
            label = f"{name} m={batch} {_setting_label(curve)}"
            smoothed = curve.smoothed()
            steps = range(1, len(smoothed) + 1)
            examples = [step * batch for step in steps]
            by_steps.plot(steps, smoothed, style, color=colors[name], label=label)
            by_examples.plot(examples, smoothed, style, color=colors[name], label=label)
            by_time.plot(curve.wall_times, smoothed, style, color=colors[name], label=label)
    xlabels = ("step", "training examples processed", "training wall-clock time (s)")
    for panel, xlabel in zip((by_steps, by_examples, by_time), xlabels, strict=True):
        for name, record in gains.items():
            panel.axhline(record["target"], color=colors[name], linestyle=":", linewidth=0.8)
        panel.set_xlabel(xlabel)
        panel.set_ylabel(f"training loss (mean of last {SMOOTHING} mini-batches)")
        panel.set_xscale("log")
        panel.set_yscale("log")
    by_steps.legend(fontsize=7)
    batches = sorted(next(iter(kept.values())))
    for name, record in gains.items():
        by_batch = record["gains"]
        xs = [b for b in batches if by_batch[str(b)] is not None]
        label = f"{name} (to loss {record['target']:.1f})"
        gain_axes.plot(xs, [by_batch[str(b)] for b in xs], "o-", color=colors[name], label=label)
    gain_axes.plot(batches, [b / batches[0] for b in batches], "k:", label="linear (m / m0)")
    gain_axes.set_xscale("log")
    gain_axes.set_yscale("log")
    gain_axes.minorticks_off()
    gain_axes.set_xticks(batches, [str(b) for b in batches])
    gain_axes.set_xlabel("batch size m")
    gain_axes.set_ylabel("per-step gain: steps to target at m0 / at m")
    gain_axes.legend()
    figure.tight_layout()
    figure.savefig(out_dir / "kfac_vs_sgd.png", dpi=90)
    plt.close(figure)


def _summary(curve: Curve, target: float) -> dict:
    record = asdict(curve)
    record.update(
        final_smoothed_loss=curve.final_loss(),
        steps_to_target=curve.steps_to(target),
        seconds_to_target=curve.time_to(target),
        mean_step_seconds=(curve.wall_times[-1] / len(curve.wall_times))
        if curve.wall_times
        else None,
    )
    return record


def _grid_losses(by_batch: dict[int, list[Curve]]) -> dict[str, dict[str, float]]:
    return {
        str(batch): {_setting_label(c): c.final_loss() for c in curves}
        for batch, curves in by_batch.items()
    }


def run(out_dir: Path, quick: bool = False) -> dict:
    """Tune lr on a small grid per optimizer and batch size; curves, gains and a figure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    setting = QUICK if quick else FULL
    grids = _grids(setting)
    kept: dict[str, dict[int, Curve]] = {name: {} for name in grids}
    every: dict[str, dict[int, list[Curve]]] = {name: {} for name in grids}
    with single_thread():
        for batch in setting.batch_sizes:
            runs = {
                name: [
                    CurveRun(setting.workload, name, h, batch, setting.steps(batch)) for h in grid
                ]
                for name, grid in grids.items()
            }
            run_interleaved([run for group in runs.values() for run in group])
            for name, group in runs.items():
                curves = [run.curve for run in group]
                best = min(curves, key=Curve.final_loss)
                kept[name][batch], every[name][batch] = best, curves
                print(f"m={batch} {name}: {_setting_label(best)} -> {best.final_loss():.2f}")
    return analyze(kept, every, setting, out_dir)


def analyze(
    kept: dict[str, dict[int, Curve]],
    every: dict[str, dict[int, list[Curve]]],
    setting: Setting,
    out_dir: Path,
) -> dict:
    """Targets, per-step gains, the figure and results.json from the curves of a run.

    Each optimizer's gain is measured to its own target (the lowest loss all its kept
    runs reach), since SGD's plateau lies far above where K-FAC goes.
    """
    gains = {}
    for name, by_batch in kept.items():
        target = reachable_target(by_batch)
        gains[name] = {"target": target, "gains": per_step_gains(by_batch, target)}
    _plot(kept, gains, out_dir)
    results = {
        "workload": setting.workload,
        "examples_per_run": setting.examples,
        "steps": {str(batch): setting.steps(batch) for batch in setting.batch_sizes},
        "threads": 1,
        "per_step_gain": gains,
        "kept": {
            n: {str(b): _summary(c, gains[n]["target"]) for b, c in d.items()}
            for n, d in kept.items()
        },
        "grid_final_loss": {n: _grid_losses(d) for n, d in every.items()},
        "figure": "kfac_vs_sgd.png",
    }
    write_results(out_dir, results)
    print(f"per-step gains {gains}")
    return results


register_experiment(
    Experiment(
        name="kfac-vs-sgd",
        description="autoencoder at several batch sizes: K-FAC vs SGD-momentum per step and time",
        run=run,
    )
)

__all__ = [
    "Curve",
    "SteppedRun",
    "CurveRun",
    "run_interleaved",
    "training_curve",
    "common_target",
    "reachable_target",
    "analyze",
    "per_step_gains",
    "run",
]
