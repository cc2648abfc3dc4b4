"""Markdown and JSON renderings of a :class:`~invsolve.benchmarks.posterior.BenchmarkReport`."""

from __future__ import annotations

import json
import math
from pathlib import Path

from invsolve.benchmarks.posterior import BenchmarkReport

MARKDOWN_NAME = "posterior.md"
JSON_NAME = "posterior.json"


def _cell(stats: tuple[float, float] | None) -> str:
    return "–" if stats is None else f"{stats[0]:.3f} ± {stats[1]:.3f}"


def markdown_table(report: BenchmarkReport) -> str:
    """One table per dimension ``d``: SW (mean ± std over seeds) per ``d_y``, NFE, seconds."""
    config = report.config
    lines = [
        f"Sliced Wasserstein-1 to {config.samples} exact posterior samples ({config.directions} directions), "
        f"mean ± std over seeds {', '.join(map(str, config.seeds))}; NFE and seconds per solve of "
        f"{config.samples} samples (batched); mixture prior with sigma_max = "
        f"{'max(80, 2 max_k |mu_k|)' if config.sigma_max is None else format(config.sigma_max, 'g')}.",
        "",
    ]
    for d in config.dims:
        dys = config.measurement_dims
        lines.append(f"**d = {d}**")
        lines.append("")
        lines.append("| method | steps | NFE | s / solve | " + " | ".join(f"d_y = {d_y}" for d_y in dys) + " |")
        lines.append("|---|---:|---:|---:|" + "---:|" * len(dys))
        for label, attribute in (("exact posterior (noise floor)", "floor"), ("prior", "prior")):
            cells = [_cell(report.reference_stats(d, d_y, attribute)) for d_y in dys]
            lines.append(f"| {label} | | | | " + " | ".join(cells) + " |")
        for method in report.methods():
            cost = report.cost(method, d)
            head = "| | |" if cost is None else f"| {cost[0]} | {cost[1]:.0f} | {cost[2]:.2f} |"
            cells = [_cell(report.sw_stats(method, d, d_y)) for d_y in dys]
            lines.append(f"| {method} {head} " + " | ".join(cells) + " |")
        lines.append("")
    names = {label.split(" P=")[0] for label in report.methods()}
    for method in sorted(names & set(config.options)):
        if config.options[method]:
            settings = ", ".join(f"{key}={value}" for key, value in config.options[method].items())
            lines.append(f"- {method} options: {settings}")
    for method, reason in sorted(report.unavailable.items()):
        lines.append(f"- {method}: n/a ({reason})")
    for method, error in sorted(report.errors().items()):
        lines.append(f"- {method}: failed ({error})")
    return "\n".join(lines).rstrip() + "\n"


def write_report(report: BenchmarkReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``posterior.md`` and ``posterior.json`` into ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown, data = out / MARKDOWN_NAME, out / JSON_NAME
    markdown.write_text(markdown_table(report), encoding="utf-8")
    data.write_text(json.dumps(_strict_json(report.to_dict()), indent=2) + "\n", encoding="utf-8")
    return markdown, data


def _strict_json(value: object) -> object:
    """``value`` with non-finite floats (a diverged method's distance) replaced by ``None``."""
    if isinstance(value, dict):
        return {key: _strict_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strict_json(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
