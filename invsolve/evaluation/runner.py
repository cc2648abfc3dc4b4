"""``evaluate_folder``: every image × method of a folder, resumable and sharded with accelerate.

Safety of OUT: the output folder is checked (writable, apart from DATA_DIR) before
any work; one run at a time holds its lock (:mod:`~invsolve.evaluation.lock`);
every file is recorded in the manifest before it is written, and ``--overwrite``
deletes only recorded files (:mod:`~invsolve.evaluation.manifest`).  PNGs are
written to a temporary name and renamed, and a pair counts as done only once its
row is in a CSV file, so a run killed at any moment resumes without losing or
repeating a row.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
from tqdm.auto import tqdm

import operators
import priors
from invsolve.commands._estimate import announce
from invsolve.evaluation.baseline import NO_LEARNING, baseline_kind
from invsolve.evaluation.batch import chunks
from invsolve.evaluation.dataset import ImageEntry, list_images, shard
from invsolve.evaluation.grid import write_grid
from invsolve.evaluation.layout import OutputLayout, check_out_folder
from invsolve.evaluation.lock import OutputLock
from invsolve.evaluation.manifest import RESERVED_NAMES, foreign_outputs
from invsolve.evaluation.memory import memory_kind
from invsolve.evaluation.report import method_order, summarize, write_summary
from invsolve.evaluation.settings import EvaluationSettings, check_resumable, identity, write_config
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
from invsolve.method_choice import choose_method
from invsolve.metrics import LPIPS, net_label
from invsolve.resources import check_working_set
from invsolve.samplers import registered
from invsolve.validation import check_methods_fit
from priors.compiled import load_accelerated

logger = logging.getLogger(__name__)

#: Default image size when neither ``size`` nor the prior fixes one.
DEFAULT_SIZE = 256
#: How long a finished process waits at the final barrier for the slowest shard.
BARRIER_TIMEOUT = timedelta(hours=48)


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


def load_network(settings: EvaluationSettings, device: torch.device) -> Any:
    """The prior with its network in ``settings.dtype`` (float32: as loaded), compiled and / or
    channels-last when asked (:func:`priors.compiled.load_accelerated`, which falls back to eager
    with a warning where ``torch.compile`` cannot run)."""
    dtype = None if settings.dtype == "float32" else getattr(torch, settings.dtype)
    return load_accelerated(settings.prior, device, dtype, compile=settings.compile, channels_last=settings.channels_last)


def network_summary(settings: EvaluationSettings, prior: Any) -> dict[str, Any]:
    """What ran the network, for the summary: dtype, compilation status, layout, batch size."""
    status = getattr(prior, "status", "eager") if settings.compile else "not asked for"
    return {"dtype": settings.dtype, "compile": status, "channels_last": settings.channels_last,
            "batch_size": settings.batch_size}


def _image_format(prior: Any, size: int | None) -> tuple[str, tuple[int, int]]:
    """File mode (``"RGB"``/``"L"``) and ``(H, W)``: ``size``, else the prior's fixed size, else the default."""
    hw = (size, size) if size is not None else priors.fixed_size(prior) or (DEFAULT_SIZE, DEFAULT_SIZE)
    return priors.image_mode(prior), hw


def _done_pairs(layout: OutputLayout) -> set[tuple[str, str]]:
    """(image, method) pairs with a recorded row whose scores are not NaN and a restoration on disk."""
    done = set()
    for source in (layout.metrics, *rank_files(layout.metrics)):
        for row in read_rows(source, METRIC_COLUMNS):
            scores = [row[column] for column in ("psnr", "ssim", "lpips") if row[column] != ""]
            if any(math.isnan(float(value)) for value in scores):
                continue
            if layout.restoration(row["method"], row["name"]).is_file():
                done.add((row["image"], row["method"]))
    return done


def _start_fresh(layout: OutputLayout) -> None:
    """``--overwrite``: delete what the manifest records (the CSV files first), nothing else."""
    for path in (layout.metrics, *rank_files(layout.metrics)):
        path.unlink(missing_ok=True)
    layout.manifest.remove_claimed()


