"""``solve(method=None)`` picks the method that fits the operator (issue 22.4): DDRM with an SVD,
DiffPIR with a proximal solve, DPS with only vector-Jacobian products, EnKG for a black box, and
PSLD / Latent DPS / DRP / PnP-ADMM for latent, restorer and proximal priors."""

from __future__ import annotations

import logging

import pytest
import torch

import operators
from invsolve import solve
from invsolve.method_choice import RULES, choose_method, rule_lines
from invsolve.samplers import registered
from invsolve.validation import capabilities, missing_needs
from operators import BlackBox, MatrixOperator
from priors import GaussianPrior, RestorerPrior
from tests.helpers.linear_latent import make_linear_problem
from tests.helpers.restorers import LinearRestorer

IMAGE_PRIOR = GaussianPrior(torch.zeros(3, 8, 8), 0.25)


def _non_separable_reflect_blur():
    kernel = torch.rand(5, 5, generator=torch.Generator().manual_seed(0)) + 0.1
    return operators.Blur(kernel / kernel.sum(), padding="reflect")


class _Shrink:
    """A proximal prior (``prior_kind = "proximal"``)."""

    prior_kind = "proximal"
    data_range = None

    def prox(self, v):
        return v / 2


@pytest.mark.parametrize(
    "operator, prior, expected, words",
    [
        (operators.GaussianBlur(5, 1.0, padding="reflect"), IMAGE_PRIOR, "ddrm", "has an SVD"),
        (operators.build("inpainting", mask="box"), IMAGE_PRIOR, "ddrm", "has an SVD"),
        (_non_separable_reflect_blur(), IMAGE_PRIOR, "diffpir", "proximal solve but no SVD"),
        (operators.PhaseRetrieval(), IMAGE_PRIOR, "dps", "vector-Jacobian products but no SVD"),
        (BlackBox(lambda x: x[:, :2], output_shape=(2,)), GaussianPrior(torch.zeros(4), 1.0), "enkg", "black box"),
        (MatrixOperator(torch.eye(3, 12, dtype=torch.float64)), make_linear_problem()[0], "psld", "prior is latent"),
        (operators.PhaseRetrieval(), make_linear_problem()[0], "latent_dps", "prior is latent"),
        (MatrixOperator(torch.eye(2, 3)), RestorerPrior(LinearRestorer(torch.eye(3)), MatrixOperator(torch.eye(2, 3))),
         "drp", "restoration network"),
        (MatrixOperator(torch.eye(2, 3)), _Shrink(), "pnp_admm", "proximal network"),
    ],
    ids=["svd-blur", "svd-inpainting", "prox-blur", "vjp", "blackbox", "latent-linear", "latent-vjp", "restorer",
         "proximal"],
)
def test_the_rule_picks_by_capability(operator, prior, expected, words):
    name, reason = choose_method(operator, prior)
    assert name == expected and words in reason and type(operator).__name__ in reason
    assert not missing_needs(registered()[name].needs, capabilities(operator, prior))  # the pick always fits


def test_no_rule_for_a_black_box_with_a_latent_prior_names_the_way_out():
    with pytest.raises(ValueError, match="no default method fits BlackBox.*method="):
        choose_method(BlackBox(lambda x: x, output_shape=(12,)), make_linear_problem()[0])


def test_every_rule_names_a_registered_method_and_is_listed():
    assert {rule.method for rule in RULES} <= set(registered())
    assert [line.split()[0] for line in rule_lines()] == [rule.method for rule in RULES]


def test_solve_without_a_method_runs_the_pick_and_says_why(gmm_problem, caplog):
    """The mixture problem's MatrixOperator has an SVD: method=None is DDRM, bit for bit."""
    prior, op, y, noise_sigma, _ = gmm_problem
    with caplog.at_level(logging.INFO, logger="invsolve.api"):
        chosen = solve(y, op, prior, steps=5, seed=3, noise_sigma=noise_sigma, progress=False)
    explicit = solve(y, op, prior, method="ddrm", steps=5, seed=3, noise_sigma=noise_sigma, progress=False)
    assert chosen.method == "ddrm" and torch.equal(chosen.samples, explicit.samples)
    assert chosen.diagnostics["method_choice"] == "ddrm: MatrixOperator has an SVD"
    assert "method_choice" not in explicit.diagnostics
    assert chosen.options == explicit.options  # the options still repeat the run
    assert any("uses ddrm" in record.getMessage() for record in caplog.records)


@pytest.mark.filterwarnings("ignore:dps has no defaults")
def test_explicit_method_wins_over_the_pick(gmm_problem):
    prior, op, y, noise_sigma, _ = gmm_problem
    assert solve(y, op, prior, method="dps", steps=3, seed=0, noise_sigma=noise_sigma, progress=False).method == "dps"


def test_a_black_box_without_a_method_gets_enkg():
    prior = GaussianPrior(torch.zeros(4, dtype=torch.float64), 1.0)
    op = BlackBox(lambda x: x[:, :2], output_shape=(2,))
    y = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    result = solve(y, op, prior, steps=2, seed=0, noise_sigma=0.1, progress=False, x_shape=(1, 4),
                   ensemble_size=4, max_ode_steps=2)
    assert result.method == "enkg" and "black box" in result.diagnostics["method_choice"]
