"""Defaults on noisy measurements: ΠGDM's noisy guidance (Song et al., ICLR 2023, Sec. 3.2),
the warning of noiseless-only methods (MCG), per-noise rows (RED-diff sample_test.sh) and the
one-line warnings of the command line."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from invsolve import solve
from invsolve.benchmarks import make_gmm_problem
from operators import MatrixOperator
from tests.helpers.tiny_priors import save_tiny_pixel_prior


def family(kind: str, task: str | None = None):
    """A copy of the mixture problem's matrix operator that reports ``kind`` (and ``task``)."""
    attributes = {"kind": kind} if task is None else {"kind": kind, "task": task}
    return type("Tagged", (MatrixOperator,), attributes)


def run(method: str, noise_sigma: float, kind: str = "blur", task: str | None = None, **options):
    prior, op, y, _, _ = make_gmm_problem(8, 4, 0)
    operator = family(kind, task)(op.A)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = solve(y, operator, prior, method=method, steps=3, noise_sigma=noise_sigma, seed=0, progress=False,
                       **options)
    return result, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("noise_sigma, noisy", [(0.0, False), (0.1, True)])
def test_pigdm_uses_the_papers_noisy_guidance_on_noisy_data(noise_sigma, noisy):
    result, _ = run("pigdm", noise_sigma)
    assert result.options["noisy_guidance"] is noisy
    forced, _ = run("pigdm", noise_sigma, noisy_guidance=False)
    assert forced.options["noisy_guidance"] is False


@pytest.mark.parametrize("noise_sigma", [0.0, 0.1])
def test_mcg_warns_on_noisy_data_and_names_the_alternative(noise_sigma):
    _, messages = run("mcg", noise_sigma)
    noiseless = [m for m in messages if "assumes noiseless measurements" in m]
    assert len(noiseless) == (1 if noise_sigma else 0)
    assert all("mcg" in m and "use dps" in m for m in noiseless)


@pytest.mark.parametrize("noise_sigma, lr", [(0.0, 0.1), (0.1, 0.25)])
def test_reddiff_inpainting_takes_the_noisy_row_of_the_scripts(noise_sigma, lr):
    # sample_batch.sh in2_20ff (noiseless, lr from reddiff.yaml) / sample_test.sh in2_20ff algo.sigma_y=0.1
    result, _ = run("reddiff", noise_sigma, kind="inpainting", task="box_inpainting")
    assert (result.options["lam"], result.options["lr"], result.options["task"]) == (1.0, lr, "inpainting")


def test_a_row_tuned_without_noise_warns_on_noisy_data():
    _, noiseless = run("reddiff", 0.0, task="gaussian_blur")
    _, noisy = run("reddiff", 0.1, task="gaussian_blur")
    assert not [m for m in noiseless if "not for noisy data" in m]
    assert [m for m in noisy if "gaussian_blur setting is not for noisy data" in m and "diffpir" in m]


def test_the_command_line_prints_a_warning_in_one_line(tmp_path):
    # A child process: pytest records warnings itself, so only a real run shows what a user sees.
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (16, 16), (120, 60, 200)).save(image)
    prior = save_tiny_pixel_prior(tmp_path / "prior", sample_size=16)
    args = ["restore", str(image), "--operator", "gaussian_blur", "--operator-arg", "kernel_size=5",
            "--noise-sigma", "0.05", "--prior", str(prior), "--method", "mcg", "--steps", "2", "--device", "cpu",
            "--output", str(tmp_path / "out.png"), "--quiet"]
    done = subprocess.run([sys.executable, "-m", "invsolve", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "assumes noiseless" in line]
    assert len(lines) == 1 and lines[0].startswith("invsolve: warning: mcg assumes noiseless measurements"), done.stderr
    assert not [line for line in done.stderr.splitlines() if line.startswith("  ")]  # no source line below it
