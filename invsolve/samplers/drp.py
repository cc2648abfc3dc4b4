"""DRP: a restoration network as an implicit prior."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

import operators
from invsolve.samplers.base import Defaults, Method, Problem, register
from operators.conjugate_gradient import conjugate_gradient

_DRP = "wustl-cig/DRP "


def _drp_row(lam: float, tau: float, tau_final: float, final: int, script: str) -> Defaults:
    options = {"lam": lam, "relaxation": tau, "final_relaxation": tau_final, "final_iterations": final}
    return Defaults(options, _DRP + script)


#: ``lam`` and the relaxation schedule of the official scripts; the field defaults are the
#: deblurring values.
DRP_TASK_DEFAULTS = MappingProxyType(
    {
        "blur": _drp_row(0.04, 0.1, 0.05, 5, "deblur_experments/DRP_deblur_k1.py"),
        "super_resolution": _drp_row(0.05, 0.1, 0.05, 11, "sisr_experiments/DRP_sisr_2x_k1.py"),
        "denoising": _drp_row(0.04, 0.02, 0.02, 0, "denoising_experiments/DRP_denoising_2x.py"),
    }
)


def resize_factor(operator: Any) -> int:
    """The downsampling factor of a super-resolution operator, 1 for any other operator."""
    return int(getattr(operator, "factor", 1)) if getattr(operator, "kind", "") == "super_resolution" else 1


def count_network_calls(problem: Problem, rows: int) -> None:
    """Add ``rows`` network evaluations to ``solve()``'s NFE (its counting proxy counts only ``denoise``)."""
    if hasattr(problem.prior, "items"):
        problem.prior.items += rows


def initial_estimate(operator: Any, y: Tensor) -> Tensor:
    """The official start: the measurement itself when it has the image's shape (deblurring,
    denoising); for super-resolution ``factor^2 A^T y`` (the official ``aty`` uses bicubic upsampling
    as ``A^T``, which is ``factor^2`` times the exact adjoint); otherwise ``A^+ y``."""
    shape = tuple(operator.input_shape(tuple(y.shape)))
    if shape == tuple(y.shape):
        return y.clone()
    if getattr(operator, "kind", "") == "super_resolution":
        return resize_factor(operator) ** 2 * operator.adjoint(y)
    return operator.pinv(y)


