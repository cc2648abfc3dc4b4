"""DPS, MCG, DDRM, DDNM and ΠGDM as their official code runs them: grids, defaults, update rules.

Sources (the repositories' files, read line by line):

* DPS: DPS2022/diffusion-posterior-sampling, ``configs/diffusion_config.yaml``,
  ``configs/*_config.yaml``, ``guided_diffusion/gaussian_diffusion.py``;
* MCG: HJ-harry/MCG_diffusion, ``run_inpainting.sh``, ``scripts/sample_inpainting.py``,
  ``guided_diffusion/gaussian_diffusion.py``;
* DDRM: bahjat-kawar/ddrm, ``runners/diffusion.py``, ``main.py``, README commands;
* DDNM: wyhuai/DDNM, ``functions/svd_ddnm.py``, ``configs/celeba_hq.yml``, ``main.py``;
* ΠGDM: NVlabs/RED-diff, ``algos/pgdm.py``, ``utils/functions.py``, ``_configs/algo/pgdm.yaml``,
  ``_configs/exp/default.yaml``, ``sample_test.sh``.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from invsolve import solve
from invsolve.samplers import Problem, registered
from operators import GaussianBlur, Inpainting, MatrixOperator, MotionBlur, PhaseRetrieval, SuperResolution
from priors import GaussianMixturePrior
from priors.adm import linear_alphas_cumprod
from tests.helpers.official_rules import mixture_eps_model, official_ddnm_plus, official_pigdm
from tests.helpers.posterior_problems import make_gmm_problem, sliced_wasserstein

F64 = torch.float64


def discrete_mixture() -> GaussianMixturePrior:
    """A 2-d two-component mixture as a DDPM model on the linear 1000-step table."""
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=F64)
    return GaussianMixturePrior(torch.ones(2, dtype=F64), means, 0.3, alphas_cumprod=linear_alphas_cumprod())


# ---------------------------------------------------------------- (a) timestep grids

#: The timesteps each official loop visits with its default settings, written out from the source.
OFFICIAL_TIMESTEPS = {
    # diffusion_config.yaml: steps 1000, timestep_respacing 1000 -> space_timesteps keeps all of them
    "dps": list(range(999, -1, -1)),
    # run_inpainting.sh: --diffusion_steps 1000 --timestep_respacing 1000
    "mcg": list(range(999, -1, -1)),
    # README: --timesteps 20; runners/diffusion.py: skip = 1000 // 20, seq = range(0, 1000, skip), reversed
    "ddrm": list(range(950, -1, -50)),
    # celeba_hq.yml T_sampling 100; svd_ddnm.py: skip = 1000 // 100, times 99..0 times skip
    "ddnm": list(range(990, -1, -10)),
    # sample_test.sh exp.num_steps=100; get_timesteps: range(end_step 0, start_step 1000, 1000 // 100), reversed
    "pigdm": list(range(990, -1, -10)),
}


@pytest.mark.parametrize("method", sorted(OFFICIAL_TIMESTEPS))
def test_default_run_visits_the_official_timesteps(method):
    prior = discrete_mixture()
    seen: list[float] = []
    solve(torch.tensor([[1.0]], dtype=F64), MatrixOperator(torch.tensor([[1.0, 0.0]], dtype=F64)), prior,
          method=method, seed=0, noise_sigma=0.1, progress=False, callback=lambda state: seen.append(state["sigma"]))
    expected = [float(prior.sigmas[t]) for t in OFFICIAL_TIMESTEPS[method]]
    assert seen == pytest.approx(expected, rel=1e-12)


def test_shorter_runs_keep_the_official_spacing():
    prior = discrete_mixture()
    op, y = MatrixOperator(torch.tensor([[1.0, 0.0]], dtype=F64)), torch.tensor([[1.0]], dtype=F64)
    expected = {
        "dps": [999, 666, 333, 0],  # guided-diffusion space_timesteps(1000, [4])
        "mcg": [999, 666, 333, 0],
        "ddrm": [750, 500, 250, 0],  # range(0, 1000, 250)
        "ddnm": [750, 500, 250, 0],  # 3..0 times 1000 // 4
        "pigdm": [750, 500, 250, 0],
    }
    for method, timesteps in expected.items():
        seen: list[float] = []
        solve(y, op, prior, method=method, steps=4, seed=0, noise_sigma=0.1, progress=False,
              callback=lambda state: seen.append(state["sigma"]))
        assert seen == pytest.approx([float(prior.sigmas[t]) for t in timesteps], rel=1e-12), method


# ---------------------------------------------------------------- (b) defaults


def resolved(method: str, operator, prior=None):
    cls = registered()[method]
    prior = prior if prior is not None else discrete_mixture()
    problem = Problem(y=torch.zeros(1), operator=operator, prior=prior, x_shape=(1, 3, 64, 64), noise_sigma=0.05,
                      steps=cls.default_steps, generator=torch.Generator())
    return cls().resolved(problem)


def test_dps_step_size_per_task_is_the_task_configs_scale():
    # configs/{gaussian_deblur,motion_deblur,super_resolution,inpainting,phase_retrieval}_config.yaml,
    # conditioning.params.scale (box and random masks both use inpainting_config.yaml)
    official = {
        GaussianBlur(61, 3.0): 0.3,
        MotionBlur(61, 0.5): 0.3,
        SuperResolution(4): 0.3,
        Inpainting("box", shape=(256, 256)): 0.5,
        Inpainting("random", missing=0.7, shape=(256, 256)): 0.5,
        PhaseRetrieval(): 1.0,
    }
    dps = registered()["dps"]
    for operator, scale in official.items():
        row = dps.defaults_row(operator.task, operator.kind)
        assert dps(**dps.task_options(row, 0.05)).step_size == scale, operator


def test_defaults_are_the_official_settings():
    cls = registered()
    # DPS diffusion_config.yaml: sampler ddpm, steps 1000, clip_denoised True
    assert cls["dps"].default_steps == 1000 and cls["dps"].clips_denoised and cls["dps"]().eta == 1.0
    # MCG run_inpainting.sh / sample_inpainting.py: 1000 steps, clip_denoised=True, the gradient unscaled
    assert cls["mcg"].default_steps == 1000 and cls["mcg"].clips_denoised and cls["mcg"]().alpha == 1.0
    # DDRM README: --timesteps 20 --eta 0.85 --etaB 1; efficient_generalized_steps does not clamp x0
    ddrm = cls["ddrm"]()
    assert (cls["ddrm"].default_steps, ddrm.eta, ddrm.eta_b, cls["ddrm"].clips_denoised) == (20, 0.85, 1.0, False)
    # DDNM main.py --eta 0.85; configs: T_sampling 100, travel_length 1, travel_repeat 1; no clamp
    ddnm = cls["ddnm"]()
    assert (cls["ddnm"].default_steps, ddnm.eta, ddnm.travel_length, ddnm.travel_repeat) == (100, 0.85, 1, 1)
    assert not cls["ddnm"].clips_denoised
    # RED-diff: pgdm.yaml grad_term_weight 1; sample_test.sh ΠGDM commands algo.eta=1.0, exp.num_steps=100;
    # pgdm.py uses H_pinv whatever sigma_y (noisy_guidance None: the paper's form when sigma_y > 0)
    # and never clamps x0_pred
    pigdm = cls["pigdm"]()
    assert (cls["pigdm"].default_steps, pigdm.eta, pigdm.weight, pigdm.noisy_guidance) == (100, 1.0, 1.0, None)
    assert not cls["pigdm"].clips_denoised


def test_pigdm_replaces_the_measured_pixels_for_inpainting_only():
    # pgdm.py: `if 'in2' in self.cfg.algo.deg` (its inpainting degradations) replaces x0's measured pixels
    pigdm = registered()["pigdm"]
    for operator, replaced in ((Inpainting("box", shape=(256, 256)), True), (GaussianBlur(61, 3.0), False)):
        row = pigdm.defaults_row(operator.task, operator.kind)
        assert pigdm(**pigdm.task_options(row, 0.0)).replace_observed is replaced


# ---------------------------------------------------------------- (c) update rules on a GMM epsilon-model

SAMPLES, REFERENCES = 600, 3
#: Measured on d = 8, d_y in {1, 4}, seeds 0-5, 600 samples and three reference runs: the
#: ratio below is 0.65-1.39 when invsolve runs the official rule; at d_y = 4 it is 3.0-14.5
#: for DDNM with eta 0.5 against 0.85 and 1.1-28.5 for ΠGDM with twice its guidance weight
#: (the controls below use draws where the other rule shows: 6.8 and 12.7).
SAME_ALGORITHM = 1.8


def parity_ratio(method: str, seed: int, noisy_reference: bool = True, **options) -> float:
    """Mean SW(invsolve, reference_k) / mean SW(reference_j, reference_k) on the MCGdiff mixture
    problem (d = 8, d_y = 4, sigma_y 0.5-0.6) made a linear-table DDPM model; the official
    hyperparameters are passed to the references, ``options`` to invsolve only.  The ΠGDM
    reference is the paper's noisy guidance, or with ``noisy_reference=False`` the RED-diff
    code's ``H^+``."""
    problem = make_gmm_problem(8, 4, seed)
    prior = GaussianMixturePrior(problem.prior.weights, problem.prior.means, 1.0,
                                 alphas_cumprod=linear_alphas_cumprod())
    eps, abar, A, y, sigma_y = mixture_eps_model(prior), prior.alphas_cumprod, problem.operator.A, problem.y, \
        problem.noise_sigma
    ours = solve(y, problem.operator, prior, method=method, num_samples=SAMPLES, noise_sigma=sigma_y, seed=seed,
                 progress=False, **options).samples.reshape(SAMPLES, -1)
    references = []
    for k in range(REFERENCES):
        g = torch.Generator().manual_seed(100 + 10 * seed + k)
        if method == "ddnm":
            references.append(official_ddnm_plus(eps, abar, A, y, sigma_y, 0.85, 100, SAMPLES, g))
        else:
            paper_noise = sigma_y if noisy_reference else 0.0
            references.append(official_pigdm(eps, abar, A, y, 1.0, 1.0, 100, SAMPLES, g, sigma_y=paper_noise))
    g = torch.Generator().manual_seed(7)
    distance = sum(sliced_wasserstein(ours, ref, generator=g) for ref in references) / REFERENCES
    pairs = list(itertools.combinations(references, 2))
    floor = sum(sliced_wasserstein(a, b, generator=g) for a, b in pairs) / len(pairs)
    return distance / floor


#: ΠGDM's default on noisy data is the paper's noisy guidance; ``noisy_guidance=False`` is the
#: RED-diff code's pseudo-inverse, checked against its own transcription.
RULES = {
    "ddnm": ("ddnm", True, {}),
    "pigdm (paper, noisy)": ("pigdm", True, {}),
    "pigdm (RED-diff code)": ("pigdm", False, {"noisy_guidance": False}),
}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("seed", [0, 1])
def test_samples_match_a_transcription_of_the_official_rule(rule, seed):
    method, noisy_reference, options = RULES[rule]
    assert parity_ratio(method, seed, noisy_reference, **options) < SAME_ALGORITHM


@pytest.mark.parametrize("method, seed, noisy_reference, options", [
    ("ddnm", 0, True, {"eta": 0.5}),
    ("pigdm", 0, True, {"weight": 2.0}),
    ("pigdm", 0, True, {"noisy_guidance": False}),  # the code's H^+ is not the paper's noisy rule
])
def test_the_parity_check_detects_another_rule(method, seed, noisy_reference, options):
    assert parity_ratio(method, seed, noisy_reference, **options) > 2 * SAME_ALGORITHM
