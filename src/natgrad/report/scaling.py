"""Figures and report of a batch-size scaling folder (``natgrad experiment nqm|batch-scaling``).

Both experiments write ``results.json`` with the same parts: ``optimizers`` (name ->
label), ``curves`` (name -> one row per batch size: ``batch_size``, ``steps`` and
``examples`` to the target, or None where it was not reached, and the best
``hyperparameters``), ``critical`` (name -> the critical batch size record) and the
``target``. The figures:

- steps to the target vs batch size, log-log, with each optimizer's perfect-scaling line
  S = E_min / B through its most example-efficient point, and its critical batch size;
- examples to the target vs batch size, with 2 E_min (the critical level) dotted;
- the best learning rate vs batch size.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from natgrad.report.document import Block, fmt, write_pages  # noqa: E402
from natgrad.report.figures import save_figure  # noqa: E402

SCALING_EXPERIMENTS = ("nqm", "batch-scaling")
BOUND_TEXT = {"estimate": "", "upper": "<= ", "lower": ">= "}


def is_scaling_results(results: dict) -> bool:
    return results.get("experiment") in SCALING_EXPERIMENTS


def _named(results: dict) -> list[tuple[str, str]]:
    """(name, label) of every optimizer in the experiment's order."""
    order = results.get("order") or list(results["optimizers"])
    return [(name, results["optimizers"][name]) for name in order]


def _colour(index: int):
    return plt.get_cmap("tab10")(index % 10)


def _reached(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(row["batch_size"], row[key]) for row in rows if row.get(key) is not None]
    return [b for b, _ in pairs], [v for _, v in pairs]


