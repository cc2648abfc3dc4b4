"""The posterior benchmark: every registered method against exact Gaussian-mixture posteriors."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from invsolve.api import solve
from invsolve.benchmarks.gmm_problem import GMMProblem, make_gmm_problem, start_sigma
from invsolve.benchmarks.method_names import check_method_names
from invsolve.benchmarks.sliced_wasserstein import sliced_wasserstein
from invsolve.samplers import registered
from invsolve.validation import capabilities, missing_needs

#: Steps used by ``--quick`` (a smoke test, far from converged).
QUICK_STEPS = 20

#: An option value replaced, per problem draw, by the mixture prior's mean per-coordinate variance.
PRIOR_VARIANCE = "prior_variance"

#: Options of the asymptotically exact samplers in this benchmark (everything else stays at the
#: official defaults).  ``batch_size=None``: one network call for all particles (a cheap
#: analytic denoiser).  TDS gets independent 64-particle systems (one draw each, as MCGdiff's
#: default) and ``tau2`` = the prior's variance: the official 0.12 is a data variance for
#: images in [-1, 1]; on this mixture (per-coordinate variance ~130) it over-sharpens the twist
#: (d = 8, d_y = 1: SW 7.9 against 0.27 with the prior's variance).
EXACT_SAMPLER_OPTIONS: dict[str, dict[str, Any]] = {
    "mcgdiff": {"batch_size": None},
    "tds": {"particles": 64, "samples_per_system": 1, "tau2": PRIOR_VARIANCE, "batch_size": None},
    "pnpdm": {"batch_size": None},
}


@dataclass
class BenchmarkConfig:
    """What to run: problem sizes, seeds, methods, sample and direction counts.

    ``methods=None`` means every registered method; ``steps`` overrides the
    paper's step count per method name and ``options`` sets hyperparameters per method
    (:data:`EXACT_SAMPLER_OPTIONS` by default).  ``particles`` (e.g. 64, ..., 1024) runs every
    method that has a ``particles`` option once per count (a convergence sweep).
    ``sigma_max`` is the mixture prior's largest noise level; ``None`` takes
    :func:`~invsolve.benchmarks.gmm_problem.start_sigma` per dimension (80 would not cover the
    means at d = 80: see :func:`~invsolve.benchmarks.gmm_problem.make_gmm_problem`).
    """

    dims: tuple[int, ...] = (8, 80)
    measurement_dims: tuple[int, ...] = (1, 2, 4)
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] | None = None
    samples: int = 1000
    directions: int = 500
    steps: dict[str, int] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: dict(v) for k, v in EXACT_SAMPLER_OPTIONS.items()})
    particles: tuple[int, ...] = ()
    sigma_max: float | None = None

    @classmethod
    def quick(cls, methods: tuple[str, ...] | None = None) -> BenchmarkConfig:
        """d = 8, d_y = 4, one seed, 200 samples, few steps: a smoke test."""
        names = methods or tuple(sorted(registered()))
        return cls(dims=(8,), measurement_dims=(4,), seeds=(0,), methods=methods, samples=200,
                   steps={name: QUICK_STEPS for name in names})

    def validate(self) -> None:
        check_method_names(self.methods)
        if self.samples < 2 or self.directions < 1:
            raise ValueError(f"need samples >= 2 and directions >= 1, got {self.samples}, {self.directions}")
        if not self.dims or not self.measurement_dims or not self.seeds:
            raise ValueError("dims, measurement dims and seeds must each list at least one value")
        for d in self.dims:
            for d_y in self.measurement_dims:
                if not 1 <= d_y <= d:
                    raise ValueError(f"every d_y must lie in [1, d]; got d_y={d_y} for d={d}")
        bad = {name: n for name, n in self.steps.items() if n < 1}
        if bad:
            raise ValueError(f"steps must be >= 1, got {bad}")
        if any(p < 1 for p in self.particles):
            raise ValueError(f"particle counts must be >= 1, got {self.particles}")


@dataclass
class MethodRun:
    """One method on one problem draw (with ``particles`` set in a particle sweep)."""

    @property
    def label(self) -> str:
        return self.method if self.particles is None else f"{self.method} P={self.particles}"

    method: str
    d: int
    d_y: int
    seed: int
    steps: int
    particles: int | None = None
    sw: float | None = None
    nfe: float | None = None
    seconds: float | None = None
    error: str | None = None


@dataclass
class CaseReference:
    """Reference distances on one problem draw: exact vs exact, and prior vs exact."""

    d: int
    d_y: int
    seed: int
    noise_sigma: float
    floor: float
    prior: float


@dataclass
class BenchmarkReport:
    """Everything measured; :mod:`invsolve.benchmarks.report` renders it."""

    config: BenchmarkConfig
    references: list[CaseReference]
    runs: list[MethodRun]
    unavailable: dict[str, str]

    def methods(self) -> list[str]:
        """Row labels: method names, with ``P=...`` in a particle sweep."""
        return sorted({run.label for run in self.runs}, key=lambda label: (label.split(" P=")[0], _count(label)))

    def reference_stats(self, d: int, d_y: int, attribute: str) -> tuple[float, float]:
        values = [getattr(r, attribute) for r in self.references if (r.d, r.d_y) == (d, d_y)]
        return _mean_std(values)

    def sw_stats(self, method: str, d: int, d_y: int) -> tuple[float, float] | None:
        runs = self._runs(method, d, d_y)
        if not runs or any(run.sw is None for run in runs):
            return None
        return _mean_std([run.sw for run in runs])

    def cost(self, method: str, d: int) -> tuple[int, float, float] | None:
        """Steps, mean NFE and mean seconds per solve of ``method`` in dimension ``d``."""
        runs = [run for run in self.runs if run.label == method and run.d == d and run.error is None]
        if not runs:
            return None
        return runs[0].steps, statistics.fmean(r.nfe for r in runs), statistics.fmean(r.seconds for r in runs)

    def errors(self) -> dict[str, str]:
        return {run.label: run.error for run in self.runs if run.error is not None}

    def _runs(self, method: str, d: int, d_y: int) -> list[MethodRun]:
        return [run for run in self.runs if (run.label, run.d, run.d_y) == (method, d, d_y)]

    def to_dict(self) -> dict[str, Any]:
        summary = {}
        for method in self.methods():
            for d in self.config.dims:
                for d_y in self.config.measurement_dims:
                    stats = self.sw_stats(method, d, d_y)
                    prior = self.reference_stats(d, d_y, "prior")[0]
                    summary.setdefault(method, {})[f"d={d},d_y={d_y}"] = None if stats is None else {
                        "sw_mean": stats[0], "sw_std": stats[1], "fraction_of_prior": stats[0] / prior,
                    }
        return {
            "config": {
                "dims": list(self.config.dims),
                "measurement_dims": list(self.config.measurement_dims),
                "seeds": list(self.config.seeds),
                "samples": self.config.samples,
                "directions": self.config.directions,
                "steps": dict(self.config.steps),
                "options": self.config.options,
                "particles": list(self.config.particles),
                "sigma_max": self.config.sigma_max,
            },
            "references": [vars(r) for r in self.references],
            "runs": [vars(r) for r in self.runs],
            "unavailable": dict(self.unavailable),
            "summary": summary,
        }


def _count(label: str) -> int:
    return int(label.split(" P=")[1]) if " P=" in label else 0


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def usable_methods(config: BenchmarkConfig, problem: GMMProblem) -> tuple[list[str], dict[str, str]]:
    """Methods to run and, for the others, what they need that the problem lacks."""
    known = registered()
    names = list(config.methods) if config.methods else sorted(known)
    caps = capabilities(problem.operator, problem.prior)
    usable, unavailable = [], {}
    for name in names:
        missing = missing_needs(known[name].needs, caps)
        if missing:
            unavailable[name] = "needs " + ", ".join(m.replace("|", " or ") for m in missing)
        else:
            usable.append(name)
    return usable, unavailable


def prior_variance(prior: Any) -> float:
    """The mixture's per-coordinate variance averaged over coordinates:
    ``mean_i (sum_k w_k (C_k,ii + mu_k,i^2) - (sum_k w_k mu_k,i)^2)``."""
    w, mu = prior.weights, prior.means.flatten(1)
    if prior.eigvecs is None:
        within = (w[:, None] * prior.eigvals).sum(0)
    else:
        within = torch.einsum("k,kij,kj->i", w, prior.eigvecs**2, prior.eigvals)
    mean = w @ mu
    return float((within + w @ mu**2 - mean**2).mean())


def resolve_options(options: dict[str, Any], problem: GMMProblem) -> dict[str, Any]:
    """``options`` with :data:`PRIOR_VARIANCE` replaced by the problem's prior variance."""
    return {key: prior_variance(problem.prior) if value == PRIOR_VARIANCE else value for key, value in options.items()}


