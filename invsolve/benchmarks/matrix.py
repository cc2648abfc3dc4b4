"""The methods x tasks matrix: every method with its defaults on the benchmark tasks, on real images.

For each task (:mod:`invsolve.benchmarks.tasks`) and image, one noisy measurement is
drawn and shared by every method and by the no-learning estimate; each method runs
with its defaults (``steps`` may be overridden) and its output, clamped to [-1, 1] as
``invsolve evaluate`` saves and scores it, is scored by PSNR, SSIM and, when its weights
are on the machine, LPIPS against the ground truth.  A method the
operator cannot serve gets the capability refusal of ``solve()`` as its cell, a
method that raises gets the error; neither stops the run.  A cell is flagged when an
output is non-finite or when an image's PSNR falls more than :data:`MARGIN_DB` below
the no-learning estimate's on the same image (fidelity issue, point 5).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from invsolve.api import solve
from invsolve.benchmarks.images import BenchmarkImages
from invsolve.benchmarks.machine import environment, first_line
from invsolve.benchmarks.method_names import check_method_names
from invsolve.benchmarks.tasks import TASK_PRESETS, baseline_name, benchmark_task, no_learning_estimate
from invsolve.evaluation.baseline import NO_LEARNING
from invsolve.evaluation.dataset import image_seed
from invsolve.metrics import LPIPS, psnr, ssim
from invsolve.samplers import registered
from invsolve.validation import capabilities, missing_needs

#: A cell is flagged when a method's PSNR on an image is this far below the no-learning estimate's.
MARGIN_DB = 3.0
#: Flags of a cell.
NON_FINITE, BELOW_BASELINE = "non-finite", f"more than {MARGIN_DB:g} dB below no-learning"


@dataclass
class MatrixConfig:
    """What the matrix runs: methods (``None``: every method the prior's kind supports),
    tasks, image size, measurement noise (``None``: the presets' 0.05), steps per method
    (missing: the method's default), images per task (missing: every image), the base
    seed and whether to try LPIPS."""

    methods: tuple[str, ...] | None = None
    tasks: tuple[str, ...] = tuple(TASK_PRESETS)
    size: int = 64
    noise_sigma: float | None = None
    steps: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    lpips: bool = True

    @classmethod
    def quick(cls, methods: tuple[str, ...] | None = None) -> MatrixConfig:
        """Smoke run: 32 px, 4 steps, DDRM and DiffPIR unless other methods are named."""
        methods = methods or ("ddrm", "diffpir")
        return cls(methods=methods, size=32, steps={name: 4 for name in methods}, lpips=False)

    def validate(self) -> None:
        check_method_names(self.methods)
        for name in self.tasks:
            benchmark_task(name)
        if self.size < 16:
            raise ValueError(f"size must be at least 16 pixels (SSIM needs 11 x 11 after SR), got {self.size}")
        if any(int(n) < 1 for n in self.steps.values()):
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        unknown = sorted(set(self.counts) - set(self.tasks))
        if unknown:
            raise ValueError(f"image counts given for tasks that are not run: {unknown} (tasks: {list(self.tasks)})")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.counts.values()):
            raise ValueError(f"image counts must be integers >= 1, got {self.counts}")


@dataclass
class Cell:
    """One method on one task: per-image scores (in image order) or why there are none."""

    method: str
    task: str
    status: str = "ok"  # "ok", "n/a" (capability refusal) or "failed"
    reason: str = ""
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    lpips: list[float] | None = None
    nfe: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    max_abs: list[float] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    def mean(self, metric: str) -> float | None:
        values = getattr(self, metric)
        if not values:
            return None
        return float(sum(values) / len(values))

    def flag(self, flag: str) -> None:
        if flag not in self.flags:
            self.flags.append(flag)


@dataclass
class MatrixReport:
    """Every cell of a matrix run, the no-learning rows and what was run on what."""

    config: MatrixConfig
    image_names: list[str]
    image_source: str
    prior: str
    device: str
    task_descriptions: dict[str, str]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    lpips_note: str = ""
    environment: dict[str, Any] = field(default_factory=dict)

    def methods(self) -> list[str]:
        return list(dict.fromkeys(method for method, _ in self.cells if method != NO_LEARNING))

    def tasks(self) -> list[str]:
        return list(dict.fromkeys(task for _, task in self.cells))

    def cell(self, method: str, task: str) -> Cell | None:
        return self.cells.get((method, task))

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "images": self.image_names,
            "image_source": self.image_source,
            "prior": self.prior,
            "device": self.device,
            "tasks": self.task_descriptions,
            "lpips": self.lpips_note,
            "environment": self.environment,
            "cells": [dataclasses.asdict(cell) for cell in self.cells.values()],
        }


#: Everything an operator can offer (``Operator.capabilities``), to ask which methods fit a prior alone.
OPERATOR_CAPABILITIES = frozenset({"forward", "vjp", "adjoint", "pinv", "prox", "svd"})


def default_methods(prior: Any) -> list[str]:
    """Every registered method that fits the prior's kind (pixel, latent, ...), sorted; the
    operator's capabilities are checked per task and give refusal cells."""
    caps = capabilities(SimpleNamespace(capabilities=OPERATOR_CAPABILITIES), prior)
    return sorted(name for name, cls in registered().items() if not missing_needs(cls.needs, caps))


def _scores(cell: Cell, x: Tensor, truth: Tensor, lpips: LPIPS | None) -> None:
    """Score ``x`` clamped to [-1, 1], as ``invsolve evaluate`` scores and saves restorations;
    ``max_abs`` keeps the raw output's largest magnitude, which shows a method running away."""
    finite = bool(torch.isfinite(x).all())
    if not finite:
        cell.flag(NON_FINITE)
    cell.max_abs.append(float(x.abs().max()) if finite else math.nan)
    x = x.clamp(-1, 1)
    cell.psnr.append(float(psnr(x, truth)) if finite else math.nan)
    cell.ssim.append(float(ssim(x, truth)) if finite else math.nan)
    if lpips is not None and lpips.available:
        cell.lpips = (cell.lpips or []) + [float(lpips(x, truth)) if finite else math.nan]


def run_matrix(
    config: MatrixConfig,
    prior: Any,
    images: BenchmarkImages,
    prior_name: str = "",
    log: Callable[[str], None] | None = None,
    on_progress: Callable[[MatrixReport], None] | None = None,
) -> MatrixReport:
    """Run every method on every task and image of ``images``; see the module docstring.
    ``on_progress`` gets the report so far after every cell (to save partial results: a run
    stopped part-way keeps every cell it finished)."""
    config.validate()
    say = log or (lambda line: None)
    methods = list(config.methods) if config.methods else default_methods(prior)
    device = getattr(prior, "device", None) or torch.device("cpu")
    lpips = LPIPS(device=device) if config.lpips else None
    truth_all = images.images.to(device)
    report = MatrixReport(
        config=config, image_names=list(images.names), image_source=images.source, prior=prior_name,
        device=str(device), task_descriptions={},
        lpips_note=_lpips_note(lpips), environment=environment(device),
    )
    for task_name in config.tasks:
        task = benchmark_task(task_name)
        report.task_descriptions[task.name] = task.describe(config.size)
        noise = task.noise_sigma if config.noise_sigma is None else config.noise_sigma
        baseline = report.cells.setdefault((NO_LEARNING, task.name), Cell(NO_LEARNING, task.name))
        cells = {m: report.cells.setdefault((m, task.name), Cell(m, task.name)) for m in methods}
        for index, name in enumerate(images.names[: config.counts.get(task.name)]):
            truth = truth_all[index : index + 1]
            op_seed = image_seed(name, config.seed, "operator") if task.per_image else config.seed
            op = task.operator(config.size, op_seed)
            g = torch.Generator(device=truth.device).manual_seed(image_seed(name, config.seed, "measurement"))
            y = op.measure(truth, noise, generator=g)
            baseline.reason = baseline_name(op)
            estimate = no_learning_estimate(op, y, tuple(truth.shape))
            if estimate is None:
                baseline.status = "n/a"
            else:
                _scores(baseline, estimate, truth, lpips)
            for method in methods:
                _run_cell(cells[method], op, y, truth, prior, noise, config, image_seed(name, config.seed, "sampler"),
                          lpips)
                cell = cells[method]
                reference = baseline.psnr[-1] if baseline.psnr else math.nan
                if cell.status == "ok" and cell.psnr[-1] < reference - MARGIN_DB:
                    cell.flag(BELOW_BASELINE)
                say(_progress(cell, name, reference))
                if on_progress is not None:
                    on_progress(report)
    return report


def _run_cell(cell: Cell, op: Any, y: Tensor, truth: Tensor, prior: Any, noise: float, config: MatrixConfig,
              seed: int, lpips: LPIPS | None) -> None:
    if cell.status != "ok":
        return
    cls = registered()[cell.method]
    missing = missing_needs(cls.needs, capabilities(op, prior))
    if missing:
        cell.status = "n/a"
        cell.reason = f"needs {', '.join(m.replace('|', ' or ') for m in missing)}, which {type(op).__name__} lacks"
        return
    try:
        result = solve(y, op, prior, method=cell.method, steps=config.steps.get(cell.method), seed=seed,
                       noise_sigma=noise, progress=False, on_nan="warn")
    except Exception as err:  # one broken method must not stop the matrix; the cell says what happened
        cell.status, cell.reason = "failed", first_line(err)
        cell.psnr, cell.ssim, cell.lpips, cell.max_abs = [], [], None, []
        return
    if result.diverged:
        cell.flag(NON_FINITE)
    _scores(cell, result.image.to(truth.device), truth, lpips)
    cell.nfe.append(float(result.nfe))
    cell.seconds.append(float(result.seconds))


def _progress(cell: Cell, image: str, baseline_psnr: float) -> str:
    head = f"{cell.task} {cell.method} {image}:"
    if cell.status != "ok":
        return f"{head} {cell.status} ({cell.reason})"
    flags = f" [{'; '.join(cell.flags)}]" if cell.flags else ""
    return (f"{head} PSNR {cell.psnr[-1]:.2f} dB (no-learning {baseline_psnr:.2f}), NFE {cell.nfe[-1]:.0f}, "
            f"{cell.seconds[-1]:.1f} s{flags}")


def _lpips_note(lpips: LPIPS | None) -> str:
    if lpips is None:
        return "not computed (turned off)"
    return "LPIPS (VGG-16)" if lpips.available else f"n/a: {lpips.reason}"
