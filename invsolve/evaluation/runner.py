"""``evaluate_folder``: every image × method of a folder, resumable and sharded with accelerate."""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
from tqdm.auto import tqdm

import operators
import priors
from invsolve.api import methods as known_methods
from invsolve.samplers import registered
from invsolve.validation import check_methods_fit
from invsolve.evaluation.baseline import NO_LEARNING, baseline_kind
from invsolve.evaluation.dataset import ImageEntry, list_images, shard
from invsolve.evaluation.grid import write_grid
from invsolve.evaluation.layout import OutputLayout
from invsolve.evaluation.memory import memory_kind
from invsolve.evaluation.report import method_order, summarize, write_summary
from invsolve.evaluation.store import (
    ERROR_COLUMNS,
    METRIC_COLUMNS,
    CsvLog,
    merge_rows,
    rank_files,
    rank_path,
    read_rows,
)
from invsolve.evaluation.work import UNREADABLE, ImageEvaluator
from invsolve.metrics import LPIPS, LPIPS_BACKBONES, net_label

logger = logging.getLogger(__name__)

METRICS = ("psnr", "ssim", "lpips")
#: Default image size when neither ``size`` nor the prior fixes one.
DEFAULT_SIZE = 256
#: How long a finished process waits at the final barrier for the slowest shard.
BARRIER_TIMEOUT = timedelta(hours=48)
#: Settings a resumed run must share with the run that wrote OUT.
IDENTITY_KEYS = (
    "data_dir", "operator", "operator_args", "preset", "noise_sigma", "prior", "size", "seed", "steps", "metrics",
    "lpips_net",
)


