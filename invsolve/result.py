"""The value returned by :func:`invsolve.solve`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class Result:
    """Restorations and what it cost to get them.

    ``samples`` has shape ``(num_samples, B, *x_shape)``; ``image`` is the first
    sample and ``mean`` the average over samples (both ``(B, *x_shape)``).  ``nfe``
    counts network evaluations per solved sample; ``operator_calls`` forward
    evaluations of the operator per solved sample; ``decoder_calls`` and
    ``encoder_calls`` the images passed through a latent prior's decoder and
    encoder per solved sample (0 for pixel priors); ``seconds`` is wall time;
    ``options`` holds every resolved hyperparameter, the seed included.
    ``diverged`` is ``True`` when the samples became non-finite and ``solve(...,
    on_nan="warn")`` returned the last finite state instead.  ``log_evidence`` is the
    SMC estimate of ``log p(y)`` per measurement, shape ``(B,)``, from the methods that
    have one (``mcgdiff``, ``tds``; ``None`` otherwise); ``diagnostics`` holds what a
    method reports besides its samples (e.g. the ESS trace of a particle method).
    """

    samples: Tensor
    nfe: float
    operator_calls: float
    seconds: float
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    decoder_calls: float = 0.0
    encoder_calls: float = 0.0
    diverged: bool = False
    log_evidence: Tensor | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def image(self) -> Tensor:
        return self.samples[0]

    @property
    def mean(self) -> Tensor:
        return self.samples.mean(0)
