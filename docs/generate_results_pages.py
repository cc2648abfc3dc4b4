"""Render the results pages from the committed benchmark JSON under docs/results/ (run by conf.py).

Every number on a results page comes from ``docs/results/<benchmark>.json``, written by
``python docs/record_result.py <benchmark> ...`` (see :doc:`results/index`). Each page
states the run's command, commit, date and machine as recorded in the file. Pages and
plots go to ``docs/results/generated/`` (ignored by git).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "generated"


def number(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def mean(values: list[Any]) -> float | None:
    finite = [v for v in values or [] if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def provenance(data: dict[str, Any]) -> list[str]:
    recorded = data.get("recorded", {})
    env = data.get("environment", {})
    lines = [
        "| recorded | |",
        "|---|---|",
        f"| command | `{recorded.get('command', 'not recorded')}` |",
        f"| commit | `{recorded.get('commit', 'not recorded')}` |",
        f"| date | {recorded.get('date', env.get('date', 'not recorded'))} |",
        f"| machine | {recorded.get('machine', 'not recorded')} |",
    ]
    if env:
        lines.append(
            f"| environment | {env.get('device')} ({env.get('device_name')}), {env.get('torch_threads')} torch threads,"
            f" torch {env.get('torch')}, Python {env.get('python')} |"
        )
    return [*lines, ""]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def plot(path: Path, draw: Callable[[Any], None]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    draw(axes)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def posterior_page(data: dict[str, Any]) -> list[str]:
    settings = [f"d={r['d']},d_y={r['d_y']}" for r in data["references"]]
    settings = list(dict.fromkeys(settings))
    refs: dict[str, dict[str, list[float]]] = {}
    for r in data["references"]:
        key = f"d={r['d']},d_y={r['d_y']}"
        refs.setdefault(key, {"floor": [], "prior": []})
        refs[key]["floor"].append(r["floor"])
        refs[key]["prior"].append(r["prior"])
    rows = [
        ["exact posterior (noise floor)", "", *[number(mean(refs[s]["floor"]), 3) for s in settings]],
        ["prior", "", *[number(mean(refs[s]["prior"]), 3) for s in settings]],
    ]
    nfe: dict[str, list[float]] = {}
    for run in data["runs"]:
        if run.get("nfe") is not None:
            nfe.setdefault(run["method"], []).append(run["nfe"])
    for method, per_setting in data["summary"].items():
        cells = []
        for s in settings:
            entry = per_setting.get(s)
            cells.append(f"{number(entry['sw_mean'], 3)} ± {number(entry['sw_std'], 3)}" if entry else "–")
        rows.append([f"`{method}`", number(mean(nfe.get(method, [])), 0), *cells])
    config = data["config"]
    lines = [
        "# Posterior benchmark",
        "",
        "Sliced Wasserstein-1 distance between each method's samples and exact posterior samples on",
        "the Gaussian-mixture problem of MCGdiff (lower is better; the noise floor is the distance",
        "between two sets of exact samples, the prior row the distance of prior samples). Mean ± std",
        f"over seeds {', '.join(map(str, config['seeds']))}; {config['samples']} samples,",
        f"{config['directions']} directions.",
        "",
        *provenance(data),
        "## Distance to the exact posterior",
        "",
        *table(["method", "NFE", *[s.replace(",", ", ") for s in settings]], rows),
        "![SW distance against NFE](posterior.png)",
        "",
    ]
    failed = {run["method"]: run["error"] for run in data["runs"] if run.get("error")}
    if failed:
        lines += ["Failed (the error of their first failed run):", ""]
        lines += [f"- `{m}`: {why}" for m, why in failed.items()]
        lines.append("")
    if data.get("unavailable"):
        lines += ["Not run (the problem's operator or prior lacks what they need):", ""]
        lines += [f"- `{m}`: {why}" for m, why in data["unavailable"].items()]
        lines.append("")

    def draw(axes: Any) -> None:
        for method, per_setting in data["summary"].items():
            values = [per_setting[s]["sw_mean"] for s in settings
                      if per_setting.get(s) and math.isfinite(per_setting[s]["sw_mean"]) and per_setting[s]["sw_mean"] < 1e6]
            cost = mean(nfe.get(method, []))
            if values and cost:
                axes.scatter([cost], [mean(values)], label=method)
                axes.annotate(method, (cost, mean(values)), fontsize=7, xytext=(3, 3), textcoords="offset points")
        floor = mean([v for s in settings for v in refs[s]["floor"]])
        if floor:
            axes.axhline(floor, color="grey", linestyle="--", linewidth=1, label="noise floor")
        axes.set_xscale("log")
        axes.set_xlabel("network evaluations per sample")
        axes.set_ylabel("SW-1 (mean over settings)")

    plot(OUT / "posterior.png", draw)
    return lines


def matrix_page(data: dict[str, Any], name: str = "matrix", title: str = "Methods × tasks") -> list[str]:
    tasks = data["config"]["tasks"]
    methods = list(dict.fromkeys(cell["method"] for cell in data["cells"]))
    cells = {(c["method"], c["task"]): c for c in data["cells"]}

    def value(method: str, task: str, key: str, digits: int) -> str:
        c = cells.get((method, task))
        if c is None:
            return "–"
        if c["status"] != "ok":
            return c["status"]
        if not c.get("psnr"):
            return "not run"  # a run stopped part-way (its partial report is saved after every cell)
        flags = " ".join(c.get("flags") or [])
        return (number(mean(c.get(key) or []), digits) + (f" {flags}" if flags else "")).strip()

    psnr = [[f"`{m}`", *[value(m, t, "psnr", 2) for t in tasks]] for m in methods]
    ssim = [[f"`{m}`", *[value(m, t, "ssim", 3) for t in tasks]] for m in methods]
    nfe = [[f"`{m}`", *[value(m, t, "nfe", 0) for t in tasks]] for m in methods if m != "no-learning"]
    steps = ", ".join(f"`{m}` {n}" for m, n in data["config"]["steps"].items()) or "every method's default"
    counts = data["config"].get("counts") or {}
    if counts:
        steps += "; images per task: " + ", ".join(f"{t} {n}" for t, n in counts.items())
    lines = [
        f"# {title}",
        "",
        f"Every method with its default hyperparameters on the prior {data['prior']}, "
        f"{data['config']['size']} px, {len(data['images'])} image(s) ({data['image_source']}); steps: {steps}.",
        "Outputs are clamped to [-1, 1] before scoring. Flags as written by the benchmark:",
        "† a non-finite output on some image, ‡ more than 3 dB below the no-learning PSNR on some image.",
        "Why official defaults lose on some cells (measured on a larger 64 px run): {ref}`matrix-64px-run`.",
        "",
        *provenance(data),
        "## Tasks",
        "",
        *[f"- {description}" for description in data["tasks"].values()],
        "",
        "## PSNR (dB)",
        "",
        *table(["method", *tasks], psnr),
        f"![PSNR per method and task]({name}.png)",
        "",
        "## SSIM",
        "",
        *table(["method", *tasks], ssim),
        "## NFE per image",
        "",
        *table(["method", *tasks], nfe),
        f"LPIPS: {data.get('lpips', 'not recorded')}.",
        "",
    ]

    def draw(axes: Any) -> None:
        width = 0.8 / max(len(methods), 1)
        for i, m in enumerate(methods):
            heights = [mean((cells.get((m, t)) or {}).get("psnr") or []) or 0.0 for t in tasks]
            axes.bar([j + i * width for j in range(len(tasks))], heights, width, label=m)
        axes.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))], tasks, fontsize=8)
        axes.set_ylabel("PSNR (dB)")
        axes.legend(fontsize=7, ncols=3)

    plot(OUT / f"{name}.png", draw)
    return lines


def speed_page(data: dict[str, Any]) -> list[str]:
    rows = []
    for c in data["cells"]:
        if c.get("status") != "ok":
            rows.append([f"`{c['method']}`", c["task"], str(c.get("size")), "", "", c.get("status", ""), "", "", "", ""])
            continue
        rows.append([
            f"`{c['method']}`", c["task"], str(c["size"]), str(c["steps"]), number(c["nfe"], 0),
            number(c["seconds"], 3), number(c["network_seconds"], 3), number(c["overhead"], 2),
            number(c["operator_seconds"], 3), number(c.get("peak_increment_mib"), 0),
        ])
    config = data["config"]
    lines = [
        "# Speed and memory",
        "",
        f"Seconds per solve on the prior {data['prior']}, batch {config['batch']}, against the time the",
        "same network calls take alone (overhead = seconds per solve / network seconds), the time",
        "spent in the operator, and the peak memory increment of the solve.",
        "",
        *provenance(data),
        *table(["method", "task", "px", "steps", "NFE", "s / solve", "network s", "overhead", "operator s", "peak MiB"], rows),
        "![seconds per solve](speed.png)",
        "",
    ]

    def draw(axes: Any) -> None:
        by_method: dict[str, list[tuple[int, float]]] = {}
        for c in data["cells"]:
            if c.get("status") == "ok":
                by_method.setdefault(f"{c['method']} ({c['task']})", []).append((c["size"], c["seconds"]))
        for label, points in by_method.items():
            points.sort()
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        axes.set_xlabel("image size (px)")
        axes.set_ylabel("seconds per solve")
        axes.legend(fontsize=7)

    plot(OUT / "speed.png", draw)
    return lines


def full_matrix_page(data: dict[str, Any]) -> list[str]:
    """The matrix at every method's full default steps (per-task runs joined by record_result.py)."""
    return matrix_page(data, "matrix-defaults", "Methods × tasks at the methods' full default steps")


PAGES = {
    "posterior": posterior_page,
    "matrix": matrix_page,
    "matrix-defaults": full_matrix_page,
    "speed": speed_page,
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, render in PAGES.items():
        source = RESULTS / f"{name}.json"
        if source.is_file():
            lines = render(json.loads(source.read_text(encoding="utf-8")))
        else:
            lines = [f"# {name}", "", f"No recorded run: `docs/results/{name}.json` is missing.", ""]
        text = "\n".join(lines)
        target = OUT / f"{name}.md"
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
