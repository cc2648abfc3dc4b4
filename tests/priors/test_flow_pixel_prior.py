"""Pixel rectified-flow UNets through ``load_prior``: a tiny random ``UNet2DModel`` saved with a
``FlowMatchEulerDiscreteScheduler`` (bare folder and pipeline folder), the network call checked
against diffusers' conventions by hand, short solves, and ``invsolve restore`` on it.

Convention source: diffusers ``schedulers/scheduling_flow_match_euler_discrete.py`` (``scale_noise``:
``x_t = t eps + (1 - t) x0``; ``timesteps = sigmas * num_train_timesteps``; ``step``:
``x + (t' - t) v``) and ``pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py`` (the
network gets ``t.expand(batch)`` from ``scheduler.timesteps``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from invsolve import solve
from invsolve.cli import main
from operators import GaussianBlur, SuperResolution
from priors import DiffusersFlowPixelPrior, from_velocity, load_prior

SHIFT, TRAIN_STEPS = 3.0, 500


def tiny_flow_unet(attention: bool = False, sample_size: int = 16):
    from diffusers import UNet2DModel

    torch.manual_seed(0)  # weight initialisation only
    down = ("DownBlock2D", "AttnDownBlock2D") if attention else ("DownBlock2D", "DownBlock2D")
    up = ("AttnUpBlock2D", "UpBlock2D") if attention else ("UpBlock2D", "UpBlock2D")
    return UNet2DModel(
        sample_size=sample_size, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=down, up_block_types=up, norm_num_groups=8, add_attention=attention,
    )


def save_flow_folder(folder: Path, attention: bool = False, **scheduler_options) -> Path:
    """A bare UNet2DModel folder with a flow scheduler config beside it."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tiny_flow_unet(attention).save_pretrained(folder)
    options = {"shift": SHIFT, "num_train_timesteps": TRAIN_STEPS, **scheduler_options}
    FlowMatchEulerDiscreteScheduler(**options).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory):
    return save_flow_folder(tmp_path_factory.mktemp("flow-unet"))


@pytest.fixture(scope="module")
def flow_prior(flow_dir):
    return load_prior(str(flow_dir))


def test_loads_as_a_flow_prior_with_the_schedulers_shift_and_steps(flow_prior):
    from diffusers import FlowMatchEulerDiscreteScheduler

    assert isinstance(flow_prior, DiffusersFlowPixelPrior)
    assert (flow_prior.shift, flow_prior.train_steps, flow_prior.data_shape) == (SHIFT, TRAIN_STEPS, None)
    assert flow_prior.data_range == (-1.0, 1.0)
    assert not any(p.requires_grad for p in flow_prior.unet.parameters()) and not flow_prior.unet.training
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT, num_train_timesteps=TRAIN_STEPS)
    assert flow_prior.t_min == pytest.approx(scheduler.sigma_min, rel=1e-6)
    scheduler.set_timesteps(7)
    grid = torch.tensor(flow_prior.flow_times(7), dtype=torch.float64)
    assert torch.allclose(grid[1:], scheduler.sigmas[1:].double(), atol=1e-6) and grid[0] == flow_prior.t_max
    assert "rectified flow" in repr(flow_prior)


def test_denoise_is_the_hand_conversion_of_the_unets_velocity(flow_prior):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 16, 16, generator=g) * 2
    sigma = torch.tensor([0.05, 1.0, 30.0])
    t = sigma / (1 + sigma)
    x_t = x / (1 + sigma)[:, None, None, None]
    with torch.no_grad():
        v = flow_prior.unet(x_t, t * TRAIN_STEPS).sample  # diffusers: timestep = t * num_train_timesteps
        expected = x_t - t[:, None, None, None] * v
        torch.testing.assert_close(flow_prior.denoise(x, sigma), expected, rtol=1e-5, atol=1e-5)
        # any size: 12 x 20 goes through as is, 13 x 15 is padded and cropped back
        assert flow_prior.denoise(torch.zeros(1, 3, 13, 15), torch.ones(1)).shape == (1, 3, 13, 15)
        assert torch.isfinite(flow_prior.denoise(torch.zeros(2, 3, 12, 20), torch.ones(2))).all()


