"""Markdown and JSON renderings of a :class:`~invsolve.benchmarks.speed.SpeedReport`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from invsolve.benchmarks.machine import describe
from invsolve.benchmarks.output import write_outputs
from invsolve.benchmarks.speed import SpeedReport

STEM = "speed"
COLUMNS = ("method", "steps", "NFE", "s / solve", "network s", "overhead", "operator s",
           "peak MiB", "one network call MiB", "peak ÷ call")


def _number(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _signed(value: Any) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:+.0f}"


def _row(cell: dict[str, Any]) -> str:
    if cell.get("status") != "ok":
        return f"| {cell['method']} | {cell.get('status')} |" + " |" * (len(COLUMNS) - 2)
    call = "fwd+bwd" if cell["backprop"] else "fwd"
    values = [
        cell["method"] + (" (diverged)" if cell.get("diverged") else ""),
        str(cell["steps"]), _number(cell["nfe"], 0), _number(cell["seconds"], 2),
        _number(cell["network_seconds"], 2), _number(cell["overhead"], 2), _number(cell["operator_seconds"], 2),
        _signed(cell.get("peak_increment_mib")),
        f"{_signed(cell.get('reference_increment_mib'))} ({call})", _number(cell.get("memory_ratio"), 2),
    ]
    return "| " + " | ".join(values) + " |"


def markdown_table(report: SpeedReport) -> str:
    """One table per task and size, then the refusals and failures."""
    config = report.config
    memory = next((c["memory_kind"] for c in report.cells if c.get("memory_kind")), "not measured")
    lines = [
        f"Speed of every method on prior `{report.prior}`, batch {config.batch}, "
        + (f"{config.steps} steps for every method" if config.steps else "each method's default steps")
        + (f" ({', '.join(f'{m} {n}' for m, n in sorted(config.method_steps.items()))})" if config.method_steps else "")
        + f"; {'one process per cell' if config.isolate else 'one process'}. Ran {describe(report.environment)}."
        + (" Hyperparameters other than the defaults: " + "; ".join(
            f"{m} " + ", ".join(f"{k}={v}" for k, v in o.items()) for m, o in sorted(config.method_options.items()))
           + "." if config.method_options else ""),
        "",
        "overhead = seconds per solve / network seconds for the same calls (forward, or forward + backward where "
        "the solve backpropagated through the network), timed in the same process before and after the solve; "
        "operator s = time inside the operator's methods plus its backward passes. Memory: "
        f"{memory}, as the increment over what the process held before the solve (weights, operator, "
        "measurement); 'one network call' is the same increment for a single network forward (+ backward) at the "
        "same batch" + (", measured in a second process per cell whose allocator returns freed memory (the "
        "timings come from the first)" if config.isolate and config.memory and "RSS" in memory else "") + ".",
        "",
    ]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for cell in report.cells:
        groups.setdefault((cell["task"], cell["size"]), []).append(cell)
    for (task, size), cells in groups.items():
        lines += [f"**{task}, {size} x {size} px**", "", "| " + " | ".join(COLUMNS) + " |",
                  "|---|" + "---:|" * (len(COLUMNS) - 1)]
        lines += [_row(cell) for cell in cells] + [""]
    for cell in report.cells:
        if cell.get("status") != "ok":
            where = f"{cell['method']} on {cell['task']} at {cell['size']} px"
            lines.append(f"- {where}: {cell['status']} ({cell.get('reason', '')})")
    return "\n".join(lines).rstrip() + "\n"


def write_report(report: SpeedReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``speed.md`` and ``speed.json`` into ``out_dir``."""
    return write_outputs(markdown_table(report), report.to_dict(), out_dir, STEM)
