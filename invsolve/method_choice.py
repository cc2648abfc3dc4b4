"""The method ``solve(method=None)`` and the command line without ``--method`` use: the first
rule of :data:`RULES` whose capability the operator and prior offer and whose method fits them.

The order follows what each kind of operator lets a method exploit (issue 22.4):

* an exact SVD: DDRM (Kawar et al. 2022), 20 steps of one network call, no network gradient;
* a proximal solve ``argmin ||y - A x||^2 + rho ||x - x0||^2`` (every linear operator): DiffPIR
  (Zhu et al. 2023), 100 steps, no network gradient;
* only vector-Jacobian products (a differentiable nonlinear operator): DPS (Chung et al. 2023);
* forward evaluations only (a black box): EnKG (Zheng et al. 2025), derivative-free;

and, for the other kinds of prior, PSLD (linear operators) or Latent DPS (differentiable ones)
on a latent prior, DRP on a restorer prior and PnP-ADMM on a proximal prior.

Deviation from the issue's wording: the capability vocabulary (``Method.needs``) does not say
whether an operator's ``prox`` is a closed form (inpainting, super-resolution, circular or
separable blurs) or conjugate gradients (non-separable reflect blurs, user-written linear
operators); both are the operator's own solve and both pick DiffPIR, whose cost per step stays
one network call either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from invsolve.samplers import registered
from invsolve.validation import capabilities, missing_needs


@dataclass(frozen=True)
class Rule:
    """Pick ``method`` when the operator and prior offer ``requires`` (and all of the method's needs)."""

    method: str
    requires: str
    reason: str


RULES: tuple[Rule, ...] = (
    Rule("ddrm", "svd", "has an SVD"),
    Rule("diffpir", "prox", "has a proximal solve but no SVD"),
    Rule("dps", "vjp", "has vector-Jacobian products but no SVD or proximal solve"),
    Rule("enkg", "forward", "is a black box (forward evaluations only)"),
    Rule("psld", "adjoint", "is linear (it has an adjoint) and the prior is latent"),
    Rule("latent_dps", "vjp", "has vector-Jacobian products and the prior is latent"),
    Rule("drp", "restorer", "has an adjoint and the prior is a restoration network"),
    Rule("pnp_admm", "proximal", "has a proximal solve or vector-Jacobian products and the prior is a proximal network"),
)


def choose_method(operator: Any, prior: Any) -> tuple[str, str]:
    """``(name, reason)`` of the first rule of :data:`RULES` that fits ``operator`` and ``prior``.

    Raises a ``ValueError`` naming the operator's capabilities when no rule fits (e.g. a black
    box with a latent prior, for which no latent method is derivative-free).
    """
    caps = capabilities(operator, prior)
    classes = registered()
    for rule in RULES:
        cls = classes.get(rule.method)
        if cls is not None and rule.requires in caps and not missing_needs(cls.needs, caps):
            return rule.method, f"{type(operator).__name__} {rule.reason}"
    working = sorted(name for name, cls in classes.items() if not missing_needs(cls.needs, caps))
    raise ValueError(
        f"no default method fits {type(operator).__name__} (offers {', '.join(sorted(caps))}) with "
        f"{type(prior).__name__}; choose one with method=... (--method); methods that work here: "
        f"{', '.join(working) or 'none'}"
    )


def rule_lines() -> list[str]:
    """The rules in words, for ``invsolve list``."""
    return [f"{rule.method:<12} when the operator {rule.reason}" for rule in RULES]