def _unreached(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Batch sizes that never reached the target, at their budget (steps, or examples =
    B x steps): the true value lies above it."""
    pairs = [
        (row["batch_size"], row["budget"] * (row["batch_size"] if key == "examples" else 1))
        for row in rows
        if row.get(key) is None and row.get("budget")
    ]
    return [b for b, _ in pairs], [v for _, v in pairs]


def _mark_unreached(axis, rows: list[dict], key: str, colour) -> None:
    """Open upward triangles at the budget of the batch sizes that missed the target."""
    batches, bounds = _unreached(rows, key)
    if batches:
        axis.plot(batches, bounds, "^", color=colour, markerfacecolor="none", linestyle="none")


def _log_axes(axis, xlabel: str, ylabel: str, title: str) -> None:
    if not any(len(line.get_xdata()) for line in axis.get_lines()):  # nothing to scale
        axis.text(0.5, 0.5, "no batch size reached the target", ha="center",
                  transform=axis.transAxes)  # fmt: skip
        axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
        return
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axis.grid(True, which="major", alpha=0.3)


def _mark_critical(axis, critical: dict, colour) -> None:
    """A vertical line at B_crit (dashed when it is only a bound)."""
    value = critical.get("value")
    if value is None:
        return
    style = "-" if critical.get("bound") == "estimate" else "--"
    axis.axvline(value, color=colour, linestyle=style, linewidth=0.8, alpha=0.7)


def steps_figure(results: dict, path: Path) -> Path:
    """Steps to the target vs batch size with perfect-scaling lines and B_crit."""
    figure, axis = plt.subplots(figsize=(7, 5))
    for index, (name, label) in enumerate(_named(results)):
        rows, critical, colour = results["curves"][name], results["critical"][name], _colour(index)
        batches, steps = _reached(rows, "steps")
        axis.plot(batches, steps, "o-", color=colour, label=f"{label} (B_crit {_crit(critical)})")
        _mark_unreached(axis, rows, "steps", colour)
        minimum = critical.get("reference_examples")
        if minimum:
            every = [row["batch_size"] for row in rows]
            axis.plot(every, [minimum / b for b in every], ":", color=colour, linewidth=1)
        _mark_critical(axis, critical, colour)
    _log_axes(axis, "batch size B", "steps to the target", _title(results, "steps"))
    axis.legend(
        fontsize=8,
        title="dotted: perfect scaling; vertical: B_crit; open triangle: target not reached "
        "within the budget",
        title_fontsize=7,
    )
    return save_figure(figure, path)


def examples_figure(results: dict, path: Path) -> Path:
    """Examples to the target vs batch size; 2 E_min dotted, B_crit vertical."""
    figure, axis = plt.subplots(figsize=(7, 5))
    for index, (name, label) in enumerate(_named(results)):
        rows, critical, colour = results["curves"][name], results["critical"][name], _colour(index)
        batches, examples = _reached(rows, "examples")
        axis.plot(batches, examples, "o-", color=colour, label=label)
        _mark_unreached(axis, rows, "examples", colour)
        minimum = critical.get("reference_examples")
        if minimum:
            axis.axhline(2 * minimum, color=colour, linestyle=":", linewidth=0.8)
        _mark_critical(axis, critical, colour)
    _log_axes(axis, "batch size B", "examples to the target (B x steps)", _title(results, "ex"))
    axis.legend(
        fontsize=8,
        title="dotted: 2 x minimum examples; open triangle: not reached within the budget",
        title_fontsize=7,
    )
    return save_figure(figure, path)


def learning_rate_figure(results: dict, path: Path) -> Path | None:
    """The best learning rate at each batch size (optimizers that search one)."""
    figure, axis = plt.subplots(figsize=(7, 5))
    drawn = False
    for index, (name, label) in enumerate(_named(results)):
        pairs = [
            (row["batch_size"], row["hyperparameters"]["lr"])
            for row in results["curves"][name]
            if (row.get("hyperparameters") or {}).get("lr") is not None
        ]
        if pairs:
            axis.plot(*zip(*pairs, strict=True), "o-", color=_colour(index), label=label)
            drawn = True
    if not drawn:
        plt.close(figure)
        return None
    _log_axes(axis, "batch size B", "best learning rate", "Best learning rate vs batch size")
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def _title(results: dict, kind: str) -> str:
    what = "Steps" if kind == "steps" else "Examples"
    return f"{what} to {results.get('target_metric', 'loss')} <= {fmt(results['target'])}"


def _crit(critical: dict) -> str:
    value = critical.get("value")
    if value is None:
        return "n/a"
    return f"{BOUND_TEXT[critical['bound']]}{value:.0f}"


FIGURES = {
    "steps_to_target": (steps_figure, "Steps to the target vs batch size (log-log), tuned per B"),
    "examples_to_target": (examples_figure, "Examples to the target vs batch size"),
    "best_learning_rate": (learning_rate_figure, "Best learning rate vs batch size"),
}


def write_scaling_figures(results: dict, out_dir: Path) -> dict[str, Path]:
    """Write the PNG figures of a scaling folder; returns {figure name: path}."""
    written = {}
    for name, (draw, _) in FIGURES.items():
        path = draw(results, Path(out_dir) / f"{name}.png")
        if path is not None:
            written[name] = path
    return written


def _hyperparameter_text(row: dict) -> str:
    values = row.get("hyperparameters") or {}
    return ", ".join(f"{k}={fmt(v, 3)}" for k, v in sorted(values.items()))


def table_blocks(results: dict) -> list[Block]:
    """One table per optimizer: steps, examples and best hyperparameters per batch size."""
    blocks = []
    for name, label in _named(results):
        rows = []
        for row in results["curves"][name]:
            steps = "not reached" if row.get("steps") is None else fmt(row["steps"])
            cells = [str(row["batch_size"]), steps, fmt(row.get("examples"))]
            if "trials" in row:
                cells.append(f"{row['trials']} ({row.get('reached', 0)} reached)")
            cells.append(_hyperparameter_text(row))
            rows.append(cells)
        header = ["batch size", "steps to target", "examples to target"]
        if rows and len(rows[0]) == 5:
            header.append("trials")
        header.append("best hyperparameters")
        blocks += [Block("h2", label), Block("table", header=header, rows=rows)]
    return blocks


def critical_blocks(results: dict) -> list[Block]:
    fits = results.get("critical_fit") or {}
    rows = []
    for name, label in _named(results):
        fit = fits.get(name) or {}
        rows.append(
            [
                label,
                _crit(results["critical"][name]),
                results["critical"][name]["bound"],
                fmt(fit.get("critical_batch"), 3),
                fmt(fit.get("min_steps"), 3),
                fmt(fit.get("rms_log_error"), 2),
            ]
        )
    note = (
        "Critical batch size: where the examples to the target reach twice their minimum "
        "over the measured batch sizes (log-log interpolation); an upper bound where the "
        "next batch size never reached the target (its step budget bounds its examples), "
        "a lower bound where the examples never doubled. Fit: S = S_min (1 + B_crit / B) "
        "by least squares on log S over every reached batch size (rms in log units)."
    )
    return [
        Block("h2", "Critical batch size"),
        Block("p", note),
        Block(
            "table",
            header=["optimizer", "B_crit", "kind", "B_crit (fit)", "S_min (fit)", "fit rms"],
            rows=rows,
        ),
    ]


def intro_text(results: dict) -> str:
    if results["experiment"] == "nqm":
        setting = results["setting"]
        return (
            f"Noisy quadratic model: d = {setting['dimension']} dimensions, h_i = 1/i in "
            f"{setting['levels']} bands, gradient noise variance h_i / B; target expected loss "
            f"{fmt(results['target'])} ({setting['target_fraction']:g} of the initial "
            f"{fmt(results['initial_loss'])}); learning rate and momentum from a grid at "
            f"every batch size (preset {results['preset']})."
        )
    config = results["config"]
    return (
        f"Workload {config['workload']}; target {config['target_metric']} <= "
        f"{fmt(config['target'])}; {config['trials']} quasi-random trials per optimizer and "
        f"batch size (Halton seed {config['seed']}); steps to the target = first evaluation "
        f"at or below it (evaluations every {config['eval_ratio']:g}x steps), within a budget "
        f"of {config['examples_budget']} examples per trial "
        f"({config['min_steps']}-{config['max_steps']} steps). Preset {config['preset']}."
    )


def scaling_blocks(results: dict, figures: dict[str, Path]) -> list[Block]:
    title = "Noisy quadratic model" if results["experiment"] == "nqm" else "Batch-size scaling"
    blocks = [Block("h1", title), Block("p", intro_text(results)), *critical_blocks(results)]
    blocks.append(Block("h2", "Figures"))
    for name, path in figures.items():
        caption = FIGURES[name][1]
        blocks += [Block("p", caption), Block("img", text=path.name, items=[caption])]
    return blocks + table_blocks(results)


def write_scaling_report(results: dict, out_dir: Path) -> dict[str, Path]:
    """Figures, report.md and report.html of a scaling folder; returns their paths."""
    out_dir = Path(out_dir)
    figures = write_scaling_figures(results, out_dir)
    return {**write_pages(scaling_blocks(results, figures), out_dir), **figures}


__all__ = [
    "SCALING_EXPERIMENTS",
    "is_scaling_results",
    "write_scaling_figures",
    "write_scaling_report",
]