def test_pipeline_folder_and_attention_fix_the_image_size(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler

    root = tmp_path / "pipeline"
    tiny_flow_unet(attention=True).save_pretrained(root / "unet")
    FlowMatchEulerDiscreteScheduler(shift=2.0).save_pretrained(root / "scheduler")
    index = {"_class_name": "FlowPixelPipeline", "unet": ["diffusers", "UNet2DModel"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}
    (root / "model_index.json").write_text(json.dumps(index))
    prior = load_prior(str(root))
    assert isinstance(prior, DiffusersFlowPixelPrior) and (prior.shift, prior.train_steps) == (2.0, 1000)
    assert prior.data_shape == (3, 16, 16)
    with pytest.raises(ValueError, match="attention layers and models images of shape"):
        prior.denoise(torch.zeros(1, 3, 8, 8), torch.ones(1))


def test_dtype_and_device_place_the_network_and_results_keep_the_input_dtype(flow_dir):
    prior = load_prior(str(flow_dir), device="cpu", dtype="bfloat16")
    assert prior.dtype == torch.bfloat16 and prior.device == torch.device("cpu")
    with torch.no_grad():
        out = prior.denoise(torch.zeros(1, 3, 16, 16), torch.full((1,), 2.0))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bad_flow_configs_are_refused(tmp_path):
    dynamic = save_flow_folder(tmp_path / "dynamic", use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="dynamic"):
        load_prior(str(dynamic))
    inverted = save_flow_folder(tmp_path / "inverted", invert_sigmas=True)
    with pytest.raises(ValueError, match="inverts its sigmas"):
        load_prior(str(inverted))
    from diffusers import UNet2DModel

    wide = UNet2DModel(sample_size=16, in_channels=3, out_channels=6, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, add_attention=False, layers_per_block=1)
    with pytest.raises(ValueError, match="maps 3 channels to 6"):
        DiffusersFlowPixelPrior(wide)
    with pytest.raises(ValueError, match=r"images \(N, 3, H, W\)"):
        DiffusersFlowPixelPrior(tiny_flow_unet()).denoise(torch.zeros(1, 1, 8, 8), torch.ones(1))


@pytest.mark.parametrize("method, operator", [
    ("ddrm", SuperResolution(2)),
    ("dps", GaussianBlur(kernel_size=5, sigma=1.0)),
    ("pigdm", SuperResolution(2)),
])
def test_short_solves_on_the_flow_unet_equal_those_on_its_hand_built_velocity(flow_prior, method, operator):
    # The loaded prior against priors.from_velocity of the UNet called by hand at t * T.
    def v(x_t, t):
        return flow_prior.unet(x_t, t * TRAIN_STEPS).sample

    by_hand = from_velocity(v, data_shape=None, shift=SHIFT, train_steps=TRAIN_STEPS)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = operator(x)
    runs = [solve(y, operator, prior, method=method, steps=4, noise_sigma=0.05, seed=0, progress=False,
                  x_shape=(1, 3, 16, 16)) for prior in (flow_prior, by_hand)]
    assert runs[0].samples.shape == (1, 1, 3, 16, 16) and torch.isfinite(runs[0].samples).all()
    assert runs[0].nfe == runs[1].nfe == 4
    torch.testing.assert_close(runs[0].samples, runs[1].samples, rtol=1e-4, atol=1e-4)


def test_restore_command_runs_ddrm_on_a_flow_folder(flow_dir, tmp_path, capsys):
    rows, cols = np.meshgrid(np.linspace(0, 1, 16), np.linspace(0, 1, 16), indexing="ij")
    clean = tmp_path / "clean.png"
    Image.fromarray((np.stack([rows, cols, (rows + cols) / 2], -1) * 255).round().astype(np.uint8)).save(clean)
    folder = tmp_path / "flow model"
    shutil.copytree(flow_dir, folder)
    out = tmp_path / "restored.png"
    status = main(["restore", str(clean), "--operator", "super_resolution", "--operator-arg", "factor=2",
                   "--noise-sigma", "0.05", "--prior", str(folder), "--method", "ddrm", "--steps", "3",
                   "--device", "cpu", "--seed", "0", "--output", str(out)])
    assert status == 0 and "restored:" in capsys.readouterr().out
    assert np.asarray(Image.open(out)).shape == (16, 16, 3)
