"""report.md and a self-contained report.html from ``results.json`` of ``natgrad compare``.

The report is built once as a list of blocks (heading, paragraph, list, table, image)
and rendered twice: Markdown with the PNGs beside it, and HTML with the same PNGs
embedded as base64 data URIs so the single file opens anywhere.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from natgrad.jsonio import write_text_atomically
from natgrad.report.figures import write_figures


@dataclass
class Block:
    """One piece of the report: kind is h1, h2, p, ul, table or img."""

    kind: str
    text: str = ""
    items: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


def fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def ranking_blocks(results: dict) -> list[Block]:
    blocks = []
    metric = results["config"]["test_metric"]
    for space in results["config"]["spaces"]:
        rows = [
            [
                str(e["rank"]),
                e["optimizer"],
                fmt(e["mean"]),
                f"[{fmt(e['interval'][0])}, {fmt(e['interval'][1])}]",
                f"{e['rank_interval'][0]}-{e['rank_interval'][1]}",
            ]
            for e in results["ranking"][space]
        ]
        blocks.append(Block("h2", f"Ranking, {space} space"))
        blocks.append(
            Block(
                "table",
                header=["rank", "optimizer", f"mean {metric}", "95% interval", "rank interval"],
                rows=rows,
            )
        )
    return blocks


def checks_blocks(results: dict) -> list[Block]:
    items = [
        c["message"] for space in results["config"]["spaces"] for c in results["inclusion"][space]
    ]
    flips = [
        f"{f['first_better']} beats {f['then_better']} in the restricted space, "
        f"{f['then_better']} beats {f['first_better']} in the full space "
        "(intervals apart in both)"
        for f in results["rank_flips"]
        if f.get("intervals_apart", True)
    ]
    within = results.get("rank_flips_within_intervals", 0)
    if within:
        flips.append(
            f"{within} other pair(s) swap order between the spaces within their intervals "
            "(not a significant difference)"
        )
    blocks = [
        Block("h2", "Inclusion consistency"),
        Block("ul", items=items or ["no inclusion pair compared"]),
    ]
    blocks += [
        Block("h2", "Rank flips between restricted and full spaces"),
        Block("ul", items=flips or ["none"]),
    ]
    blocks += [Block("h2", "Warnings"), Block("ul", items=results["warnings"] or ["none"])]
    return blocks


def hyperparameter_blocks(results: dict) -> list[Block]:
    rows = []
    for optimizer in results["config"]["optimizers"]:
        for space in results["config"]["spaces"]:
            study = results["studies"][optimizer][space]
            best = study["best"]
            chosen = (
                ", ".join(f"{k}={fmt(v)}" for k, v in sorted(best["hyperparameters"].items()))
                if best
                else "all trials failed"
            )
            target = study["steps_to_target"]
            rows.append(
                [
                    optimizer,
                    space,
                    f"{len(study['trials'])} ({study['failed']} failed)",
                    fmt(best["value"]) if best else "n/a",
                    fmt(study["test"]["mean"]),
                    fmt(target["median"]),
                    chosen,
                ]
            )
    metric = results["config"]["metric"]
    return [
        Block("h2", "Chosen hyperparameters"),
        Block(
            "table",
            header=[
                "optimizer",
                "space",
                "trials",
                f"best {metric}",
                f"mean {results['config']['test_metric']}",
                "steps to target (median)",
                "hyperparameters",
            ],
            rows=rows,
        ),
    ]


def figure_blocks(figures: dict[str, Path]) -> list[Block]:
    captions = {
        "best_of_k": "Best validation value vs number of trials (bootstrap median, 95% band)",
        "final_error": (
            "Held-out test value of the re-run best trial, per optimizer and space (95% interval)"
        ),
        "curves_steps": "Validation curves of the re-runs vs steps (mean over seeds)",
        "curves_wallclock": "Validation curves of the re-runs vs wall-clock seconds (seed mean)",
        "lr_eps": "Learning rate vs eps of every trial, coloured by validation value",
    }
    blocks = [Block("h2", "Figures")]
    for name, path in figures.items():
        blocks += [Block("p", captions[name]), Block("img", text=path.name, items=[captions[name]])]
    return blocks


def report_blocks(results: dict, figures: dict[str, Path]) -> list[Block]:
    config = results["config"]
    intro = (
        f"Workload {config['workload']}; {config['trials']} quasi-random trials of "
        f"{config['steps']} steps per optimizer and search space (Halton seed {config['seed']}); "
        f"the best trial on {config['metric']} re-run with {config['seeds']} seeds and evaluated "
        f"once on the held-out test set; intervals are 95% (Student-t over seeds, bootstrap with "
        f"{config['bootstrap']} resamples for the best-of-K curves; rank intervals are the "
        f"ranks that the score intervals allow). "
        f"Storage: {config['storage']}."
    )
    return [
        Block("h1", f"Optimizer comparison: {config['workload']}"),
        Block("p", intro),
        *ranking_blocks(results),
        *checks_blocks(results),
        *hyperparameter_blocks(results),
        *figure_blocks(figures),
    ]


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if block.kind in ("h1", "h2"):
            lines += [("#" if block.kind == "h1" else "##") + " " + block.text, ""]
        elif block.kind == "p":
            lines += [block.text, ""]
        elif block.kind == "ul":
            lines += [f"- {item}" for item in block.items] + [""]
        elif block.kind == "table":
            lines += ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
            lines += [
                "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                for row in block.rows
            ]
            lines.append("")
        elif block.kind == "img":
            lines += [f"![{block.items[0]}]({block.text})", ""]
    return "\n".join(lines)


def to_html(blocks: list[Block], folder: Path) -> str:
    body: list[str] = []
    for block in blocks:
        if block.kind in ("h1", "h2", "p"):
            body.append(f"<{block.kind}>{html.escape(block.text)}</{block.kind}>")
        elif block.kind == "ul":
            body.append(
                "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in block.items) + "</ul>"
            )
        elif block.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif block.kind == "img":
            data = base64.b64encode((folder / block.text).read_bytes()).decode("ascii")
            body.append(
                f'<img alt="{html.escape(block.items[0])}" src="data:image/png;base64,{data}">'
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:3px 8px;font-size:90%}"
        "img{max-width:100%;display:block;margin:0.5em 0 1.5em}"
    )
    title = html.escape(blocks[0].text if blocks else "report")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_pages(blocks: list[Block], out_dir: Path) -> dict[str, Path]:
    """Render ``blocks`` as report.md and report.html in ``out_dir``, each written
    atomically (a reader sees the old page or the new one); returns their paths."""
    markdown, page = out_dir / "report.md", out_dir / "report.html"
    write_text_atomically(markdown, to_markdown(blocks))
    write_text_atomically(page, to_html(blocks, out_dir))
    return {"markdown": markdown, "html": page}


def write_report(results: dict, out_dir: Path) -> dict[str, Path]:
    """Write the figures, report.md and report.html into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    figures = write_figures(results, out_dir)
    return {**write_pages(report_blocks(results, figures), out_dir), **figures}