@register
@dataclass
class DRP(Method):
    r"""DRP (Hu, Delbracio, Milanfar & Kamilov, "A Restoration Network as an Implicit Prior",
    ICLR 2024).

    Official code: wustl-cig/DRP (the ``main`` loops of its scripts, ``utils/utils_conj.py``).

    A restorer ``R`` trained to invert a degradation ``H`` (the prior's ``degradation``, e.g. x2
    bicubic SR) defines the prior through ``x -> R(H x)``.  Each iteration:

    .. math::
        x_R &= R(H x), \qquad z = \tau x_R + (1 - \tau) x, \\
        x &\leftarrow \arg\min_u \tfrac12\lVert y - A u\rVert^2 + \tfrac{\rho}{2}\lVert H (u - z)\rVert^2,
        \quad (A^\top A + \rho H^\top H)\, u = A^\top y + \rho H^\top H z,

    solved by ``cg_iterations`` (3) conjugate-gradient steps warm-started at ``z``, or by
    ``operator.prox(z, y, rho)`` when ``H`` is the identity.  The result is the last ``x_R``
    (the official ``img_E``).  ``rho = lam * f_H^2 / f_A^2`` (``f`` the SR factors, 1 for other
    operators) with ``lam`` the official value (0.04 deblurring and denoising, 0.05 SR); both
    terms are quadratic, so ``rho`` is the same on [-1, 1] as on the official [0, 1].
    ``relaxation`` (tau) 0.1, then ``final_relaxation`` 0.05 for the last ``final_iterations``
    (deblurring: 5 of 35; SR: 11 of 30); denoising 0.02 throughout; per operator family from
    :attr:`task_defaults`.  Prior refinement (the paper's section 4): a second restorer given
    as ``refinement`` (a restorer prior, or a name / folder for ``priors.load_prior``) replaces
    ``R`` for the last ``final_iterations``, as the official scripts switch from their x3 to
    their x2 SwinIR (x4 to x3 for SR x3).  ``steps`` = iterations, 35 (the deblurring script;
    the SR scripts run 30).

    Deviations from the official code:

    * exact adjoints: the official code uses bicubic *upsampling* as ``H^T`` and, for SR, as
      ``A^T`` (``factor^2`` times the adjoint), which the ``f_H^2 / f_A^2`` factor in ``rho``
      absorbs;
    * the SR scripts switch the restorer one iteration after tau; here both switch at the
      start of the last ``final_iterations``.
    """

    name = "drp"
    needs = ("adjoint", "restorer")
    default_steps = 35
    cost = (
        "1 restorer call and cg_iterations conjugate-gradient steps (one A^T A and one H^T H each) per "
        "iteration; no backprop"
    )
    summary = "DRP: a restoration network R as implicit prior, x <- sprox(x - tau (x - R(H x))) (needs a restorer prior)"

    task_defaults = DRP_TASK_DEFAULTS

    lam: float = 0.04
    relaxation: float = 0.1
    final_relaxation: float = 0.05
    final_iterations: int = 5
    cg_iterations: int = 3
    refinement: Any = None

    def resolved(self, problem: Problem) -> DRP:
        method = self
        if method.lam <= 0:
            raise ValueError(f"lam must be > 0, got {method.lam}")
        for label, value in (("relaxation", method.relaxation), ("final_relaxation", method.final_relaxation)):
            if not 0 < value <= 1:
                raise ValueError(f"{label} must be in (0, 1], got {value}")
        if method.final_iterations < 0:
            raise ValueError(f"final_iterations must be >= 0, got {method.final_iterations}")
        if method.cg_iterations < 1:
            raise ValueError(f"cg_iterations must be >= 1, got {method.cg_iterations}")
        if isinstance(method.refinement, str):
            from priors import load_prior

            method = dataclasses.replace(method, refinement=load_prior(method.refinement))
        if method.refinement is not None and getattr(method.refinement, "prior_kind", None) != "restorer":
            raise TypeError("refinement must be a restorer prior (priors.RestorerPrior) or the name / folder of one")
        return method

    def options(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if fields["refinement"] is not None and not isinstance(fields["refinement"], str):
            fields["refinement"] = repr(fields["refinement"])
        return fields

    @staticmethod
    def degradation(restorer: Any) -> Any:
        """The restorer's ``H`` as an operator (``None`` for the identity)."""
        spec = restorer.degradation
        if isinstance(spec, dict):
            arguments = {key: value for key, value in spec.items() if key != "operator"}
            return operators.build(spec["operator"], **arguments)
        return spec

    def data_step(self, problem: Problem, z: Tensor, degradation: Any) -> Tensor:
        """``argmin ||y - A u||^2 / 2 + rho ||H (u - z)||^2 / 2``: closed form for ``H = I``, else CG from ``z``."""
        operator = problem.operator
        rho = self.lam * resize_factor(degradation) ** 2 / resize_factor(operator) ** 2
        if degradation is None:
            return operator.prox(z, problem.y, rho)
        rhs = operator.adjoint(problem.y) + rho * degradation.adjoint(degradation(z))

        def normal(u: Tensor) -> Tensor:
            return operator.adjoint(operator(u)) + rho * degradation.adjoint(degradation(u))

        return conjugate_gradient(normal, rhs, self.cg_iterations, tolerance=0.0, x0=z)

    def run(self, problem: Problem) -> Tensor:
        prior = problem.prior
        phases = [(prior, self.degradation(prior))]
        if self.refinement is not None:
            phases.append((self.refinement, self.degradation(self.refinement)))
        switch = problem.steps - self.final_iterations
        with torch.no_grad():
            x = initial_estimate(problem.operator, problem.y)
            restored = x
            for i in problem.iterate(range(problem.steps), self.name):
                final = i >= switch
                restorer, degradation = phases[-1] if final else phases[0]
                restored = restorer.restore(x if degradation is None else degradation(x))
                count_network_calls(problem, x.shape[0])
                tau = self.final_relaxation if final else self.relaxation
                z = tau * restored + (1 - tau) * x
                x = self.data_step(problem, z, degradation)
                problem.report(i, 0.0, x, restored)
        return restored
