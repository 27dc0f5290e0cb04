"""`natgrad demo`: a short, self-contained comparison of optimizers on embedded data.

Each optimizer gets a small learning-rate grid around its default; the best setting on
validation loss is kept. The demo prints a table and writes report.md with figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from natgrad.optim import OPTIMIZERS  # noqa: E402
from natgrad.train import RunConfig, train  # noqa: E402

DEMO_OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "nadam", "kfac")
LR_MULTIPLIERS = (0.1, 0.3, 1.0, 3.0)
DEFAULT_WORKLOAD = "digits_mlp"


def demo_optimizers() -> list[str]:
    """The demo's optimizers that this installation registers, in a fixed order."""
    return [name for name in DEMO_OPTIMIZERS if name in OPTIMIZERS]


def tune_learning_rate(workload: str, optimizer: str, out_dir: Path, steps: int) -> dict:
    """Train with each learning rate of the grid; return the best run by validation loss."""
    base_lr = float(OPTIMIZERS[optimizer].defaults()["lr"])
    best: dict | None = None
    for multiplier in LR_MULTIPLIERS:
        lr = base_lr * multiplier
        config = RunConfig(workload, optimizer, steps=steps, hyperparameters={"lr": lr})
        result = train(config, out_dir / f"{optimizer}_lr{lr:.3g}", overwrite=True)
        score = result.final.get("val_loss", math.inf)
        score = score if result.status == "completed" and math.isfinite(score) else math.inf
        if best is None or score < best["score"]:
            best = {"optimizer": optimizer, "lr": lr, "score": score, "result": result}
    return best


def write_report(out_dir: Path, workload: str, best_runs: list[dict]) -> None:
    """Table, figures and report.md for the demo."""
    figure, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4))
    for entry in best_runs:
        history = entry["result"].history
        curves.plot(
            [r["step"] for r in history], [r["val_loss"] for r in history], label=entry["optimizer"]
        )
    curves.set(
        xlabel="step", ylabel="validation loss", yscale="log", title=f"{workload}: best lr each"
    )
    curves.legend()
    names = [entry["optimizer"] for entry in best_runs]
    errors = [entry["result"].final.get("test_error", math.nan) for entry in best_runs]
    bars.bar(names, errors)
    bars.set(ylabel="test error", title="held-out test error at the end")
    figure.tight_layout()
    figure.savefig(out_dir / "demo.png", dpi=110)
    plt.close(figure)
    lines = [
        f"# natgrad demo: {workload}",
        "",
        "Each optimizer: learning rate picked from a 4-point grid on validation loss.",
        "",
        "| optimizer | lr | val loss | val error | test error | train time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for entry in best_runs:
        final = entry["result"].final
        lines.append(
            f"| {entry['optimizer']} | {entry['lr']:.3g} | {final.get('val_loss', math.nan):.4f} | "
            f"{final.get('val_error', math.nan):.4f} | {final.get('test_error', math.nan):.4f} | "
            f"{final.get('wall_time', math.nan):.1f} |"
        )
    lines += ["", "![curves and test error](demo.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    print("\n".join(lines[4:-3]))


def run_demo(out_dir: Path, workload: str | None = None, steps: int = 300) -> list[dict]:
    """Run the demo comparison into ``out_dir`` and return the best run per optimizer."""
    workload = workload or DEFAULT_WORKLOAD
    out_dir.mkdir(parents=True, exist_ok=True)
    best_runs = [
        tune_learning_rate(workload, name, out_dir / "runs", steps) for name in demo_optimizers()
    ]
    write_report(out_dir, workload, best_runs)
    summary = [
        {"optimizer": e["optimizer"], "lr": e["lr"], "final": e["result"].final} for e in best_runs
    ]
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"report: {out_dir / 'report.md'}")
    return best_runs
