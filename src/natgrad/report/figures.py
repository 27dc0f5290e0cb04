"""PNG figures of a comparison (``results.json`` of ``natgrad compare``).

- best-of-K: best validation value vs number of trials, bootstrap median and 95% band;
- final error: re-run test value per optimizer with its 95% interval, both spaces;
- training curves of the re-runs vs steps and vs wall-clock seconds (mean over seeds);
- lr vs eps of every trial, coloured by its validation value (optimizers with eps searched).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

from natgrad.jsonio import replace_atomically

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

FIGURE_DPI = 100


def _spaces(results: dict) -> list[str]:
    return results["config"]["spaces"]


def _optimizers(results: dict) -> list[str]:
    return results["config"]["optimizers"]


def _colour(index: int):
    return plt.get_cmap("tab10")(index % 10)


def save_figure(figure, path: Path) -> Path:
    """Write ``figure`` as a PNG at ``path`` atomically and close it."""
    figure.tight_layout()
    replace_atomically(
        path, lambda stream: figure.savefig(stream, dpi=FIGURE_DPI, format="png"), binary=True
    )
    plt.close(figure)
    return path


def best_of_k_figure(results: dict, path: Path) -> Path:
    """Best validation value vs number of trials (bootstrap median, 95% band), per space."""
    spaces = _spaces(results)
    figure, axes = plt.subplots(1, len(spaces), figsize=(5.5 * len(spaces), 4), squeeze=False)
    for axis, space in zip(axes[0], spaces, strict=True):
        for index, optimizer in enumerate(_optimizers(results)):
            curve = results["studies"][optimizer][space]["best_of_k"]
            axis.plot(curve["k"], curve["median"], color=_colour(index), label=optimizer)
            axis.fill_between(
                curve["k"], curve["low"], curve["high"], color=_colour(index), alpha=0.15
            )
        axis.set(
            xlabel="number of trials",
            ylabel=f"best {results['config']['metric']}",
            title=f"{space} space",
        )
        axis.legend(fontsize=8)
    return save_figure(figure, path)


def final_error_figure(results: dict, path: Path) -> Path:
    """Test value of the re-run best trial per optimizer, mean and 95% interval, per space."""
    optimizers, spaces = _optimizers(results), _spaces(results)
    figure, axis = plt.subplots(figsize=(max(5, 1.1 * len(optimizers) + 2), 4))
    width = 0.8 / len(spaces)
    for s, space in enumerate(spaces):
        x = np.arange(len(optimizers)) + (s - (len(spaces) - 1) / 2) * width
        means, lows, highs = [], [], []
        for optimizer in optimizers:
            test = results["studies"][optimizer][space]["test"]
            means.append(test["mean"] if test["mean"] is not None else math.nan)
            lows.append(test["interval"][0] if test["interval"][0] is not None else math.nan)
            highs.append(test["interval"][1] if test["interval"][1] is not None else math.nan)
        means = np.array(means, dtype=float)
        errors = np.vstack(
            [means - np.array(lows, dtype=float), np.array(highs, dtype=float) - means]
        )
        axis.errorbar(x, means, yerr=errors, fmt="o", capsize=4, label=space, color=_colour(s))
    axis.set_xticks(np.arange(len(optimizers)), optimizers)
    axis.set(
        ylabel=results["config"]["test_metric"], title="re-run of the best trial (95% interval)"
    )
    axis.legend()
    return save_figure(figure, path)


def _mean_curve(reruns: list[dict], column: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of column ``column`` (0 step, 1 wall time) and the metric (column 2)."""
    histories = [np.array(r["history"], dtype=float) for r in reruns if r["history"]]
    if not histories:
        return np.array([]), np.array([])
    length = min(len(h) for h in histories)
    stacked = np.stack([h[:length] for h in histories])
    return stacked[:, :, column].mean(axis=0), stacked[:, :, 2].mean(axis=0)


def curves_figure(results: dict, path: Path, column: int, xlabel: str) -> Path:
    """Validation value of the re-runs vs steps (column 0) or wall-clock (column 1)."""
    spaces = _spaces(results)
    figure, axes = plt.subplots(1, len(spaces), figsize=(5.5 * len(spaces), 4), squeeze=False)
    for axis, space in zip(axes[0], spaces, strict=True):
        for index, optimizer in enumerate(_optimizers(results)):
            x, y = _mean_curve(results["studies"][optimizer][space]["reruns"], column)
            if x.size:
                axis.plot(x, y, color=_colour(index), label=optimizer)
        target = results["studies"][_optimizers(results)[0]][space]["steps_to_target"]["target"]
        if target is not None:
            axis.axhline(target, color="grey", linestyle=":", label="target")
        axis.set(
            xlabel=xlabel, ylabel=results["config"]["metric"], yscale="log", title=f"{space} space"
        )
        axis.legend(fontsize=8)
    return save_figure(figure, path)


def scatter_lr_eps(axis, trials: list[dict]):
    """lr vs eps of the trials that finished, coloured by their value; the colour mapping."""
    done = [t for t in trials if t["value"] is not None]
    return axis.scatter(
        [t["hyperparameters"]["lr"] for t in done],
        [t["hyperparameters"]["eps"] for t in done],
        c=[t["value"] for t in done],
        cmap="viridis_r",
        s=30,
    )


def lr_eps_figure(results: dict, path: Path) -> Path | None:
    """Scatter of lr vs eps of each trial, coloured by validation value; None if eps is fixed."""
    panels = []
    for optimizer in _optimizers(results):
        for space in _spaces(results):
            study = results["studies"][optimizer][space]
            searched = {d["name"] for d in study["search_space"]["search"]}
            if {"lr", "eps"} <= searched:
                panels.append((optimizer, space, study["trials"]))
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for axis, (optimizer, space, trials) in zip(axes[0], panels, strict=True):
        failed = [t for t in trials if t["value"] is None]
        scatter = scatter_lr_eps(axis, trials)
        axis.scatter(
            [t["hyperparameters"]["lr"] for t in failed],
            [t["hyperparameters"]["eps"] for t in failed],
            marker="x",
            color="red",
            s=25,
            label="failed",
        )
        axis.set(
            xscale="log", yscale="log", xlabel="lr", ylabel="eps", title=f"{optimizer} / {space}"
        )
        if failed:
            axis.legend(fontsize=8)
        figure.colorbar(scatter, ax=axis, label=results["config"]["metric"])
    return save_figure(figure, path)


def write_figures(results: dict, out_dir: Path) -> dict[str, Path]:
    """Write every figure into ``out_dir``; returns {name: path} of those written."""
    out_dir = Path(out_dir)
    figures = {
        "best_of_k": best_of_k_figure(results, out_dir / "best_of_k.png"),
        "final_error": final_error_figure(results, out_dir / "final_error.png"),
        "curves_steps": curves_figure(results, out_dir / "curves_steps.png", 0, "step"),
        "curves_wallclock": curves_figure(
            results, out_dir / "curves_wallclock.png", 1, "wall-clock (s)"
        ),
    }
    scatter = lr_eps_figure(results, out_dir / "lr_eps.png")
    if scatter is not None:
        figures["lr_eps"] = scatter
    return figures
