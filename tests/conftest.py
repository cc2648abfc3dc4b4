"""Suite-wide settings and the fixtures that several folders share.

Threads: one torch thread unless ``OMP_NUM_THREADS`` asks for more.  Tiny tensors gain
nothing from intra-op threads, so the default is one.  Setting ``OMP_NUM_THREADS=2`` or
``4`` runs the in-process tests with that many threads, which changes the order of float
reductions: tolerances must hold for any count (see docs/testing.md).

Fixtures: the tiny diffusers pixel prior and the tiny latent pipelines are saved once per
session (tests copy a folder before changing it); the Gaussian-mixture problem is built
afresh for each test, so no test sees another's counters.
"""

import os

import pytest
import torch

from tests.helpers.latent_pipelines import save_latent_pipelines
from tests.helpers.posterior_problems import make_gmm_problem
from tests.helpers.tiny_priors import save_tiny_pixel_prior


def pytest_configure(config):
    requested = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(requested) if requested.isdigit() and int(requested) > 0 else 1)


@pytest.fixture(scope="session")
def tiny_prior_dir(tmp_path_factory):
    """Folder of the tiny attention-free diffusers pixel prior (16 x 16 sample size)."""
    return save_tiny_pixel_prior(tmp_path_factory.mktemp("tiny-prior"), sample_size=16)


@pytest.fixture(scope="session")
def latent_pipelines(tmp_path_factory):
    """``(root, parts)``: ``root / "ldm-vq"``, ``"ldm-kl"`` and ``"sd"`` and the components they hold."""
    root = tmp_path_factory.mktemp("latent")
    return root, save_latent_pipelines(root)


@pytest.fixture
def gmm_problem():
    """The MCGdiff mixture problem with d = 8, d_y = 4, seed 0: ``(prior, operator, y, noise_sigma, posterior)``."""
    return make_gmm_problem(8, 4, 0)
