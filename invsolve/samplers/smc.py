"""Sequential Monte Carlo building blocks shared by the particle samplers (MCGdiff, TDS) and PnP-DM.

* :class:`ParticleWeights`: normalised log weights of ``S`` independent systems of ``P``
  particles, the running SMC estimate of the log evidence and the effective sample size;
* :func:`resample_indices`: multinomial or systematic resampling, vectorised over systems;
* :func:`system_layout`: which particle system (or chain) serves which row of a problem,
  and :meth:`SystemLayout.batches`, groups of systems small enough to hold in memory;
* :func:`in_chunks`: a function applied to particles in chunks of at most ``batch_size`` rows.

Evidence (Del Moral 2004; Chopin & Papaspiliopoulos 2020, ch. 10): with normalised weights
``W^i`` before step ``t`` and incremental weights ``w_t^i``, ``log Z += log sum_i W^i w_t^i``
and the new normalised weights are ``W^i w_t^i / sum_j W^j w_t^j``.  The product of these
increments is an unbiased estimate of the normalising constant of the final target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from invsolve.samplers.base import Problem

RESAMPLING = ("multinomial", "systematic")

#: Elements of particle state held at once (a few copies are alive per step): systems are run
#: in groups of at most ``STATE_ELEMENTS / (P * numel)`` (at least one system).
STATE_ELEMENTS = 2**24


def in_chunks(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int | None) -> Tensor:
    """``fn`` applied to ``x`` in consecutive row chunks of at most ``batch_size`` rows (``None``: at once)."""
    if batch_size is None or x.shape[0] <= batch_size:
        return fn(x)
    return torch.cat([fn(chunk) for chunk in x.split(batch_size)])


def resample_indices(log_w: Tensor, scheme: str, generator: torch.Generator, count: int | None = None) -> Tensor:
    """Ancestor indices ``(S, count)`` drawn from the normalised weights ``softmax(log_w)`` of each row.

    ``"multinomial"``: ``count`` independent categorical draws; ``"systematic"``: one uniform
    ``U`` per system and the points ``(U + k) / count`` pushed through the inverse CDF
    (Kitagawa 1996; the TDS code's default).  ``count`` defaults to the number of particles.
    """
    if scheme not in RESAMPLING:
        raise ValueError(f"resampling must be one of {', '.join(RESAMPLING)}, got {scheme!r}")
    systems, particles = log_w.shape
    count = particles if count is None else count
    weights = torch.softmax(log_w.double(), dim=-1)
    if scheme == "multinomial":
        return torch.multinomial(weights, count, replacement=True, generator=generator)
    cdf = weights.cumsum(-1)
    cdf[:, -1] = 1.0
    offset = torch.rand(systems, 1, generator=generator, device=log_w.device, dtype=torch.float64)
    points = (offset + torch.arange(count, device=log_w.device, dtype=torch.float64)) / count
    return torch.searchsorted(cdf, points).clamp_max(particles - 1)


def gather_particles(x: Tensor, index: Tensor) -> Tensor:
    """``x[s, index[s, k]]`` for ``x`` of shape ``(S, P, ...)`` and ``index`` of shape ``(S, K)``."""
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[rows, index]


class ParticleWeights:
    """Normalised log weights of ``systems`` independent systems of ``particles`` particles.

    ``log_evidence`` (shape ``(S,)``) accumulates ``log sum_i W^i w^i`` at every
    :meth:`reweight`; ``ess_trace`` records the mean effective sample size
    ``1 / sum_i (W^i)^2`` over systems after each reweighting.  Weights are float64.
    """

    def __init__(self, systems: int, particles: int, device: torch.device):
        self.particles = particles
        self.log_w = torch.full((systems, particles), -math.log(particles), device=device, dtype=torch.float64)
        self.log_evidence = torch.zeros(systems, device=device, dtype=torch.float64)
        self.ess_trace: list[float] = []

    def add_evidence(self, log_constant: Tensor) -> None:
        """Add a known log normalising constant per system (an exactly sampled initial factor)."""
        self.log_evidence += log_constant.double()

    def reweight(self, log_increment: Tensor) -> None:
        """Multiply the weights by ``exp(log_increment)`` (shape ``(S, P)``) and update the evidence."""
        total = self.log_w + log_increment.double()
        log_mass = torch.logsumexp(total, dim=-1)
        self.log_evidence += log_mass
        self.log_w = total - log_mass[:, None]
        self.ess_trace.append(float(self.ess().mean()))

    def ess(self) -> Tensor:
        """Effective sample size ``1 / sum_i (W^i)^2`` per system."""
        return 1.0 / torch.exp(2 * self.log_w).sum(-1)

    def resample(self, scheme: str, threshold: float, generator: torch.Generator) -> Tensor:
        """Ancestor indices ``(S, P)``: resampled where ``ESS < threshold * P``, the identity elsewhere.

        Resampled systems get uniform weights again.  ``threshold = 1`` resamples whenever
        the weights are not exactly uniform (the official MCGdiff and TDS codes).
        """
        identity = torch.arange(self.particles, device=self.log_w.device).expand_as(self.log_w)
        need = self.ess() < threshold * self.particles * (1 - 1e-12)
        if not bool(need.any()):
            return identity
        drawn = resample_indices(self.log_w, scheme, generator)
        self.log_w = torch.where(need[:, None], torch.full_like(self.log_w, -math.log(self.particles)), self.log_w)
        return torch.where(need[:, None], drawn, identity)


@dataclass
class SystemLayout:
    """How ``N`` problem rows map onto independent particle systems (or chains).

    Rows with the same measurement (the ``num_samples`` copies that :func:`invsolve.solve`
    stacks) and, with per-image generators, of the same image share systems: each system
    serves up to ``per_system`` of them.  ``measurement[s]`` indexes ``distinct`` (the
    measurement of each group of rows, groups in the order of their first row) and
    ``representative[s]`` is the first problem row system ``s`` serves; row ``r`` takes draw
    ``slot[r]`` of system ``system[r]``.  Systems follow the rows of ``y``: they are numbered
    in the order of the first row each serves, so for ``y`` of rows ``sample * B + b`` system
    ``c * B + b`` is the ``c``-th system of image ``b``, and :meth:`Problem.randn` of shape
    ``(systems, ...)`` gives it the ``c``-th draw of image ``b``'s generator.
    """

    distinct: Tensor
    measurement: Tensor
    representative: Tensor
    system: Tensor
    slot: Tensor
    per_system: int

    @property
    def num_systems(self) -> int:
        return int(self.measurement.shape[0])

    def batches(self, particles: int, numel: int) -> Iterator[Tensor]:
        """Consecutive groups of system indices with at most ``STATE_ELEMENTS`` elements of state."""
        size = max(1, STATE_ELEMENTS // max(1, particles * numel))
        yield from torch.arange(self.num_systems, device=self.measurement.device).split(size)

    def rows_of(self, systems: Tensor) -> Tensor:
        """The problem rows served by ``systems`` (a sorted index tensor)."""
        return torch.nonzero(torch.isin(self.system, systems)).flatten()

    def row_evidence(self, log_evidence: Tensor) -> Tensor:
        """Per row, ``log mean exp`` of the evidence estimates of all systems of its group
        (the mean of unbiased estimates of ``Z`` is unbiased)."""
        combined = torch.stack([
            torch.logsumexp(log_evidence[self.measurement == group], 0) - math.log(int((self.measurement == group).sum()))
            for group in range(int(self.distinct.shape[0]))
        ])
        return combined[self.measurement[self.system]]


def system_layout(y: Tensor, per_system: int, images: int = 1) -> SystemLayout:
    """Group the rows of ``y`` that share a measurement and, for ``images > 1``, an image
    (row ``r`` belongs to image ``r % images``), and give each group
    ``ceil(copies / per_system)`` systems, numbered in the order of the rows they serve."""
    if per_system < 1:
        raise ValueError(f"samples per system must be >= 1, got {per_system}")
    rows = torch.arange(y.shape[0], device=y.device)
    _, by_value = torch.unique(y.flatten(1), dim=0, return_inverse=True)
    _, key = torch.unique(by_value * images + rows % images, return_inverse=True)
    # Renumber the groups in the order of their first row (torch.unique sorts them by value).
    first_of_key = torch.full((int(key.max()) + 1,), y.shape[0], device=y.device).scatter_reduce(0, key, rows, "amin")
    group = torch.argsort(torch.argsort(first_of_key))[key]
    counts = torch.bincount(group)
    order = torch.argsort(group, stable=True)
    rank = torch.empty_like(group)
    rank[order] = rows - (torch.cumsum(counts, 0) - counts)[group[order]]
    systems_per_group = (counts + per_system - 1) // per_system
    group_major = (torch.cumsum(systems_per_group, 0) - systems_per_group)[group] + rank // per_system
    leaders = torch.nonzero(rank % per_system == 0).flatten()  # the first row of each system, ascending
    renumber = torch.empty_like(leaders)
    renumber[group_major[leaders]] = torch.arange(len(leaders), device=y.device)
    first_rows = torch.nonzero(rank == 0).flatten()
    return SystemLayout(y[first_rows], group[leaders], leaders, renumber[group_major], rank % per_system, per_system)


def report_rows(problem: Problem, step: int, sigma: float, x: Tensor, denoised: Tensor, complete: bool) -> None:
    """:meth:`Problem.report` for the rows of one group of systems.

    When the group does not hold every row (``complete`` false), the state is not kept as
    the last finite one: a diverging solve then returns NaNs rather than a partial batch.
    """
    problem.report(step, sigma, x, denoised)
    if not complete:
        problem.last_finite = None


def show_ess(bar: object, problem: Problem, weights: ParticleWeights) -> None:
    """Show the mean effective sample size on the progress bar (when progress is on)."""
    if problem.progress and weights.ess_trace:
        bar.set_postfix(ess=f"{weights.ess_trace[-1]:.1f}/{weights.particles}", refresh=False)
