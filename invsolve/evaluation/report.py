"""``summary.json`` and ``summary.md``: mean ± standard deviation per method."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from invsolve.evaluation.baseline import NO_LEARNING

#: Metric columns summarised as mean ± std, with their Markdown headers.
SCORE_HEADERS = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓"}


def _numbers(rows: list[dict[str, str]], column: str) -> list[float]:
    return [float(row[column]) for row in rows if row.get(column, "") != ""]


def _mean_std(values: list[float]) -> dict[str, float] | None:
    """Mean and sample standard deviation (``n - 1``; 0 for a single value), ``None`` for no values."""
    if not values:
        return None
    finite = all(math.isfinite(v) for v in values)
    std = statistics.stdev(values) if len(values) > 1 and finite else 0.0
    return {"mean": statistics.fmean(values), "std": std}


def method_order(rows: list[dict[str, str]], requested: list[str]) -> list[str]:
    """The baseline first, then the requested methods, then any others found in ``rows``."""
    found = {row["method"] for row in rows}
    ordered = [m for m in [NO_LEARNING, *requested] if m in found]
    return ordered + sorted(found - set(ordered))


def summarize(rows: list[dict[str, str]], requested: list[str], context: dict[str, Any]) -> dict[str, Any]:
    """Per-method statistics of ``metrics.csv`` rows plus the ``context`` of the run."""
    methods = {}
    for method in method_order(rows, requested):
        mine = [row for row in rows if row["method"] == method]
        memory = _numbers(mine, "peak_memory_mib")
        seconds = _numbers(mine, "seconds")
        methods[method] = {
            "images": len(mine),
            **{metric: _mean_std(_numbers(mine, metric)) for metric in SCORE_HEADERS},
            "nfe": statistics.fmean(_numbers(mine, "nfe")),
            "seconds_per_image": statistics.fmean(seconds),
            "images_per_second": len(seconds) / sum(seconds) if sum(seconds) > 0 else None,
            "peak_memory_mib": max(memory) if memory else None,
        }
    return {**context, "methods": methods}


def _cell(stat: dict[str, float] | None, digits: int) -> str:
    if stat is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def render_markdown(summary: dict[str, Any]) -> str:
    """A Markdown report: the set-up, then one table row per method."""
    settings = summary["settings"]
    lpips = summary["lpips"]
    lines = [
        "# invsolve evaluation",
        "",
        f"- data: `{settings['data_dir']}`, {summary['images']['evaluated']} images evaluated, "
        f"{summary['images']['errors']} unreadable, {summary['images'].get('failed_runs', 0)} diverged runs "
        "(see errors.csv; a rerun tries them again)",
        f"- operator: `{settings['operator']}` {settings['operator_args'] or ''}, "
        f"noise sigma {settings['noise_sigma']} on [-1, 1]",
        f"- prior: `{settings['prior']}`; images {settings['size'][0]}×{settings['size'][1]}; "
        f"steps: {settings['steps'] or 'paper defaults'}; seed {settings['seed']}",
        f"- no-learning baseline: {summary['baseline']}",
        f"- metrics on [0, 1]; mean ± sample std over images; LPIPS backbone {lpips['backbone']}"
        + ("" if lpips["available"] else f" — **unavailable** ({lpips['reason']})"),
        f"- peak memory: {summary['memory']}",
        *_network_line(summary.get("network")),
        f"- grid.png columns: {', '.join(['ground truth', 'measurement', *summary['methods']])}",
        "",
        "| method | images | " + " | ".join(SCORE_HEADERS.values())
        + " | NFE | s / image | images / s | peak memory (MiB) |",
        "|---|---:|" + "---:|" * len(SCORE_HEADERS) + "---:|---:|---:|---:|",
    ]
    for method, stats in summary["methods"].items():
        memory = "n/a" if stats["peak_memory_mib"] is None else f"{stats['peak_memory_mib']:.0f}"
        rate = stats.get("images_per_second")
        scores = [_cell(stats["psnr"], 2), _cell(stats["ssim"], 4), _cell(stats["lpips"], 4)]
        lines.append(
            f"| {method} | {stats['images']} | " + " | ".join(scores)
            + f" | {stats['nfe']:g} | {stats['seconds_per_image']:.3f} | "
            + ("n/a" if rate is None else f"{rate:.3g}") + f" | {memory} |"
        )
    return "\n".join(lines) + "\n"


def _network_line(network: dict[str, Any] | None) -> list[str]:
    """The line saying how the network ran (absent from summaries of older runs)."""
    if not network:
        return []
    return [
        f"- network: {network['dtype']}, torch.compile {network['compile']}, "
        f"channels-last {'on' if network['channels_last'] else 'off'}; {network['batch_size']} image(s) per solve "
        "(s / image: a batched solve's time shared by its images; images / s = images / total seconds)"
    ]


def write_summary(summary: dict[str, Any], json_path: Path, markdown_path: Path) -> None:
    """Write ``summary`` as JSON (``NaN``/``inf`` as strings) and as Markdown."""
    json_path.write_text(json.dumps(_json_safe(summary), indent=2) + "\n", encoding="utf-8")
    markdown_path.write_text(render_markdown(summary), encoding="utf-8")


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
