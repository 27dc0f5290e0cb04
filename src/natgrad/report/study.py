"""report.md, report.html and figures of a ``natgrad tune`` folder (one or more studies).

Per study: a trial table (point, status, value, hyperparameters, reason), the best-of-K
curve with its bootstrap band, the validation value against the learning rate, and lr
against eps where eps is searched. Input is the plain dict of
:func:`natgrad.tune.summary.study_folder_summary`.
"""

from __future__ import annotations

from pathlib import Path

from natgrad.report.document import Block, fmt, write_pages
from natgrad.report.figures import plt, save_figure, scatter_lr_eps


def searched(study: dict) -> set[str]:
    return {dimension["name"] for dimension in study["search_space"]["search"]}


def best_of_k_panel(study: dict, path: Path) -> Path:
    curve = study["best_of_k"]
    figure, axis = plt.subplots(figsize=(5.5, 4))
    axis.plot(curve["k"], curve["median"], label="median")
    axis.fill_between(curve["k"], curve["low"], curve["high"], alpha=0.2, label="95% band")
    axis.set(xlabel="number of trials", ylabel=f"best {study['metric']}", title=study["name"])
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def lr_panel(study: dict, path: Path) -> Path:
    """Validation value against the learning rate; failed trials as red crosses on top."""
    done = [t for t in study["trials"] if t["value"] is not None]
    failed = [t for t in study["trials"] if t["value"] is None]
    figure, axis = plt.subplots(figsize=(5.5, 4))
    axis.scatter([t["hyperparameters"]["lr"] for t in done], [t["value"] for t in done], s=30)
    if failed:
        top = max((t["value"] for t in done), default=1.0)
        axis.scatter(
            [t["hyperparameters"]["lr"] for t in failed],
            [top] * len(failed),
            marker="x",
            color="red",
            label="failed",
        )
        axis.legend(fontsize=8)
    axis.set(xscale="log", xlabel="lr", ylabel=study["metric"], title=study["name"])
    return save_figure(figure, path)


def lr_eps_panel(study: dict, path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(5.5, 4))
    scatter = scatter_lr_eps(axis, study["trials"])
    figure.colorbar(scatter, ax=axis, label=study["metric"])
    axis.set(xscale="log", yscale="log", xlabel="lr", ylabel="eps", title=study["name"])
    return save_figure(figure, path)


def study_figures(study: dict, out_dir: Path) -> dict[str, Path]:
    """The figures of one study; lr panels only where lr (and eps) are searched."""
    figures = {"best_of_k": best_of_k_panel(study, out_dir / f"{study['name']}-best_of_k.png")}
    names = searched(study)
    if "lr" in names and study["trials"]:
        figures["lr"] = lr_panel(study, out_dir / f"{study['name']}-lr.png")
        if "eps" in names:
            figures["lr_eps"] = lr_eps_panel(study, out_dir / f"{study['name']}-lr_eps.png")
    return figures


CAPTIONS = {
    "best_of_k": "Best validation value vs number of trials (bootstrap median, 95% band)",
    "lr": "Validation value of each trial against its learning rate (failed: red crosses)",
    "lr_eps": "lr against eps of each trial, coloured by its validation value",
}


def study_blocks(study: dict, figures: dict[str, Path]) -> list[Block]:
    settings = study["settings"]
    best = study["best"]
    intro = (
        f"Workload {settings['workload']}, optimizer {settings['optimizer']}, "
        f"{settings['space']} space; {len(study['trials'])} trials of {settings['steps']} "
        f"steps (Halton seed {settings['seed']}), {study['failed']} failed, "
        f"{study['recovered']} recovered from stopped processes, "
        f"{study['unfinished']} not finished. Best {study['metric']}: "
        + (f"{fmt(best['value'])} (point {best['point_index']})." if best else "none.")
    )
    rows = [
        [
            str(t["point_index"]),
            t["status"],
            fmt(t["value"]),
            ", ".join(f"{k}={fmt(v)}" for k, v in sorted(t["hyperparameters"].items())),
            t["reason"],
        ]
        for t in study["trials"]
    ]
    blocks = [
        Block("h2", f"Study {study['name']}"),
        Block("p", intro),
        Block(
            "table",
            header=["point", "status", study["metric"], "hyperparameters", "reason"],
            rows=rows,
        ),
    ]
    for name, path in figures.items():
        blocks += [Block("p", CAPTIONS[name]), Block("img", text=path.name, items=[CAPTIONS[name]])]
    return blocks


def write_study_report(summary: dict, out_dir: Path) -> dict[str, Path]:
    """Write the figures, report.md and report.html of a tune folder into ``out_dir``."""
    out_dir = Path(out_dir)
    blocks = [
        Block("h1", f"Tuning studies in {out_dir.name}"),
        Block("p", f"Storage: {summary['storage']}."),
    ]
    written: dict[str, Path] = {}
    for study in summary["studies"]:
        figures = study_figures(study, out_dir)
        blocks += study_blocks(study, figures)
        written.update({f"{study['name']}:{name}": path for name, path in figures.items()})
    return {**write_pages(blocks, out_dir), **written}
