"""The method contract, for every registered method on a small problem it fits: finite output,
one callback per step, the same seed gives the same result, a batch equals its images alone,
and ``Result.options`` repeats the run.

The problems are analytic and float64 (no network), so they take milliseconds:

* ``pixel``: the d = 8 mixture problem of MCGdiff (4 measurements, :mod:`tests.helpers.posterior_problems`);
* ``latent``: the linear latent problem on the DDPM table (:mod:`tests.helpers.linear_latent`);
* ``text``: the four-corner text-conditioned latent prior (:mod:`tests.helpers.text_mixture`);
* ``blind``: the pixel problem's prior behind the identity, the measurement a noisy sample (gen2res);
* ``restorer``: a linear restorer network behind a 2 x 3 degradation (DRP's restorer prior).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from invsolve import solve
from invsolve.samplers import registered
from operators import MatrixOperator
from priors import RestorerPrior
from tests.helpers.batching import SHARED_GENERATOR
from tests.helpers.linear_latent import make_linear_problem
from tests.helpers.posterior_problems import make_gmm_problem
from tests.helpers.restorers import LinearRestorer
from tests.helpers.text_mixture import F64, four_corner_prior

STEPS = 4
#: Batched and single-image float64 runs differ only in the order of reductions: a few ulps
#: (2.2e-16) times the growth over STEPS steps; measured at most 2e-15 relative to the image's
#: scale.  A seed or row mix-up moves an image by O(1).
BATCH_RTOL = 1e-10

pytestmark = pytest.mark.filterwarnings("ignore:.* has no defaults for task:UserWarning")


def pixel_problem():
    prior, op, y, noise, _ = make_gmm_problem(8, 4, 0)
    return prior, op, torch.cat([y, y + 0.5]), noise


def latent_problem():
    prior, op, y, noise, _ = make_linear_problem(table=True)
    return prior, op, torch.cat([y, y + 0.1]), noise


def text_problem():
    prior = four_corner_prior()
    A = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    y = prior.decode(torch.tensor([[2.0, -2.0]], dtype=F64)) @ A.T
    return prior, MatrixOperator(A), torch.cat([y, y + 0.2]), 0.1


def restorer_problem():
    g = torch.Generator().manual_seed(1)
    H, A = torch.randn(2, 3, generator=g, dtype=F64), torch.randn(2, 3, generator=g, dtype=F64)
    K = 0.3 * torch.randn(3, 2, generator=g, dtype=F64)
    prior = RestorerPrior(LinearRestorer(K), degradation=MatrixOperator(H))
    return prior, MatrixOperator(A), torch.randn(2, 2, generator=g, dtype=F64), 0.1


def blind_problem():
    """The pixel problem's prior, with the identity: the measurement is a degraded sample (gen2res)."""
    prior, _, _, _, _ = make_gmm_problem(8, 4, 0)
    g = torch.Generator().manual_seed(1)
    x = prior.sample(2, generator=g)
    return prior, MatrixOperator(torch.eye(8, dtype=F64)), x + 0.1 * torch.randn(x.shape, generator=g, dtype=F64), 0.1


PROBLEMS = {"pixel": pixel_problem, "latent": latent_problem, "text": text_problem, "restorer": restorer_problem}
PROBLEMS["blind"] = blind_problem


@dataclass(frozen=True)
class Case:
    problem: str
    options: dict = field(default_factory=dict)
    #: Callback calls beyond STEPS, where the method's grid adds levels of its own.
    extra_levels: int = 0


