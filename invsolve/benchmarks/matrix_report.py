"""Markdown and JSON renderings of a :class:`~invsolve.benchmarks.matrix.MatrixReport`."""

from __future__ import annotations

import math
from pathlib import Path

from invsolve.benchmarks.machine import describe
from invsolve.benchmarks.matrix import BELOW_BASELINE, MARGIN_DB, NON_FINITE, Cell, MatrixReport
from invsolve.benchmarks.output import write_outputs
from invsolve.evaluation.baseline import NO_LEARNING

STEM = "matrix"
MARKS = {NON_FINITE: "†", BELOW_BASELINE: "‡"}


def _number(value: float | None, digits: int) -> str:
    if value is None:
        return "–"
    return "NaN" if not math.isfinite(value) else f"{value:.{digits}f}"


def _metric_cell(cell: Cell | None, metric: str, digits: int) -> str:
    """The mean of ``metric``; PSNR cells carry the flags' marks."""
    if cell is None:
        return ""
    if cell.status != "ok":
        return cell.status
    if metric == "lpips" and cell.lpips is None:
        return "–"
    marks = "".join(MARKS[flag] for flag in cell.flags if flag in MARKS) if metric == "psnr" else ""
    return _number(cell.mean(metric), digits) + (f" {marks}" if marks else "")


def _cost_cell(cell: Cell | None) -> str:
    if cell is None:
        return ""
    if cell.status != "ok":
        return cell.status
    return f"{_number(cell.mean('nfe'), 0)} / {_number(cell.mean('seconds'), 1)}"


def _table(report: MatrixReport, render, rows: list[str]) -> list[str]:
    tasks = report.tasks()
    lines = ["| method | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for method in rows:
        lines.append(f"| {method} | " + " | ".join(render(report.cell(method, task)) for task in tasks) + " |")
    return lines + [""]


def markdown_table(report: MatrixReport) -> str:
    """PSNR, SSIM, LPIPS (when available) and NFE / seconds tables, then the refusals and failures."""
    config = report.config
    steps = ", ".join(f"{m} {n}" for m, n in sorted(config.steps.items())) or "each method's default"
    noise = "each preset's (0.05 on [-1, 1])" if config.noise_sigma is None else f"{config.noise_sigma:g} on [-1, 1]"
    lines = [
        f"Methods x tasks on prior `{report.prior}` at {config.size} x {config.size} px: "
        f"{len(report.image_names)} image(s), {report.image_source} ({', '.join(report.image_names)}); "
        f"measurement noise {noise}; default hyperparameters, steps: {steps}; seed {config.seed}; outputs "
        "clamped to [-1, 1] before scoring, as `invsolve evaluate` does."
        + (f" Ran {describe(report.environment)}." if report.environment else ""),
        "",
        "Tasks: " + "; ".join(report.task_descriptions.values()) + ".",
        "",
        "No-learning: " + "; ".join(f"{c.task}: {c.reason}" for c in report.cells.values() if c.method == NO_LEARNING)
        + ". "
        f"{MARKS[NON_FINITE]} non-finite output on some image; {MARKS[BELOW_BASELINE]} more than "
        f"{MARGIN_DB:g} dB below the no-learning PSNR on some image.",
        "",
    ]
    rows = [NO_LEARNING, *report.methods()]
    lines += ["**PSNR (dB)**, mean over images", ""] + _table(report, lambda c: _metric_cell(c, "psnr", 2), rows)
    lines += ["**SSIM**, mean over images", ""] + _table(report, lambda c: _metric_cell(c, "ssim", 3), rows)
    if any(cell.lpips is not None for cell in report.cells.values()):
        lines += ["**LPIPS (VGG)**, mean over images, lower is better", ""]
        lines += _table(report, lambda c: _metric_cell(c, "lpips", 3), rows)
    else:
        lines += [f"LPIPS: {report.lpips_note}.", ""]
    lines += ["**NFE / seconds per image**", ""] + _table(report, _cost_cell, report.methods())
    for cell in report.cells.values():
        if cell.status in ("n/a", "failed") and cell.method != NO_LEARNING:
            lines.append(f"- {cell.method} on {cell.task}: {cell.status} ({cell.reason})")
    return "\n".join(lines).rstrip() + "\n"


def write_report(report: MatrixReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``matrix.md`` and ``matrix.json`` into ``out_dir``."""
    return write_outputs(markdown_table(report), report.to_dict(), out_dir, STEM)
