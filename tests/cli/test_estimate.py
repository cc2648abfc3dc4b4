"""The plan printed before a solve (issue 22.4): the method chosen for the operator, steps, NFE and the
expected time from two timed network calls, and a warning past 10 minutes that names a faster method.

The "slow network" is an analytic Gaussian prior whose every call advances a fake clock by
``CALL_SECONDS`` (the timing instruments of :mod:`invsolve.benchmarks.probes` read that clock), so
nothing sleeps and the expected time is known exactly.
"""

from __future__ import annotations

import csv
import types

import pytest
import torch
from PIL import Image

import operators
import priors
from invsolve import solve
from invsolve.benchmarks import probes
from invsolve.benchmarks.probes import RecordingPrior
from invsolve.cli import main
from invsolve.commands import _estimate
from invsolve.commands._estimate import BACKPROP_FACTOR, LONG_RUN_SECONDS, duration, estimate
from priors import GaussianPrior
from priors.wrapper import PriorWrapper

#: Fake seconds per network call.
CALL_SECONDS = 0.5
SIZE = 16


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class SlowPrior(PriorWrapper):
    """``N(0, 0.25 I)`` on 3 x SIZE x SIZE images; each ``denoise`` costs ``CALL_SECONDS`` on ``clock``."""

    def __init__(self, clock: FakeClock):
        self.prior = GaussianPrior(torch.zeros(3, SIZE, SIZE), 0.25)
        self.sigma_min, self.sigma_max, self.data_shape = self.prior.sigma_min, self.prior.sigma_max, (3, SIZE, SIZE)
        self.clock, self.calls = clock, 0

    def denoise(self, x, sigma):
        self.clock.now += CALL_SECONDS
        self.calls += 1
        return self.prior.denoise(x, sigma)


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(probes, "time", types.SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


@pytest.fixture
def blur_problem():
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    op = operators.GaussianBlur(kernel_size=5, sigma=1.0, padding="reflect")
    return op, op.measure(x, 0.05, torch.Generator().manual_seed(1))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", ["ddrm", "diffpir", "dps", "pigdm", "ddnm", "reddiff", "daps"])
def test_the_estimate_counts_what_the_solve_then_does(clock, blur_problem, method):
    """NFE and network backprop of the dry runs, extrapolated to the default steps, are those of the
    real solve (its NFE; backprop as the speed benchmark's RecordingPrior sees it), and the time is
    overhead + NFE x 0.5 s x (3 with backprop)."""
    op, y = blur_problem
    slow = SlowPrior(clock)
    cost = estimate(y, op, slow, method, None, 1, 0.05, tuple(y.shape), {})
    assert slow.calls == 2 and cost.seconds_per_call == CALL_SECONDS  # the two-call probe, no other real call
    recorder = RecordingPrior(slow)
    real = solve(y, op, recorder, method=method, seed=0, noise_sigma=0.05, progress=False)
    assert cost.steps == real.options["steps"] and cost.nfe == real.nfe
    assert cost.backprop == (sum(recorder.backwards.values()) > 0)
    network = cost.nfe * CALL_SECONDS * (BACKPROP_FACTOR if cost.backprop else 1.0)
    # plus the time outside the network, per step as in the dry run (loose: shared CPUs time unevenly)
    assert network <= cost.seconds < network + 5.0 + 10 * real.seconds


def test_dps_and_pigdm_are_the_ones_that_backpropagate(clock, blur_problem):
    op, y = blur_problem
    verdicts = {m: estimate(y, op, SlowPrior(clock), m, 5, 1, 0.05, tuple(y.shape), {}).backprop
                for m in ("ddrm", "dps", "pigdm", "diffpir")}
    assert verdicts == {"ddrm": False, "dps": True, "pigdm": True, "diffpir": False}


def test_duration_words():
    assert [duration(s) for s in (0.42, 12.4, 210, 7560)] == ["0.4 s", "12 s", "3.5 min", "2.1 h"]


@pytest.fixture
def slow_cli(monkeypatch, clock, tmp_path):
    monkeypatch.setattr(priors, "load_prior", lambda *a, **k: SlowPrior(clock))
    image = tmp_path / "clean.png"
    Image.new("RGB", (SIZE, SIZE), (120, 60, 200)).save(image)
    return image


def _restore(image, tmp_path, *extra):
    return main(["restore", str(image), "--operator", "gaussian_blur", "--operator-arg", "kernel_size=5",
                 "--noise-sigma", "0.05", "--prior", "slow", "--device", "cpu", "--output", str(tmp_path / "out.png"),
                 "--quiet", *extra])


def test_restore_without_a_method_names_the_pick_and_its_plan(slow_cli, tmp_path, capsys):
    assert _restore(slow_cli, tmp_path) == 0
    out, err = capsys.readouterr()
    method, plan, summary = out.strip().splitlines()
    assert method == "method: ddrm, because GaussianBlur has an SVD (another with --method; the rule: 'invsolve list')"
    assert plan.startswith("plan: ddrm, 20 steps, NFE 20: about 10 s (one network call takes 0.5 s here)"), plan
    assert summary.startswith("restored: ddrm, 20 steps, NFE 20")
    assert "warning" not in err


def test_a_run_past_ten_minutes_says_so_and_names_a_faster_method(slow_cli, tmp_path, capsys):
    """DPS, 500 steps with a backward pass each at 0.5 s per call: 12.5 minutes; DDRM: 10 s."""
    steps = 500
    assert steps * CALL_SECONDS * BACKPROP_FACTOR > LONG_RUN_SECONDS
    with pytest.warns(UserWarning) as caught:  # the command line prints it as one "invsolve: warning:" line
        assert _restore(slow_cli, tmp_path, "--method", "dps", "--steps", str(steps)) == 0
    assert "plan: dps, 500 steps, NFE 500, each with a backward pass: about 12.5 min" in capsys.readouterr().out
    long = [str(w.message) for w in caught if "is expected to take" in str(w.message)]
    assert long == ["dps is expected to take about 12.5 min per image on cpu, more than 10 minutes; ddrm fits this "
                    "operator and should take about 10 s (--method ddrm)"]


def test_a_long_run_of_the_default_method_suggests_fewer_steps(slow_cli, tmp_path):
    with pytest.warns(UserWarning, match=r"ddrm is expected to take about 1\d\.\d min.*fewer --steps, a smaller --size"):
        assert _restore(slow_cli, tmp_path, "--steps", "1300") == 0  # ddrm: 1300 x 0.5 s = 10.8 min


def test_evaluate_without_methods_runs_the_pick_and_plans_every_image(slow_cli, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(3):
        Image.new("RGB", (SIZE, SIZE), (40 * k, 60, 200)).save(folder / f"img{k}.png")
    out = tmp_path / "run"
    assert main(["evaluate", str(folder), "--operator", "inpainting", "--operator-arg", "mask=box", "--operator-arg", "size=8",
                 "--prior", "slow",
                 "--size", str(SIZE), "--steps", "4", "--metrics", "psnr", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "method: ddrm, because Inpainting has an SVD" in printed
    assert "plan: ddrm, 4 steps, NFE 4: about 2.0 s (one network call takes 0.5 s here) per image, about 6.0 s " \
           "for 3 images" in printed, printed
    with open(out / "metrics.csv", newline="") as handle:
        assert {row["method"] for row in csv.DictReader(handle)} == {"ddrm", "no-learning"}


def test_priors_without_a_denoiser_get_no_time(monkeypatch, capsys):
    monkeypatch.setattr(_estimate, "estimate", lambda *a, **k: None)
    _estimate.announce(None, None, None, "drp", None, 1, 0.0, (1, 3), {}, torch.device("cpu"))
    assert capsys.readouterr().out.strip() == "plan: drp, 35 steps (no time estimate for this prior or problem)"


def test_method_args_without_a_method_are_checked_against_the_pick(slow_cli, tmp_path, capsys):
    assert _restore(slow_cli, tmp_path, "--method-arg", "step_size=0.5") == 2
    err = capsys.readouterr().err
    assert err.startswith("invsolve: error: method 'ddrm' has no option(s) step_size"), err