CASES = {
    "d_flow": Case("pixel", {"iterations": STEPS, "lbfgs_iterations": 3}),
    "daps": Case("pixel", {"langevin_steps": 3}),
    "ddnm": Case("pixel"),
    "ddrm": Case("pixel"),
    "diffpir": Case("pixel"),
    "dps": Case("pixel"),
    "dreamguider": Case("pixel"),
    "drp": Case("restorer"),
    "enkg": Case("pixel", {"ensemble_size": 4, "max_ode_steps": 2}),
    # A stable step for 4 measurements (the official 500 is for images, the loss a mean over pixels).
    "flowchef": Case("pixel", {"gradient_scale": 1.5}),
    "flowdps": Case("latent"),
    "flower": Case("pixel"),
    "gen2res": Case("blind"),
    "flow_priors": Case("pixel"),
    "latent_dps": Case("latent"),
    "mcg": Case("pixel"),
    # OT-ODE starts at iteration int(STEPS * start_time) = 1 of the official grid: STEPS - 1 steps.
    "ot_ode": Case("pixel", {"start_time": 0.25}, extra_levels=-1),
    # A level at each distinct sigma_y / s_i: the problem's operator has 4 distinct singular values.
    "mcgdiff": Case("pixel", {"particles": 8}, extra_levels=4),
    "p2l": Case("text"),
    "pigdm": Case("pixel"),
    "pnp_admm": Case("pixel"),
    "pnp_flow": Case("pixel"),
    "pnpdm": Case("pixel"),
    "psld": Case("latent"),
    "reddiff": Case("pixel"),
    "resample": Case("latent", {"interval": 2, "lookahead_steps": 2, "pixel_max_iters": 5, "latent_max_iters": 5,
                                "latent_patience": 2}),
    "rgm": Case("pixel"),
    "tds": Case("pixel"),
    # Adaptive negation needs a CLIP image encoder (covered end to end in test_text_latent_sd.py).
    "treg": Case("text", {"adaptive_negation": False}),
}
METHODS = sorted(CASES)


def run(method: str, measurement: torch.Tensor, seed, **extra):
    """``solve`` on the method's problem; returns the result and the problem's parts."""
    case = CASES[method]
    prior, op, y, noise = PROBLEMS[case.problem]()
    y = y[measurement]
    result = solve(y, op, prior, method=method, steps=STEPS, seed=seed, noise_sigma=noise, progress=False,
                   **case.options, **extra)
    return result, (y, op, prior)


def test_every_registered_method_has_a_contract_case():
    """A new method fails here until it gets a small problem above."""
    assert METHODS == sorted(registered())


@pytest.mark.parametrize("method", METHODS)
def test_every_method_states_its_cost_and_no_missing_file(method):
    """The docs page shows ``cost``; docstrings cite sources, not files this repository lacks."""
    cls = registered()[method]
    assert cls.cost.strip()
    assert "DESIGN.md" not in cls.__doc__ and "ALGORITHMS.md" not in cls.__doc__


@pytest.mark.parametrize("method", METHODS)
def test_output_is_finite_and_the_callback_sees_each_step_once(method):
    steps = []
    result, _ = run(method, slice(0, 1), seed=3, callback=lambda info: steps.append(info["step"]))
    assert torch.isfinite(result.samples).all()
    assert steps == list(range(STEPS + CASES[method].extra_levels))


@pytest.mark.parametrize("method", METHODS)
def test_the_same_seed_gives_the_same_result(method):
    first, _ = run(method, slice(0, 1), seed=3)
    second, _ = run(method, slice(0, 1), seed=3)
    torch.testing.assert_close(first.samples, second.samples, rtol=0, atol=0)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in SHARED_GENERATOR])
def test_a_batch_equals_its_images_alone(method):
    """Two samples of each of two images: rows ``sample * 2 + image``, one generator per image."""
    batch, _ = run(method, slice(0, 2), seed=[3, 4], num_samples=2)
    for b, seed in enumerate([3, 4]):
        alone, _ = run(method, slice(b, b + 1), seed=seed, num_samples=2)
        scale = float(alone.samples.abs().max())
        torch.testing.assert_close(batch.samples[:, b], alone.samples[:, 0], rtol=0, atol=BATCH_RTOL * scale)


@pytest.mark.parametrize("method", sorted(SHARED_GENERATOR))
def test_a_batch_of_a_shared_generator_method_is_reproducible(method):
    """Equal to the images alone only in distribution (``SHARED_GENERATOR``), but the seed list fixes it."""
    first, _ = run(method, slice(0, 2), seed=[3, 4])
    second, _ = run(method, slice(0, 2), seed=[3, 4])
    assert torch.isfinite(first.samples).all()
    torch.testing.assert_close(first.samples, second.samples, rtol=0, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_result_options_repeat_the_run(method):
    """With a row of the method's per-task defaults where it has one, so ``task`` travels too."""
    prior = PROBLEMS[CASES[method].problem]()[0]
    task = min(registered()[method].defaults_table(prior), default=None)
    result, (y, op, prior) = run(method, slice(0, 1), seed=3, task=task)
    assert result.options["task"] == task
    again = solve(y, op, prior, method=result.method, progress=False, **result.options)
    torch.testing.assert_close(again.samples, result.samples, rtol=0, atol=0)
    assert again.options == result.options