def run_method(
    name: str, problem: GMMProblem, steps: int, samples: int, seed: int, options: dict[str, Any] | None = None
) -> tuple[torch.Tensor, float, float]:
    """Samples ``(samples, d)``, NFE per sample and seconds of one batched solve."""
    result = solve(
        problem.y, problem.operator, problem.prior, method=name, steps=steps, seed=seed,
        num_samples=samples, noise_sigma=problem.noise_sigma, progress=False,
        **resolve_options(options or {}, problem),
    )
    return result.samples.reshape(samples, -1), result.nfe, result.seconds


def run_posterior_benchmark(
    config: BenchmarkConfig, log: Callable[[str], None] | None = None
) -> BenchmarkReport:
    """Run every usable method on every ``(d, d_y, seed)`` draw of the MCGdiff problem.

    Per draw: ``samples`` exact posterior samples are the reference; a second
    exact set gives the noise floor and ``samples`` prior draws the prior's
    distance.  Each method draws ``samples`` samples in one batched solve (seed =
    the draw's seed); its sliced Wasserstein-1 distance to the reference uses
    ``directions`` random directions (the same directions for every method).
    A method that raises is recorded with its error and the run continues.
    """
    config.validate()
    log = log or (lambda message: None)
    known = registered()
    references, runs, unavailable = [], [], {}
    for d in config.dims:
        for d_y in config.measurement_dims:
            for seed in config.seeds:
                problem = make_gmm_problem(d, d_y, seed, sigma_max=config.sigma_max or start_sigma(d))
                g = torch.Generator().manual_seed(10_000 + seed)
                exact = problem.posterior.sample(config.samples, generator=g)
                floor_set = problem.posterior.sample(config.samples, generator=g)
                prior_set = problem.prior.sample(config.samples, generator=g)

                def distance(samples: torch.Tensor) -> float:
                    directions = torch.Generator().manual_seed(20_000 + seed)
                    return sliced_wasserstein(samples, exact, config.directions, directions)

                references.append(CaseReference(d, d_y, seed, problem.noise_sigma,
                                                distance(floor_set), distance(prior_set)))
                usable, missing = usable_methods(config, problem)
                unavailable.update(missing)
                for name in usable:
                    steps = config.steps.get(name, known[name].default_steps)
                    for count in particle_counts(config, known[name]):
                        options = dict(config.options.get(name, {}))
                        if count is not None:
                            options["particles"] = count
                        run = MethodRun(name, d, d_y, seed, steps, count)
                        try:
                            samples, run.nfe, run.seconds = run_method(name, problem, steps, config.samples, seed, options)
                            run.sw = distance(samples)
                        except Exception as err:  # noqa: BLE001 - a failing method is reported, not fatal
                            run.error = f"{type(err).__name__}: {err}"
                        runs.append(run)
                        log(_describe(run))
    return BenchmarkReport(config, references, runs, unavailable)


def particle_counts(config: BenchmarkConfig, cls: type) -> list[int | None]:
    """The sweep's particle counts for a method with a ``particles`` option, else ``[None]``."""
    has_particles = any(f.name == "particles" for f in dataclasses.fields(cls))
    return list(config.particles) if config.particles and has_particles else [None]


def _describe(run: MethodRun) -> str:
    where = f"d={run.d} d_y={run.d_y} seed={run.seed} {run.label} ({run.steps} steps)"
    if run.error is not None:
        return f"{where}: {run.error}"
    return f"{where}: SW {run.sw:.3f}, NFE {run.nfe:.0f}, {run.seconds:.2f} s"