def _broadcast(state: Any, value: Any) -> Any:
    """The main process's ``value`` on every process of the run."""
    if state.num_processes == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def _exclusive(layout: OutputLayout, state: Any) -> Iterator[None]:
    """Hold OUT's lock (main process) for the whole run; every process stops when it is taken,
    or when OUT holds evaluate's file names without a manifest (someone else's files)."""
    lock, problem = None, None
    if state.is_main_process:
        try:
            foreign = foreign_outputs(layout.root)
            if foreign:
                raise ValueError(
                    f"--out {str(layout.root)!r} already holds {', '.join(foreign)}, which 'invsolve evaluate' did "
                    f"not record writing (no {layout.manifest.path.name}); choose an empty or new --out "
                    f"(evaluate writes {', '.join(RESERVED_NAMES)})"
                )
            layout.root.mkdir(parents=True, exist_ok=True)
            lock = OutputLock(layout.root).acquire()
        except (OSError, ValueError) as err:
            problem = str(err)
    problem = _broadcast(state, problem)
    if problem:
        raise ValueError(problem)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


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
    ``overwrite``.  A run that diverges is recorded in ``errors.csv`` and retried by
    the next run.  Returns the summary on the main process, ``None`` on the others.
    """
    settings.check()
    check_out_folder(settings.out, settings.data_dir)
    entries = list_images(settings.data_dir, settings.limit)
    state = process_state(settings.device)
    layout = OutputLayout(settings.out)
    with _exclusive(layout, state):
        return _evaluate(settings, state, layout, entries)


def _evaluate(
    settings: EvaluationSettings, state: Any, layout: OutputLayout, entries: list[ImageEntry]
) -> dict[str, Any] | None:
    single = state.num_processes == 1
    device = torch.device(settings.device) if single and settings.device else state.device
    task = operators.preset(settings.preset) if settings.preset is not None else None
    operator = task.build(seed=settings.seed) if task else operators.build(settings.operator, **settings.operator_args)
    prior = load_network(settings, device)
    if settings.methods is None:
        method, reason = choose_method(operator, prior)
        settings.methods = [method]
        if state.is_main_process:
            print(f"method: {method}, because {reason} (others with --methods; the rule: 'invsolve list')")
    check_methods_fit(settings.methods, registered(), operator, prior)
    mode, hw = _image_format(prior, settings.size)
    if "ssim" in settings.metrics and min(hw) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels; use --size 11 or more (got {hw})")
    check_working_set((settings.batch_size, 3 if mode == "RGB" else 1, *hw), 1, device,
                      "use a smaller --size or --batch-size", prior)
    current = identity(settings, hw)
    if not settings.overwrite:
        check_resumable(layout, current)
    if state.is_main_process:
        if settings.overwrite:
            _start_fresh(layout)
        for path in (layout.errors, *rank_files(layout.errors)):
            path.unlink(missing_ok=True)
        write_config(layout, current)
    state.wait_for_everyone()
    layout.manifest.reload()

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
    if state.is_main_process:
        _announce_plans(settings, tasks, evaluator, device)
    metrics_path = layout.claim(rank_path(layout.metrics, state.process_index, state.num_processes))
    errors_path = layout.claim(rank_path(layout.errors, state.process_index, state.num_processes))
    with CsvLog(metrics_path, METRIC_COLUMNS) as rows, CsvLog(errors_path, ERROR_COLUMNS) as errors:
        _run_tasks(tasks, all_methods, evaluator, rows, errors, settings.progress and state.is_main_process,
                   settings.batch_size)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return _finish(settings, layout, entries, hw, mode, operator, device, evaluator.lpips, state.num_processes,
                   network_summary(settings, prior))


def _announce_plans(
    settings: EvaluationSettings, tasks: list[tuple[ImageEntry, list[str]]], evaluator: ImageEvaluator,
    device: torch.device,
) -> None:
    """Each pending method's plan (steps, NFE, expected time per image and in all), from one image
    of zeros at the run's size (:func:`invsolve.commands._estimate.announce`)."""
    if not tasks:
        return
    entry = tasks[0][0]
    x = torch.zeros((1, 3 if evaluator.mode == "RGB" else 1, *evaluator.size))
    operator = evaluator.operator_for(entry)
    with torch.no_grad():
        y = operator(x).to(device)
    for method in settings.methods:
        images = sum(method in pending for _, pending in tasks)
        if images:
            announce(y, operator, evaluator.prior, method, settings.steps, 1, settings.noise_sigma, tuple(x.shape), {},
                     device, images)


