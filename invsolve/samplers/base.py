"""The method contract: a small dataclass per method plus the problem it runs on."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from invsolve.schedules import karras_sigmas, table_grid

_METHODS: dict[str, type[Method]] = {}


class DivergenceError(FloatingPointError):
    """A sampler's state became NaN or infinite: raised at the step where it happened.

    ``method``, ``step`` and ``sigma`` say where; ``last_finite`` is the state reported
    at the step before (``None`` when the first step already diverged).
    """

    def __init__(self, method: str, step: int, sigma: float, last_finite: Tensor | None):
        self.method, self.step, self.sigma, self.last_finite = method, step, sigma, last_finite
        super().__init__(
            f"{method or 'the sampler'} diverged: its samples became NaN or infinite at step {step} "
            f"(sigma {sigma:.4g}); try fewer or smaller guidance steps, or check the prior and operator"
        )


@dataclass
class Problem:
    """Everything a method sees: the measurement and the parts of the model.

    ``y`` holds ``num_samples`` copies of the measurement batch stacked along the
    first axis (``N = num_samples * B`` rows, row ``sample * B + b`` for image ``b``);
    ``x_shape`` is the shape of the unknown for those ``N`` rows, in pixels (latent
    methods map it with ``prior.latent_shape``).  ``noise_sigma`` is on the [-1, 1] scale.

    Randomness: ``generators`` holds one generator per image when ``solve()`` got one
    seed per image (``seed=[s_0, ..., s_{B-1}]``, e.g. batched evaluation), else it is
    ``None`` and every draw comes from ``generator``.  Methods draw their noise through
    :meth:`randn`, which keeps each image on its own generator, so image ``b`` of a
    batch gets the same noise as a solve of that image alone with seed ``s_b``.
    ``generator`` stays for what is not a per-row draw (SMC resampling, a method's
    shared random choices); with per-image generators it is a separate generator
    seeded with ``s_0``, and a method that uses it equals the one-image solves only
    in distribution.
    """

    y: Tensor
    operator: Any
    prior: Any
    x_shape: tuple[int, ...]
    noise_sigma: float
    steps: int
    generator: torch.Generator
    callback: Callable[[dict], None] | None = None
    progress: bool = False
    method: str = ""
    last_finite: Tensor | None = None
    #: what a method reports besides its samples (``log_evidence`` per row, ESS trace, ...);
    #: :func:`invsolve.solve` copies it into ``Result.diagnostics``.
    diagnostics: dict[str, Any] = field(default_factory=dict)
    #: one generator per image of the measurement batch (``None``: all draws from ``generator``).
    generators: tuple[torch.Generator, ...] | None = None
    #: rows the operator was applied to without calling it (a fused ``A^T A x``, ``operator.normal``);
    #: :func:`invsolve.solve` adds them to ``Result.operator_calls``.
    fused_operator_calls: int = 0

    @property
    def images(self) -> int:
        """``B``, the images whose rows interleave in ``y`` (1 unless per-image generators are set)."""
        return len(self.generators) if self.generators else 1

    def randn(self, shape: tuple[int, ...] | None = None) -> Tensor:
        """Standard normal noise of ``shape`` (default: ``x_shape``), ``shape[0]`` rows ordered like ``y``.

        With one generator per image the rows ``sample * B + b`` of image ``b`` are drawn
        in one call of shape ``(shape[0] // B, *shape[1:])`` from generator ``b``, which is
        what a solve of image ``b`` alone draws from its seed.  A shape whose first axis is
        no multiple of ``B`` is drawn from ``generator`` (not per image).
        """
        shape = tuple(self.x_shape if shape is None else shape)
        images = self.images
        if images == 1 or not shape or shape[0] % images:
            return torch.randn(shape, generator=self.generator, device=self.y.device, dtype=self.y.dtype)
        block = (shape[0] // images, *shape[1:])
        draws = [torch.randn(block, generator=g, device=self.y.device, dtype=self.y.dtype) for g in self.generators]
        return torch.stack(draws, dim=1).reshape(shape)

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """``D(x, sigma)`` with a scalar or per-row ``sigma``."""
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
        return self.prior.denoise(x, sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma)

    def sigmas(self, steps: int | None = None, rho: float = 7.0) -> list[float]:
        """The EDM grid (Karras et al. 2022, rho = 7) between the prior's ``sigma_min`` and
        ``sigma_max``, ending at 0: the grid of EDM-native methods and the fallback of
        :meth:`timestep_sigmas` for priors without a timestep table."""
        grid = karras_sigmas(steps or self.steps, self.prior.sigma_min, self.prior.sigma_max, rho)
        return grid.tolist()

    @property
    def sigma_table(self) -> Tensor | None:
        """The prior's ascending noise level per training timestep, or ``None`` (see :class:`priors.Prior`)."""
        return getattr(self.prior, "sigmas", None)

    def timestep_sigmas(self, spacing: Callable[[int, int], list[int]], steps: int | None = None) -> list[float]:
        """A method's official grid: ``spacing(T, steps)`` picks descending integer timesteps
        of the prior's table (:mod:`invsolve.schedules`), whose sigmas are returned with a
        final 0.  A prior without a table (analytic or user-written VE denoisers) falls back
        to :meth:`sigmas`, the EDM grid with the same number of levels."""
        steps = steps or self.steps
        table = self.sigma_table
        if table is None:
            return self.sigmas(steps)
        return table_grid(table, spacing(len(table), steps))

    def flow_times(self, steps: int | None = None) -> list[float]:
        """A flow grid: ``steps + 1`` descending times of the path ``x_t = (1 - t) x0 + t eps``
        ending at 0 (:mod:`invsolve.samplers.flow_path`).  A flow prior gives its scheduler's
        grid (``prior.flow_times``, with its shift), any other prior the uniform grid, both
        capped at ``t_max = sigma_max / (1 + sigma_max)``, the time of its largest noise level
        (a flow prior's ``sigma_max`` is finite, so ``x_t / (1 - t)`` stays finite)."""
        steps = steps or self.steps
        t_max = self.prior.sigma_max / (1.0 + self.prior.sigma_max)
        own = getattr(self.prior, "flow_times", None)
        if callable(own):
            return [min(float(t), t_max) for t in own(steps)]
        return torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64).tolist()

    def iterate(self, items: Iterable, desc: str) -> Iterable:
        """``items`` with a progress bar when ``progress`` is on."""
        return tqdm(items, desc=desc, disable=not self.progress, leave=False, dynamic_ncols=True)

    def report(self, step: int, sigma: float, x: Tensor, denoised: Tensor) -> None:
        """Check the state and hand it to the user's callback, if any.

        Raises :class:`DivergenceError` as soon as ``x`` holds a NaN or an infinity,
        so a diverging solve stops at the step where it happened.
        """
        if not bool(torch.isfinite(x).all()):
            raise DivergenceError(self.method, step, float(sigma), self.last_finite)
        self.last_finite = x
        if self.callback is not None:
            self.callback({"step": step, "sigma": sigma, "x": x, "denoised": denoised})


