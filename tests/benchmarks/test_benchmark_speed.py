"""The speed benchmark's instruments (call recording, operator timing, resettable peak memory),
one measured cell against the calls its solve made, and a --quick smoke run (not a timed test)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from invsolve.benchmarks.probes import PeakMemory, RecordingLatent, RecordingPrior, TimedOperator
from invsolve.benchmarks.speed import measure_cell
from invsolve.cli import main
from operators import Inpainting
from priors import GaussianPrior, load_prior

CPU = torch.device("cpu")


def test_recording_prior_counts_a_backward_only_when_a_gradient_flows_through_the_network():
    prior = RecordingPrior(GaussianPrior(torch.zeros(4), 2.0))
    sigma = torch.ones(3)
    with torch.no_grad():
        prior.denoise(torch.randn(3, 4), sigma)
    x = torch.randn(3, 4, requires_grad=True)
    out = prior.denoise(x, sigma)
    prior.denoise(x, sigma)  # evaluated with grad enabled, but never differentiated
    torch.autograd.grad(out.sum(), x)
    key = ("denoise", (3, 4))
    assert prior.forwards[key] == 3 and prior.backwards[key] == 1


def test_recording_latent_records_the_decoder_too():
    class Latent(GaussianPrior):
        def encode(self, x):
            return x * 2

        def decode(self, z):
            return z / 2

        def latent_shape(self, shape):
            return shape

    prior = RecordingPrior(Latent(torch.zeros(4), 1.0))
    assert isinstance(prior, RecordingLatent)
    z = torch.randn(2, 4, requires_grad=True)
    torch.autograd.grad(prior.decode(prior.denoise(z, torch.ones(2))).sum(), z)
    assert prior.backwards == {("denoise", (2, 4)): 1, ("decode", (2, 4)): 1}


def test_timed_operator_gives_the_operator_results_and_times_every_call():
    op = Inpainting("random", missing=0.5, seed=1, shape=(8, 8))
    timed = TimedOperator(op, CPU)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    torch.testing.assert_close(timed(x), op(x), rtol=0, atol=0)
    torch.testing.assert_close(timed.pinv(x), op.pinv(x), rtol=0, atol=0)
    svd = timed.svd((2, 3, 8, 8))
    torch.testing.assert_close(svd.Vt(x), op.svd((2, 3, 8, 8)).Vt(x), rtol=0, atol=0)
    torch.autograd.grad(timed(x).sum(), x)
    clock = timed.clock
    assert dict(clock.calls) == {"__call__": 2, "pinv": 1, "svd": 1, "Vt": 1}
    assert clock.vjps == 1 and clock.seconds > 0
    assert op.forward_calls == 2 * 2 + 2  # the real operator still counts its forward items


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the resettable peak RSS is Linux's")
def test_peak_memory_regions_see_their_own_allocations_only():
    memory = PeakMemory(CPU)
    assert memory.resettable and "reset per region" in memory.kind
    memory.start()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written
    del block
    _, first = memory.stop()
    memory.start()
    _, second = memory.stop()
    assert first >= 48 and second < 16


@pytest.fixture(scope="module")
def prior():
    return load_prior("natural-64")


def test_a_gradient_method_is_timed_as_forward_plus_backward(prior):
    cell = measure_cell(prior, "dps", "gaussian_blur", size=32, steps=3, repeats=1)
    assert cell["status"] == "ok" and cell["steps"] == 3 and cell["backprop"] is True
    (call,) = cell["network_calls"]
    assert (call["entry"], call["shape"]) == ("denoise", [1, 3, 32, 32])
    assert call["forwards"] == call["backwards"] == cell["nfe"] >= 3  # DPS differentiates every evaluation
    expected = call["forwards"] * call["forward_backward_s"]
    assert math.isclose(cell["network_seconds"], expected, rel_tol=1e-9)
    assert cell["overhead"] == pytest.approx(cell["seconds"] / cell["network_seconds"])
    assert cell["operator_vjps"] >= 3 and cell["operator_seconds"] > 0
    assert math.isfinite(cell["peak_increment_mib"]) and math.isfinite(cell["reference_increment_mib"])


def test_a_method_without_backprop_is_timed_as_forwards(prior):
    cell = measure_cell(prior, "ddrm", "super_resolution", size=32, steps=3, repeats=1)
    assert cell["status"] == "ok" and cell["backprop"] is False
    (call,) = cell["network_calls"]
    assert call["forwards"] == cell["nfe"] >= 3 and call["backwards"] == 0 and call["forward_backward_s"] is None
    assert math.isclose(cell["network_seconds"], call["forwards"] * call["forward_s"], rel_tol=1e-9)
    assert {"Vt", "V", "Ut"} & set(cell["operator_calls"])


def test_a_method_the_operator_cannot_serve_gets_its_refusal(prior):
    cell = measure_cell(prior, "latent_dps", "gaussian_blur", size=32, steps=3, repeats=1)
    assert cell["status"] == "n/a" and "needs latent" in cell["reason"]


def test_quick_speed_command_runs_each_cell_in_its_own_process(tmp_path):
    out = tmp_path / "speed"
    argv = ["benchmark", "speed", "--quick", "--methods", "dps", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    data = json.loads((out / "speed.json").read_text())
    (cell,) = data["cells"]
    assert (cell["method"], cell["status"], cell["steps"], cell["size"]) == ("dps", "ok", 3, 32)
    assert data["config"]["isolate"] is True
    if sys.platform.startswith("linux"):  # memory from the second process, whose allocator returns freed blocks
        assert "returned to the system" in cell["memory_kind"] and cell["peak_increment_mib"] is not None
    markdown = (out / "speed.md").read_text()
    assert "**gaussian_blur, 32 x 32 px**" in markdown and "| dps | 3 |" in markdown


def test_latent_dps_is_timed_through_the_decoder_and_compared_with_decode_after_denoise():
    from diffusers import DDPMScheduler

    from priors import DiffusersLatentPrior, DiffusersPixelPrior
    from tests.helpers.latent_pipelines import tiny_autoencoder, tiny_latent_unet

    scheduler = DDPMScheduler(num_train_timesteps=100)
    denoiser = DiffusersPixelPrior(tiny_latent_unet(4), scheduler.alphas_cumprod, data_range=None)
    prior = DiffusersLatentPrior(denoiser, tiny_autoencoder("kl"))
    cell = measure_cell(prior, "latent_dps", "box_inpainting", size=16, steps=3, repeats=1)
    assert cell["status"] == "ok" and cell["backprop"] is True
    calls = {call["entry"]: call for call in cell["network_calls"]}
    assert calls["denoise"]["shape"] == [1, 4, 8, 8] and calls["denoise"]["backwards"] == calls["denoise"]["forwards"]
    assert calls["decode"]["backwards"] >= 3  # DPS in latent space backpropagates through the decoder
    assert cell["network_seconds"] > 0 and cell["overhead"] > 0
