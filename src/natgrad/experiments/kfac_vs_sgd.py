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

from dataclasses import asdict, dataclass
from pathlib import Path

from natgrad.experiments.experiment import (
    Experiment,
    register_experiment,
    single_thread,
    write_results,
)
from natgrad.train.harness import (  # noqa: F401  (re-exported for existing imports)
    DIVERGED_LOSS,
    SMOOTHING,
    Curve,
    CurveRun,
    SteppedRun,
    run_interleaved,
)


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
    "common_target",
    "reachable_target",
    "analyze",
    "per_step_gains",
    "run",
]