@dataclass(frozen=True)
class Defaults:
    """One row of a method's per-task defaults table (:attr:`Method.task_defaults`).

    ``options`` maps field names to the values of the official configuration named by
    ``source`` (repository and file); ``noisy`` holds the values its authors publish for
    noisy measurements (``noise_sigma > 0``), applied on top of ``options``, from
    ``noisy_source``.  ``noisy_warning`` says why the row's published setting fails on
    noisy measurements where its authors publish none for them; :func:`invsolve.solve`
    warns with it when ``noise_sigma > 0``.
    """

    options: Mapping[str, Any]
    source: str
    noisy: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    noisy_source: str = ""
    noisy_warning: str = ""

    def values(self, noise_sigma: float) -> dict[str, Any]:
        """The row's options for measurements with noise ``noise_sigma``."""
        return {**self.options, **(self.noisy if noise_sigma > 0 else {})}


@dataclass
class Method:
    """Base class of every sampler.

    Subclasses are dataclasses whose fields are the hyperparameters, with the
    paper defaults; ``needs`` lists capabilities of the operator (``forward``,
    ``vjp``, ``adjoint``, ``pinv``, ``prox``, ``svd``) and prior (``pixel``,
    ``latent``) the method requires, ``"a|b"`` meaning either; ``default_steps``
    is the paper's step count.  ``run`` returns the ``N`` restorations.

    Per-task defaults are data: ``task_defaults`` maps a task (``operator.task``,
    e.g. ``"gaussian_blur"``) or a family (``operator.kind``, e.g. ``"inpainting"``)
    to a :class:`Defaults` row; the dataclass fields hold the value for every other
    task.  :func:`invsolve.solve` resolves the row once (:meth:`defaults_row`) and
    records its key in ``Result.options["task"]``.  ``noiseless_only`` says why a
    method's published algorithm assumes noiseless measurements (``solve()`` warns
    when ``noise_sigma > 0``); ``cost`` says in words what a step (level, iteration)
    costs: network calls, backprops, operator applications, inner loops by name.

    ``clip_denoised`` (every method has it) clamps the denoised estimate to the
    prior's ``data_range``: ``None`` clamps where the official code does
    (``clips_denoised``, e.g. guided-diffusion's ``clip_denoised=True`` in DPS) or
    where the prior's own scheduler does (``prior.clip_sample``); ``solve()`` records
    the resolved value.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    default_steps: ClassVar[int] = 100
    summary: ClassVar[str] = ""
    clips_denoised: ClassVar[bool] = False
    task_defaults: ClassVar[Mapping[str, Defaults]] = MappingProxyType({})
    noiseless_only: ClassVar[str] = ""
    cost: ClassVar[str] = ""

    clip_denoised: bool | None = None

    @classmethod
    def defaults_table(cls, prior: Any = None) -> Mapping[str, Defaults]:
        """The per-task table for ``prior``: :attr:`task_defaults`, unless the authors
        publish other settings for another kind of model (PSLD: Stable Diffusion vs LDM)."""
        return cls.task_defaults

    @classmethod
    def defaults_row(cls, task: str | None, family: str | None, prior: Any = None) -> str | None:
        """The key of the row of :meth:`defaults_table` that applies: ``task`` if the
        table has it, else ``family``, else ``None`` (the field defaults)."""
        table = cls.defaults_table(prior)
        for key in (task, family):
            if key is not None and key in table:
                return key
        return None

    @classmethod
    def task_options(cls, key: str | None, noise_sigma: float, prior: Any = None) -> dict[str, Any]:
        """The options of row ``key`` for noise ``noise_sigma`` (``{}`` for ``None``)."""
        return {} if key is None else cls.defaults_table(prior)[key].values(noise_sigma)

    def resolved(self, problem: Problem) -> Method:
        """A copy with defaults that depend on the problem filled in (default: ``self``)."""
        return self

    def run(self, problem: Problem) -> Tensor:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    if not cls.name or cls.name in _METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or already registered")
    _METHODS[cls.name] = cls
    return cls


def registered() -> dict[str, type[Method]]:
    return dict(_METHODS)


def method_class(name: str) -> type[Method]:
    """The registered method ``name``; ``ValueError`` naming the known methods otherwise."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]