@dataclass
class EvaluationSettings:
    """What to evaluate and where to write it (see ``invsolve evaluate --help``)."""

    data_dir: str
    out: str
    operator: str
    prior: str
    methods: list[str]
    operator_args: dict[str, Any] = field(default_factory=dict)
    noise_sigma: float = 0.05
    size: int | None = None
    limit: int | None = None
    seed: int = 0
    steps: int | None = None
    metrics: tuple[str, ...] = METRICS
    lpips_net: str = "vgg"
    overwrite: bool = False
    device: str | None = None
    grid_rows: int = 8
    progress: bool = True
    preset: str | None = None

    def check(self) -> None:
        """Reject bad settings before anything is loaded.

        With ``preset`` (:func:`operators.preset`), ``operator`` must be empty or the
        preset's and ``operator_args`` empty or the preset's; both are then set from it.
        """
        if self.preset is not None:
            task = operators.preset(self.preset)
            if self.operator not in ("", task.operator) or self.operator_args not in ({}, task.options):
                raise ValueError(
                    f"preset {self.preset!r} fixes the operator ({task.operator} with {task.options}); "
                    "give either a preset or an operator with its arguments"
                )
            self.operator, self.operator_args = task.operator, dict(task.options)
        known = known_methods()
        if not self.methods:
            raise ValueError("--methods needs at least one method")
        for method in self.methods:
            if method not in known:
                raise ValueError(f"unknown method {method!r}; known methods: {', '.join(sorted(known))}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"--methods lists a method twice: {','.join(self.methods)}")
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown or not self.metrics:
            given = ", ".join(unknown) or "(none given)"
            raise ValueError(f"unknown metric(s) {given}; choose from {', '.join(METRICS)}")
        if self.lpips_net not in LPIPS_BACKBONES:
            raise ValueError(f"unknown LPIPS backbone {self.lpips_net!r}; choose one of {', '.join(LPIPS_BACKBONES)}")
        if self.noise_sigma < 0:
            raise ValueError(f"--noise-sigma must be >= 0, got {self.noise_sigma}")
        for name, value, least in (("--size", self.size, 1), ("--steps", self.steps, 1), ("--limit", self.limit, 1)):
            if value is not None and value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")
        if self.grid_rows < 1:
            raise ValueError(f"--grid-rows must be >= 1, got {self.grid_rows}")
        if self.device not in (None, "cpu", "cuda"):
            raise ValueError(f"unsupported device {self.device!r}; use cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("CUDA is not available on this machine; use --device cpu")


def process_state(device: str | None) -> Any:
    """accelerate's ``PartialState``: rank and count under ``accelerate launch``, one process otherwise.

    CPU processes (``--device cpu``, ``ACCELERATE_USE_CPU``, or several processes on
    a machine without CUDA) communicate through gloo.
    """
    from accelerate import PartialState

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    use_cpu = (
        device == "cpu"
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        or (several and not torch.cuda.is_available())
    )
    return PartialState(cpu=use_cpu, timeout=BARRIER_TIMEOUT)


def _image_format(prior: Any, size: int | None) -> tuple[str, tuple[int, int]]:
    """File mode (``"RGB"``/``"L"``) and ``(H, W)``: ``size``, else the prior's fixed size, else the default."""
    hw = (size, size) if size is not None else priors.fixed_size(prior) or (DEFAULT_SIZE, DEFAULT_SIZE)
    return priors.image_mode(prior), hw


def _identity(settings: EvaluationSettings, hw: tuple[int, int]) -> dict[str, Any]:
    prior = os.path.abspath(settings.prior) if os.path.isdir(settings.prior) else settings.prior
    return {
        "data_dir": os.path.abspath(settings.data_dir),
        "operator": settings.operator,
        "operator_args": settings.operator_args,
        "preset": settings.preset,
        "noise_sigma": settings.noise_sigma,
        "prior": prior,
        "size": list(hw),
        "seed": settings.seed,
        "steps": settings.steps,
        "metrics": sorted(settings.metrics),
        "lpips_net": settings.lpips_net,
    }


def _check_resumable(layout: OutputLayout, identity: dict[str, Any]) -> None:
    if not layout.config.is_file():
        return
    previous = json.loads(layout.config.read_text(encoding="utf-8"))
    changed = [key for key in IDENTITY_KEYS if previous.get(key) != identity[key]]
    if changed:
        details = "; ".join(f"{key}: {previous.get(key)!r} then, {identity[key]!r} now" for key in changed)
        raise ValueError(
            f"{layout.root} holds results of a different set-up ({details}); "
            "use another --out, or --overwrite to discard them"
        )


def _write_config(layout: OutputLayout, identity: dict[str, Any]) -> None:
    """Replace ``config.json`` atomically: other processes may be reading it."""
    temporary = layout.config.with_name(f".{layout.config.name}.tmp")
    temporary.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, layout.config)


def _start_fresh(layout: OutputLayout) -> None:
    """``--overwrite``: remove every artefact an earlier run wrote (and nothing else)."""
    for folder in ("ground_truth", "measurement", "methods"):
        shutil.rmtree(layout.root / folder, ignore_errors=True)
    for path in (layout.metrics, *rank_files(layout.metrics), layout.summary_json, layout.summary_md, layout.grid):
        path.unlink(missing_ok=True)


def _done_pairs(layout: OutputLayout) -> set[tuple[str, str]]:
    """(image, method) pairs with a recorded row and a restoration on disk."""
    done = set()
    for source in (layout.metrics, *rank_files(layout.metrics)):
        for row in read_rows(source, METRIC_COLUMNS):
            if layout.restoration(row["method"], row["name"]).is_file():
                done.add((row["image"], row["method"]))
    return done


def _build_lpips(settings: EvaluationSettings, device: torch.device, is_main: bool) -> LPIPS | None:
    if "lpips" not in settings.metrics:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lpips = LPIPS(settings.lpips_net, device=device)
    if not lpips.available and is_main:
        logger.warning("warning: LPIPS unavailable, reported as n/a: %s", lpips.reason)
    return lpips


def evaluate_folder(settings: EvaluationSettings) -> dict[str, Any] | None:
    """Evaluate every image of ``settings.data_dir`` with every method; write the report under ``out``.

    Each process of an ``accelerate launch`` takes a disjoint round-robin shard of
    the sorted images and appends its rows to its own CSV file; the main process
    merges them and writes ``summary.json``, ``summary.md`` and ``grid.png``.  Pairs
    already in the CSV files (with their restoration on disk) are skipped unless
    ``overwrite``.  Returns the summary on the main process, ``None`` on the others.
    """
    settings.check()
    state = process_state(settings.device)
    single = state.num_processes == 1
    device = torch.device(settings.device) if single and settings.device else state.device
    entries = list_images(settings.data_dir, settings.limit)
    layout = OutputLayout(settings.out)
    task = operators.preset(settings.preset) if settings.preset is not None else None
    operator = task.build(seed=settings.seed) if task else operators.build(settings.operator, **settings.operator_args)
    prior = priors.load_prior(settings.prior, device=device)
    check_methods_fit(settings.methods, registered(), operator, prior)
    mode, hw = _image_format(prior, settings.size)
    if "ssim" in settings.metrics and min(hw) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels; use --size 11 or more (got {hw})")
    identity = _identity(settings, hw)
    if not settings.overwrite:
        _check_resumable(layout, identity)
    if state.is_main_process:
        layout.root.mkdir(parents=True, exist_ok=True)
        if settings.overwrite:
            _start_fresh(layout)
        for path in (layout.errors, *rank_files(layout.errors)):
            path.unlink(missing_ok=True)
        _write_config(layout, identity)
    state.wait_for_everyone()

    all_methods = [NO_LEARNING, *settings.methods]
    done = _done_pairs(layout)
    tasks = [
        (entry, [m for m in all_methods if (entry.key, m) not in done])
        for entry in shard(entries, state.process_index, state.num_processes)
    ]
    tasks = [(entry, pending) for entry, pending in tasks if pending]
    evaluator = ImageEvaluator(
        operator=operator, prior=prior, layout=layout, noise_sigma=settings.noise_sigma, seed=settings.seed,
        size=hw, mode=mode, steps=settings.steps, metrics=tuple(settings.metrics),
        lpips=_build_lpips(settings, device, state.is_main_process), device=device,
        progress=settings.progress and state.is_main_process, preset=task if task and task.per_image else None,
    )
    with CsvLog(rank_path(layout.metrics, state.process_index, state.num_processes), METRIC_COLUMNS) as rows, \
            CsvLog(rank_path(layout.errors, state.process_index, state.num_processes), ERROR_COLUMNS) as errors:
        _run_tasks(tasks, all_methods, evaluator, rows, errors, settings.progress and state.is_main_process)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return _finish(settings, layout, entries, hw, mode, operator, device, evaluator.lpips, state.num_processes)


def _run_tasks(
    tasks: list[tuple[ImageEntry, list[str]]],
    all_methods: list[str],
    evaluator: ImageEvaluator,
    rows: CsvLog,
    errors: CsvLog,
    progress: bool,
) -> None:
    """Work through ``tasks``, recording each finished pair at once; unreadable images go to ``errors``."""
    overall = tqdm(total=sum(len(p) for _, p in tasks), desc="overall", disable=not progress, dynamic_ncols=True)
    per_method = {
        method: tqdm(
            total=sum(method in p for _, p in tasks), desc=f"{method} (images)", position=i + 1,
            disable=not progress, dynamic_ncols=True,
        )
        for i, method in enumerate(all_methods)
    }
    baseline_missing = False
    for entry, pending in tasks:
        try:
            x = evaluator.read(entry)
        except UNREADABLE as err:
            errors.append({"image": entry.key, "error": " ".join(f"{type(err).__name__}: {err}".split())})
            overall.update(len(pending))
            continue
        y = evaluator.measure(entry, x)
        for method in pending:
            overall.set_postfix_str(f"{method} on {entry.key}", refresh=False)
            row = evaluator.restore(entry, x, y, method)
            if row is not None:
                rows.append(row)
            elif not baseline_missing:
                baseline_missing = True
                logger.warning("warning: no no-learning baseline for this operator and measurement shape")
            per_method[method].update()
            overall.update()
    for bar in (*per_method.values(), overall):
        bar.close()


def _finish(
    settings: EvaluationSettings,
    layout: OutputLayout,
    entries: list[ImageEntry],
    hw: tuple[int, int],
    mode: str,
    operator: Any,
    device: torch.device,
    lpips: LPIPS | None,
    num_processes: int,
) -> dict[str, Any]:
    """Main process: merge the per-process files, write the summary and the grid."""
    rows = merge_rows(layout.metrics, METRIC_COLUMNS, ("image", "method"))
    error_rows = merge_rows(layout.errors, ERROR_COLUMNS, ("image",))
    context = {
        "settings": {**_identity(settings, hw), "methods": settings.methods, "limit": settings.limit},
        "processes": num_processes,
        "device": str(device),
        "images": {
            "listed": len(entries),
            "evaluated": len({row["image"] for row in rows}),
            "errors": len(error_rows),
        },
        "baseline": baseline_kind(operator),
        "memory": memory_kind(device),
        "lpips": {
            "backbone": net_label(settings.lpips_net),
            "available": bool(lpips is not None and lpips.available),
            "reason": "not requested" if lpips is None else lpips.reason,
        },
    }
    summary = summarize(rows, settings.methods, context)
    write_summary(summary, layout.summary_json, layout.summary_md)
    names = sorted({(row["image"], row["name"]) for row in rows})[: settings.grid_rows]
    if names:
        columns = method_order(rows, settings.methods)
        grid_rows = [
            [layout.ground_truth(name), layout.measurement(name), *(layout.restoration(m, name) for m in columns)]
            for _, name in names
        ]
        write_grid(grid_rows, layout.grid, hw[0], hw[1], 3 if mode == "RGB" else 1)
    return summary