def _run_tasks(
    tasks: list[tuple[ImageEntry, list[str]]],
    all_methods: list[str],
    evaluator: ImageEvaluator,
    rows: CsvLog,
    errors: CsvLog,
    progress: bool,
    batch_size: int = 1,
) -> None:
    """Work through ``tasks`` ``batch_size`` images at a time (one solve per method and batch),
    recording each finished pair at once; unreadable images and diverged runs go to
    ``errors`` (and are tried again by the next run)."""
    overall = tqdm(total=sum(len(p) for _, p in tasks), desc="overall", disable=not progress, dynamic_ncols=True)
    per_method = {
        method: tqdm(
            total=sum(method in p for _, p in tasks), desc=f"{method} (images)", position=i + 1,
            disable=not progress, dynamic_ncols=True,
        )
        for i, method in enumerate(all_methods)
    }
    baseline_missing = False
    for chunk in chunks(tasks, batch_size):
        measured = []
        for entry, pending in chunk:
            try:
                x = evaluator.read(entry)
            except UNREADABLE as err:
                errors.append(_error_row(entry, "", err))
                overall.update(len(pending))
                continue
            measured.append((entry, pending, x, evaluator.measure(entry, x)))
        for method in all_methods:
            batch = [(entry, x, y) for entry, pending, x, y in measured if method in pending]
            if not batch:
                continue
            overall.set_postfix_str(f"{method} on {batch[0][0].key}" + (f" +{len(batch) - 1}" if len(batch) > 1 else ""),
                                    refresh=False)
            for entry, outcome in evaluator.restore_batch(batch, method):
                if isinstance(outcome, FloatingPointError):
                    errors.append(_error_row(entry, method, outcome))
                elif outcome is not None:
                    rows.append(outcome)
                elif not baseline_missing:
                    baseline_missing = True
                    logger.warning("warning: no no-learning baseline for this operator and measurement shape")
                per_method[method].update()
                overall.update()
    for bar in (*per_method.values(), overall):
        bar.close()


def _error_row(entry: ImageEntry, method: str, err: BaseException) -> dict[str, str]:
    return {"image": entry.key, "method": method, "error": " ".join(f"{type(err).__name__}: {err}".split())}


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
    network: dict[str, Any],
) -> dict[str, Any]:
    """Main process: merge the per-process files, write the summary and the grid."""
    rows = merge_rows(layout.claim(layout.metrics), METRIC_COLUMNS, ("image", "method"))
    error_rows = merge_rows(layout.claim(layout.errors), ERROR_COLUMNS, ("image", "method"))
    context = {
        "settings": {**identity(settings, hw), "methods": settings.methods, "limit": settings.limit},
        "processes": num_processes,
        "network": network,
        "device": str(device),
        "images": {
            "listed": len(entries),
            "evaluated": len({row["image"] for row in rows}),
            "errors": sum(row["method"] == "" for row in error_rows),
            "failed_runs": sum(row["method"] != "" for row in error_rows),
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
    write_summary(summary, layout.claim(layout.summary_json), layout.claim(layout.summary_md))
    names = sorted({(row["image"], row["name"]) for row in rows})[: settings.grid_rows]
    if names:
        columns = method_order(rows, settings.methods)
        grid_rows = [
            [layout.ground_truth(name), layout.measurement(name), *(layout.restoration(m, name) for m in columns)]
            for _, name in names
        ]
        write_grid(grid_rows, layout.claim(layout.grid), hw[0], hw[1], 3 if mode == "RGB" else 1)
    return summary
