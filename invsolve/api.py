"""``solve()``: the one call that joins a measurement, an operator, a prior and a method."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from invsolve.contracts import check_operator_output, checked
from invsolve.counting import counting
from invsolve.method_choice import choose_method
from invsolve.resources import check_working_set
from invsolve.result import Result
from invsolve.samplers import DivergenceError, Problem, method_class, registered
from invsolve.validation import (
    MAX_STEPS,
    check_count,
    check_measurement,
    check_method_options,
    check_methods_fit,
    check_noise_sigma,
    check_prior,
    infer_x_shape,
    needs_tiling,
)
from operators.base import FunctionOperator
from priors.base import is_latent_prior
from priors.clipped import ClippedPrior
from priors.tiled import Tiled

ON_NAN = ("raise", "warn")

logger = logging.getLogger(__name__)


def methods() -> dict[str, str]:
    """Registered method names with what each needs from the operator and the prior."""
    return {name: ", ".join(n.replace("|", " or ") for n in cls.needs) for name, cls in sorted(registered().items())}


def task_row(cls, operator: Any, task: str | None, prior: Any = None) -> str | None:
    """The key of ``cls.task_defaults`` that applies to ``operator``.

    An explicit ``task`` must be a key of the table; otherwise ``operator.task``, then
    ``operator.kind`` (:meth:`invsolve.samplers.Method.defaults_row`).  A method with a
    table that has no row for the operator warns and uses its field defaults.
    """
    table = cls.defaults_table(prior)
    known = ", ".join(sorted(table)) or "none"
    if task is not None:
        if task not in table:
            raise ValueError(f"method {cls.name!r} has no defaults for task {task!r}; its tasks are: {known}")
        return task
    op_task, family = getattr(operator, "task", None), getattr(operator, "kind", None)
    key = cls.defaults_row(op_task, family, prior)
    if key is None and table:
        warnings.warn(
            f"{cls.name} has no defaults for task {op_task!r} (family {family!r}); using its field defaults. "
            f"Its tasks are: {known}; pass task=... to choose one",
            UserWarning,
            stacklevel=3,
        )
    return key


def working_dtype(measurement_dtype: torch.dtype, prior_dtype: torch.dtype | None) -> torch.dtype:
    """The sampler's dtype: the more precise of measurement and network, and at least float32.

    A half-precision network (float16 / bfloat16) keeps its own dtype inside
    ``denoise``; the sampler's state, the data-consistency steps and the operator
    run in float32, where low-precision FFTs and accumulated updates would lose
    accuracy (and CUDA has no bfloat16 FFT).
    """
    return torch.promote_types(torch.promote_types(measurement_dtype, prior_dtype or measurement_dtype), torch.float32)


def resolve_clipping(algorithm: Any, prior: Any) -> Any:
    """``algorithm`` with ``clip_denoised`` decided: the user's choice, else clamp where the
    method's official code clamps or the prior's scheduler does, and only for priors that
    declare a ``data_range``."""
    data_range = getattr(prior, "data_range", None)
    clip = algorithm.clip_denoised
    if clip and data_range is None:
        raise ValueError(
            f"clip_denoised=True needs a prior with a data_range to clamp to; {type(prior).__name__} declares none"
        )
    if clip is None:
        clip = data_range is not None and (algorithm.clips_denoised or bool(getattr(prior, "clip_sample", False)))
    return dataclasses.replace(algorithm, clip_denoised=bool(clip))


def _last_state(err: DivergenceError, problem: Problem, prior: Any) -> Tensor:
    """The last finite state of a diverged solve, as pixels (NaN when none was finite)."""
    if err.last_finite is None:
        return torch.full(problem.x_shape, float("nan"), device=problem.y.device, dtype=problem.y.dtype)
    state = err.last_finite.detach()
    if tuple(state.shape) != tuple(problem.x_shape) and is_latent_prior(prior):
        with torch.no_grad():
            state = prior.decode(state)
    return state


def _seeds(seed: int | Sequence[int] | None, batch: int) -> list[int]:
    """The seed of each generator: one (``None``: drawn at random; an int), or one per image."""
    if seed is None:
        return [int.from_bytes(os.urandom(7), "little")]
    if isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)):
        if len(seed) != batch:
            raise ValueError(
                f"seed holds {len(seed)} seeds for a measurement batch of {batch}; give one int, or one seed per image"
            )
        return [check_count(f"seed[{i}]", s, 0, 2**64 - 1) for i, s in enumerate(seed)]
    return [check_count("seed", seed, 0, 2**64 - 1)]


def solve(
    measurement: Tensor,
    operator: Any,
    prior: Any,
    method: str | None = None,
    steps: int | None = None,
    seed: int | Sequence[int] | None = None,
    num_samples: int = 1,
    noise_sigma: float | None = None,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
    x_shape: tuple[int, ...] | None = None,
    on_nan: str = "raise",
    task: str | None = None,
    **method_options: Any,
) -> Result:
    """Draw ``num_samples`` restorations of ``measurement = operator(x) + noise``.

    ``operator`` is an :class:`operators.Operator` or any differentiable callable;
    ``prior`` anything with ``denoise(x, sigma)``, ``sigma_min`` and ``sigma_max``.
    ``noise_sigma`` is the measurement noise standard deviation on the [-1, 1]
    scale (``None`` means 0).  ``steps`` defaults to the method's paper value;
    ``seed`` makes the run reproducible (a random seed is drawn and recorded in
    ``Result.options`` when ``None``).  ``x_shape`` is needed only when neither the
    operator nor the prior implies the shape of the unknown.  Remaining keyword
    arguments are the method's hyperparameters.

    ``method=None`` picks the method that fits the operator
    (:func:`invsolve.method_choice.choose_method`): DDRM where it has an SVD, DiffPIR where
    it has a proximal solve, DPS where it has only vector-Jacobian products, EnKG for a
    black box (latent, restorer and proximal priors get their own).  The pick is
    ``Result.method`` and ``Result.diagnostics["method_choice"]`` says why (not
    ``Result.options``, which must repeat the run as ``solve(**options)``); it is logged at
    INFO level (the ``invsolve.api`` logger), not warned, since nothing is wrong.  An
    explicit ``method=`` is used as given.

    ``seed`` may also be a sequence of ``B`` seeds, one per image of the measurement
    batch (``invsolve evaluate --batch-size``): each image draws its noise from its own
    generator (:meth:`invsolve.samplers.Problem.randn`), so image ``b`` of the batch
    restores as it would alone with ``seed=seed[b]``, to float rounding (a batched
    network differs from batch 1 in the last bits).  Exceptions, equal only in
    distribution: what a method draws from the shared generator (the SMC resampling of
    ``mcgdiff`` and ``tds``) and a ``Tiled`` prior's shifts (``seed[0]``'s for every image).

    A prior with a fixed ``data_shape`` (an attention UNet, in latent units for a
    latent prior) and an unknown of another height or width is wrapped in
    :class:`priors.Tiled` (shifted overlapping tiles, default settings) and the tiling
    is recorded in ``Result.options["tiling"]``; for other settings pass
    ``Tiled(prior, ...)`` yourself.  A ``Tiled`` prior is reseeded with ``seed``, so
    the same seed gives the same result.

    The denoised estimate is clamped to the prior's ``data_range`` where the method's
    official code clamps or the prior's scheduler does (``clip_denoised`` option of
    every method; the resolved value is in ``Result.options``).

    Precision and compilation belong to the prior, so they are chosen once, not per
    solve: ``load_prior(name, dtype=torch.bfloat16)`` (or ``float16``) runs the network
    in half precision while the sampler state, the data-consistency steps and the
    operator stay float32 (:func:`working_dtype`); ``priors.compiled.load_accelerated(name,
    compile=True, channels_last=True)`` (``accelerated(prior, ...)`` for a loaded prior)
    wraps the network in ``torch.compile`` (falling back to eager with a warning where it
    cannot run) and / or the channels-last layout.
    A compiled prior compiles at its first call per shape and is reused by later solves.

    A solve whose samples become NaN or infinite stops at that step: with
    ``on_nan="raise"`` (default) it raises :class:`invsolve.samplers.DivergenceError`
    naming the method, the step and the sigma; with ``on_nan="warn"`` it warns and
    returns the last finite state with ``Result.diverged = True``.

    Per-task defaults come from the method's ``task_defaults`` table (:func:`task_row`):
    the row of ``task`` when given, else of ``operator.task``, else of ``operator.kind``;
    options passed here override the row, and the row's key is recorded in
    ``Result.options["task"]``, so ``solve(y, operator, prior, **result.options)``
    repeats the run.  A method whose published algorithm assumes noiseless data
    (``noiseless_only``) warns when ``noise_sigma > 0``.
    """
    if on_nan not in ON_NAN:
        raise ValueError(f"on_nan must be one of {', '.join(ON_NAN)}, got {on_nan!r}")
    cls = None if method is None else method_class(method)
    if not hasattr(operator, "output_shape"):
        if not callable(operator):
            raise TypeError(f"operator must be an operators.Operator or a callable, got {type(operator).__name__}")
        operator = FunctionOperator(operator, probe_dtype=measurement.dtype)
    check_prior(prior)
    choice = {}
    if cls is None:
        method, reason = choose_method(operator, prior)
        choice = {"method_choice": f"{method}: {reason}"}
        logger.info("solve(method=None) uses %s: %s", method, reason)
        cls = method_class(method)
    method_options = check_method_options(cls, method_options)
    check_methods_fit([cls.name], registered(), operator, prior)
    noise_sigma = 0.0 if noise_sigma is None else check_noise_sigma(noise_sigma)
    row = task_row(cls, operator, task, prior)
    algorithm = cls(**{**cls.task_options(row, noise_sigma, prior), **method_options})
    if cls.noiseless_only and noise_sigma > 0:
        warnings.warn(f"{cls.name} assumes noiseless measurements: {cls.noiseless_only}", UserWarning, stacklevel=2)
    elif row is not None and noise_sigma > 0 and (reason := cls.defaults_table(prior)[row].noisy_warning):
        warnings.warn(f"{cls.name}'s {row} setting is not for noisy data: {reason}", UserWarning, stacklevel=2)
    check_measurement(measurement, noise_sigma, operator)
    num_samples = check_count("num_samples", num_samples)
    steps = cls.default_steps if steps is None else check_count("steps", steps, 1, MAX_STEPS)
    shape = infer_x_shape(measurement, operator, prior, x_shape)
    seeds = _seeds(seed, measurement.shape[0])
    if needs_tiling(prior, shape):
        prior = Tiled(prior)
    if isinstance(prior, Tiled):
        prior.reseed(seeds[0])

    device = getattr(prior, "device", None) or measurement.device
    dtype = working_dtype(measurement.dtype, getattr(prior, "dtype", None))
    check_working_set(shape, num_samples, device, "use a smaller image or fewer samples", prior)
    y = measurement.to(device=device, dtype=dtype).repeat(num_samples, *([1] * (measurement.ndim - 1)))
    check_operator_output(operator, (num_samples * shape[0], *shape[1:]), tuple(y.shape), device, dtype)
    counted = counting(checked(prior))
    algorithm = resolve_clipping(algorithm, prior)
    data_range = getattr(prior, "data_range", None)
    problem = Problem(
        y=y,
        operator=operator,
        prior=ClippedPrior(counted, *data_range) if algorithm.clip_denoised else counted,
        x_shape=(num_samples * shape[0], *shape[1:]),
        noise_sigma=noise_sigma,
        steps=steps,
        generator=torch.Generator(device=device).manual_seed(seeds[0]),
        callback=callback,
        progress=progress,
        method=cls.name,
        generators=tuple(torch.Generator(device=device).manual_seed(s) for s in seeds) if len(seeds) > 1 else None,
    )
    algorithm = algorithm.resolved(problem)
    calls_before = getattr(operator, "forward_calls", 0)
    start = time.perf_counter()
    diverged = False
    try:
        x = algorithm.run(problem).detach()
        if not bool(torch.isfinite(x).all()):
            raise DivergenceError(cls.name, steps, 0.0, problem.last_finite)
    except DivergenceError as err:
        if on_nan == "raise":
            raise
        warnings.warn(f"{err}; returning the last finite state (Result.diverged = True)", RuntimeWarning, stacklevel=2)
        x, diverged = _last_state(err, problem, counted), True
    seconds = time.perf_counter() - start
    rows = y.shape[0]
    tiling = {"tiling": prior.options()} if isinstance(prior, Tiled) else {}
    diagnostics = {**problem.diagnostics, **choice}
    row_evidence = diagnostics.pop("log_evidence", None)  # per row; rows of one measurement agree
    return Result(
        samples=x.reshape(num_samples, *shape),
        nfe=counted.items / rows,
        operator_calls=(getattr(operator, "forward_calls", 0) - calls_before + problem.fused_operator_calls) / rows,
        decoder_calls=getattr(counted, "decoded", 0) / rows,
        encoder_calls=getattr(counted, "encoded", 0) / rows,
        seconds=seconds,
        method=cls.name,
        diverged=diverged,
        log_evidence=None if row_evidence is None else row_evidence.reshape(num_samples, -1)[0],
        diagnostics=diagnostics,
        options={
            **algorithm.options(),
            "task": row,
            "steps": steps,
            "seed": seeds[0] if len(seeds) == 1 else list(seeds),
            "noise_sigma": noise_sigma,
            "num_samples": num_samples,
            **tiling,
        },
    )
