"""Speed and memory of every method: seconds per solve against the network's own time.

For one method, task, image size and batch (a *cell*), :func:`measure_cell`

1. warms up (one network forward, one forward + backward, a 2-step solve on a second
   instance of the operator, so one-time costs such as lazy imports stay out);
2. measures the peak memory of **one network call** of the kind the method makes
   (forward + backward to the input for methods that backpropagate through the network;
   for a latent prior the network is ``decode(denoise(z))``), the reference of the
   gradient-memory check (throughput issue, point 6);
3. times the network alone (block A), then **solves** with the prior behind a
   :class:`~invsolve.benchmarks.probes.RecordingPrior` and the operator behind a
   :class:`~invsolve.benchmarks.probes.TimedOperator`, measuring its peak memory, then
   times the network again (block B) for every call shape the solve made.  The network
   time of the solve is ``sum over call shapes of forwards x t_forward + backwards x
   (t_forward+backward - t_forward)``, with the counts recorded during the solve and the
   per-call times the mean of blocks A and B (interleaved with the solve, so load changes
   on a shared machine hit both alike);
4. reports ``overhead = solve seconds / network seconds`` and the operator time: wall
   time inside the operator's methods plus, for outputs autograd backpropagated through,
   the operator's isolated backward time.

Peak memory is the increment over what the process held before (weights, operator,
measurement): CUDA ``max_memory_allocated`` or, on a CPU, the resident set size's
high-water mark, reset per region through ``/proc/self/clear_refs``.  With
``isolate=True`` every cell runs in fresh processes (:mod:`invsolve.benchmarks.isolation`;
on a CPU the memory is measured in a second process whose allocator returns freed
memory to the system, the timings in the first), so no cell inherits another's memory
or caches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from invsolve.api import solve, working_dtype
from invsolve.benchmarks.images import demo_images
from invsolve.benchmarks.isolation import run_isolated
from invsolve.benchmarks.machine import environment, first_line
from invsolve.benchmarks.matrix import default_methods
from invsolve.benchmarks.method_names import check_method_names
from invsolve.benchmarks.prior_spec import PriorSpec
from invsolve.benchmarks.probes import (
    PeakMemory,
    RecordingPrior,
    TimedOperator,
    network_call,
    operator_call,
    time_calls,
)
from invsolve.benchmarks.tasks import benchmark_task
from invsolve.samplers import registered
from invsolve.validation import capabilities, missing_needs
from priors.base import is_latent_prior


@dataclass
class SpeedConfig:
    """Which cells to run: methods (``None``: every method of the prior's kind) x tasks x
    sizes, at ``batch`` images per solve; ``steps`` for every method (``None``: each
    method's default) or per method in ``method_steps``; hyperparameters other than the
    defaults per method in ``method_options``; ``repeats`` network calls per
    timing block; ``isolate`` runs each cell in its own process, stopped after
    ``cell_timeout`` seconds (``None``: no limit); ``memory=False`` skips the memory
    measurement (on a CPU, a second process per cell)."""

    prior: PriorSpec = field(default_factory=PriorSpec)
    methods: tuple[str, ...] | None = None
    tasks: tuple[str, ...] = ("gaussian_blur",)
    sizes: tuple[int, ...] = (64, 128, 256)
    batch: int = 1
    steps: int | None = None
    method_steps: dict[str, int] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    repeats: int = 5
    seed: int = 0
    isolate: bool = True
    threads: int | None = None
    cell_timeout: float | None = None
    memory: bool = True

    @classmethod
    def quick(cls, methods: tuple[str, ...] | None = None, **changes: Any) -> SpeedConfig:
        """Smoke run: 32 px, 3 steps, one timing call per block, DDRM and DPS unless named."""
        base = dict(methods=methods or ("ddrm", "dps"), sizes=(32,), steps=3, repeats=1)
        return cls(**{**base, **changes})

    def steps_of(self, method: str) -> int | None:
        return self.method_steps.get(method, self.steps)

    def validate(self) -> None:
        check_method_names(self.methods)
        for task in self.tasks:
            benchmark_task(task)
        if min(self.sizes) < 8 or self.batch < 1 or self.repeats < 1:
            raise ValueError("sizes must be >= 8 pixels, batch and repeats >= 1")


def cell_images(size: int, batch: int, device: torch.device) -> torch.Tensor:
    """``batch`` copies of the demo image at ``size`` px, each horizontally shifted, on ``device``."""
    image = demo_images(size).images
    return torch.cat([torch.roll(image, shifts=3 * i, dims=-1) for i in range(batch)]).to(device)


def _reference_call(prior: Any, shape: tuple[int, ...], backward: bool, device: torch.device,
                    dtype: torch.dtype) -> Callable[[], None]:
    """One network call as a method makes it: ``denoise``, or ``decode(denoise(z))`` for a latent prior."""
    if not is_latent_prior(prior):
        return network_call(prior, "denoise", shape, backward, device, dtype)
    z = torch.randn(shape, device=device, dtype=dtype)
    sigma = torch.ones(shape[0], device=device, dtype=dtype)

    def call() -> None:
        with torch.set_grad_enabled(backward):
            inputs = z.detach().requires_grad_(backward)
            out = prior.decode(prior.denoise(inputs, sigma))
            if backward:
                torch.autograd.grad(out, inputs, grad_outputs=torch.ones_like(out))

    return call


#: What :func:`measure_cell` can measure (an isolated CPU run measures memory in a separate process).
MEASURES = ("time", "memory")


def measure_cell(prior: Any, method: str, task: str, size: int, batch: int = 1, steps: int | None = None,
                 seed: int = 0, repeats: int = 5, options: dict[str, Any] | None = None,
                 measure: tuple[str, ...] = MEASURES) -> dict[str, Any]:
    """Solve once (method hyperparameters ``options``, default: the method's defaults) and measure
    what ``measure`` names as the module docstring says; returns one JSON-ready record."""
    device = getattr(prior, "device", None) or torch.device("cpu")
    record: dict[str, Any] = {"method": method, "task": task, "size": size, "batch": batch, "status": "ok",
                              "threads": torch.get_num_threads()}
    bench = benchmark_task(task)
    op = bench.operator(size, seed)
    x = cell_images(size, batch, device)
    y = op.measure(x, bench.noise_sigma, generator=torch.Generator(device=device).manual_seed(seed))
    missing = missing_needs(registered()[method].needs, capabilities(op, prior))
    if missing:
        reason = f"needs {', '.join(m.replace('|', ' or ') for m in missing)}, which {type(op).__name__} lacks"
        return {**record, "status": "n/a", "reason": reason}
    dtype = working_dtype(y.dtype, getattr(prior, "dtype", None))
    main = tuple(prior.latent_shape(tuple(x.shape))) if is_latent_prior(prior) else tuple(x.shape)
    fwd = network_call(prior, "denoise", main, False, device, dtype)
    fwd_bwd = network_call(prior, "denoise", main, True, device, dtype)
    fwd(), fwd_bwd()
    _warm_up_solve(y, bench.operator(size, seed), prior, method, seed, bench.noise_sigma, options)
    memory = PeakMemory(device) if "memory" in measure else None
    references = {}
    for backward in (False, True) if memory else ():
        memory.start()
        _reference_call(prior, main, backward, device, dtype)()
        references[backward] = memory.stop()
    block_a = {}
    if "time" in measure:
        block_a[("denoise", main)] = (time_calls(fwd, device, repeats), time_calls(fwd_bwd, device, repeats))
    recorder, timed = RecordingPrior(prior), TimedOperator(op, device)
    if memory:
        memory.start()
    try:
        result = solve(y, timed, recorder, method=method, steps=steps, seed=seed, noise_sigma=bench.noise_sigma,
                       progress=False, on_nan="warn", **(options or {}))
    except Exception as err:  # report the failure in its cell, keep benchmarking the others
        return {**record, "status": "failed", "reason": first_line(err)}
    peak = memory.stop() if memory else None
    record.update(options=options or {}, steps=result.options["steps"], nfe=result.nfe, seconds=result.seconds,
                  diverged=result.diverged, backprop=sum(recorder.backwards.values()) > 0,
                  operator_calls=dict(timed.clock.calls), operator_vjps=timed.clock.vjps)
    if "time" in measure:
        record.update(_network_time(prior, recorder, block_a, device, dtype, repeats))
        record.update(_operator_time(op, timed.clock, tuple(x.shape), device, dtype, repeats))
        record["overhead"] = result.seconds / record["network_seconds"] if record["network_seconds"] else None
    if memory:
        reference = references[record["backprop"]]
        record.update(peak_mib=peak[0], peak_increment_mib=peak[1], reference_peak_mib=reference[0],
                      reference_increment_mib=reference[1], memory_kind=memory.kind,
                      memory_ratio=peak[1] / reference[1] if reference[1] > 0 else None)
    return record


def _warm_up_solve(y: Tensor, op: Any, prior: Any, method: str, seed: int, noise: float,
                   options: dict[str, Any] | None) -> None:
    """A 2-step solve on another instance of the same operator: imports, allocator pools and
    module-level caches are in place before the measured solve, whose own operator still
    builds its factorizations and spectra inside the measurement."""
    try:
        solve(y, op, prior, method=method, steps=2, seed=seed, noise_sigma=noise, progress=False, on_nan="warn",
              **(options or {}))
    except Exception:  # the measured solve reports what goes wrong
        pass


def _network_time(prior: Any, recorder: RecordingPrior, block_a: dict, device: torch.device, dtype: torch.dtype,
                  repeats: int) -> dict[str, Any]:
    """Network seconds of the recorded calls: each call shape timed now (block B), averaged with block A."""
    calls, total = [], 0.0
    for key, forwards in recorder.forwards.items():
        entry, shape = key
        backwards = recorder.backwards[key]
        t_fwd = time_calls(network_call(prior, entry, shape, False, device, dtype), device, repeats)
        t_both = 0.0
        if backwards:
            t_both = time_calls(network_call(prior, entry, shape, True, device, dtype), device, repeats)
        if key in block_a:
            t_fwd = (t_fwd + block_a[key][0]) / 2
            t_both = (t_both + block_a[key][1]) / 2 if backwards else 0.0
        total += forwards * t_fwd + backwards * max(t_both - t_fwd, 0.0)
        calls.append({"entry": entry, "shape": list(shape), "forwards": forwards, "backwards": backwards,
                      "forward_s": t_fwd, "forward_backward_s": t_both if backwards else None})
    return {"network_seconds": total, "network_calls": calls}


def _operator_time(op: Any, clock: Any, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype,
                   repeats: int) -> dict[str, float]:
    """Seconds inside the operator's methods plus its backward passes (isolated vjp minus forward, per vjp)."""
    backward = 0.0
    if clock.vjps:
        t_op = time_calls(operator_call(op, shape, False, device, dtype), device, repeats)
        t_vjp = time_calls(operator_call(op, shape, True, device, dtype), device, repeats)
        backward = clock.vjps * max(t_vjp - t_op, 0.0)
    return {"operator_seconds": clock.seconds + backward, "operator_backward_seconds": backward}


@dataclass
class SpeedReport:
    """All cells of a run and what they ran on."""

    config: SpeedConfig
    prior: str
    cells: list[dict[str, Any]]
    environment: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"config": dataclasses.asdict(self.config), "prior": self.prior, "environment": self.environment,
                "cells": self.cells}


def run_speed(config: SpeedConfig, prior: Any = None, log: Callable[[str], None] | None = None,
              on_cell: Callable[[SpeedReport], None] | None = None) -> SpeedReport:
    """Run every cell of ``config``; ``prior`` (an object) runs in this process instead of loading
    ``config.prior``.  ``on_cell`` gets the report so far after every cell (to save partial results)."""
    config.validate()
    say = log or (lambda line: None)
    isolate = config.isolate and prior is None
    loaded = prior if prior is not None else config.prior.load()
    methods = list(config.methods) if config.methods else default_methods(loaded)
    if isolate:
        loaded = None  # each cell loads its own copy
    elif config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.prior.device) if prior is None else (getattr(prior, "device", None) or "cpu")
    label = config.prior.label() if prior is None else type(prior).__name__
    report = SpeedReport(config, label, [], environment(device))
    for task in config.tasks:
        for size in config.sizes:
            for method in methods:
                cell = {"method": method, "task": task, "size": size, "batch": config.batch,
                        "steps": config.steps_of(method), "seed": config.seed, "repeats": config.repeats,
                        "options": config.method_options.get(method, {})}
                if isolate:
                    record = run_isolated(config, cell)
                else:
                    record = measure_cell(loaded, **cell, measure=MEASURES if config.memory else ("time",))
                report.cells.append(record)
                say(_progress(record))
                if on_cell is not None:
                    on_cell(report)
    return report


def _progress(record: dict[str, Any]) -> str:
    head = f"{record['task']} {record['size']}px {record['method']}:"
    if record.get("status") != "ok":
        return f"{head} {record.get('status')} ({record.get('reason', '')})"
    text = f"{head} NFE {record['nfe']:.0f}, {record['seconds']:.2f} s"
    if record.get("overhead") is not None:
        text += (f", network {record['network_seconds']:.2f} s, overhead {record['overhead']:.2f}, "
                 f"operator {record['operator_seconds']:.2f} s")
    if record.get("peak_increment_mib") is not None:
        text += f", peak {record['peak_increment_mib']:+.0f} MiB (one call {record['reference_increment_mib']:+.0f})"
    return text


