"""ADM (guided-diffusion) checkpoints: architecture, strict loading, and the VP -> VE denoiser."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from priors import ADMConfig, ADMPrior, ADMUNet, load_adm, resolve_adm_checkpoint
from priors.adm import CONFIGS
from priors.adm_unet import AttentionBlock, ResBlock, timestep_embedding

TINY = ADMConfig(
    image_size=16, model_channels=32, num_res_blocks=1, attention_resolutions=(8,),
    channel_mult=(1, 2), num_head_channels=16,
)


def randomized(module: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Give every parameter seeded random values (so no layer is trivially zero or identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * scale)
    return module


def tiny_unet(seed: int = 0) -> ADMUNet:
    return randomized(ADMUNet(TINY), seed).eval()


def linear_schedule_numpy(steps: int = 1000) -> np.ndarray:
    """Independent (numpy) DDPM linear schedule: betas 1e-4 .. 0.02, abar = cumprod(1 - beta)."""
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, steps, dtype=np.float64))


def param_count(config: ADMConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in ADMUNet(config).parameters())


# ---------------------------------------------------------------- published architectures


def test_published_configs_have_the_published_parameter_counts():
    """Counts of the two checkpoints' architectures on the meta device (no memory used).

    Independent checks of the architecture: Dhariwal & Nichol (2021), hyperparameter
    table, give 554M parameters for the class-conditional ImageNet 256 model (same
    network plus a 1000 x 1024 label embedding) and 559M for ImageNet 512 (channel_mult
    (0.5, 1, 1, 2, 2, 4, 4)); 256x256_diffusion_uncond.pt is 2.21 GB of float32 (4 bytes a parameter).
    """
    assert param_count(CONFIGS["ffhq256"]) == 93_563_910
    uncond = param_count(CONFIGS["imagenet256"])
    assert uncond == 552_814_086
    label_embedding = 1000 * 4 * 256
    assert round((uncond + label_embedding) / 1e6) == 554
    assert round(uncond * 4 / 1e9, 2) == 2.21
    imagenet512 = ADMConfig(
        image_size=512, model_channels=256, num_res_blocks=2, attention_resolutions=(32, 16, 8),
        channel_mult=(0.5, 1, 1, 2, 2, 4, 4), num_head_channels=64,
    )
    assert round((param_count(imagenet512) + label_embedding) / 1e6) == 559


def test_published_configs_match_the_public_flags():
    ffhq, imagenet = CONFIGS["ffhq256"], CONFIGS["imagenet256"]
    for config in (ffhq, imagenet):
        assert config.image_size == 256 and config.channel_mult == (1, 1, 2, 2, 4, 4)
        assert config.num_head_channels == 64 and config.learn_sigma and config.out_channels == 6
        assert config.use_scale_shift_norm and config.resblock_updown and not config.use_new_attention_order
        assert config.dropout == 0.0
    assert (ffhq.model_channels, ffhq.num_res_blocks, ffhq.attention_resolutions) == (128, 1, (16,))
    assert (imagenet.model_channels, imagenet.num_res_blocks, imagenet.attention_resolutions) == (256, 2, (32, 16, 8))


def test_parameter_names_follow_the_guided_diffusion_layout():
    with torch.device("meta"):
        names = set(ADMUNet(CONFIGS["ffhq256"]).state_dict())
    # input_blocks: 0 conv | per level a residual block and a down-sampling block: level 4 (16 x 16
    # maps, 512 channels) is 9 (residual block + attention) and 10; output_blocks 2 and 3 mirror it.
    expected = {
        "time_embed.0.weight", "time_embed.2.bias", "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.0.weight", "input_blocks.1.0.in_layers.2.weight",
        "input_blocks.1.0.emb_layers.1.weight", "input_blocks.1.0.out_layers.0.weight",
        "input_blocks.1.0.out_layers.3.weight", "input_blocks.2.0.in_layers.2.weight",
        "input_blocks.5.0.skip_connection.weight", "input_blocks.9.1.qkv.weight",
        "input_blocks.9.1.proj_out.weight", "input_blocks.9.1.norm.weight",
        "middle_block.0.emb_layers.1.weight", "middle_block.1.qkv.bias", "middle_block.2.out_layers.3.bias",
        "output_blocks.0.0.skip_connection.weight", "output_blocks.3.1.qkv.weight",
        "out.0.weight", "out.2.weight", "out.2.bias",
    }
    assert expected <= names
    assert not any("label_emb" in name or ".op." in name for name in names)
    with torch.device("meta"):
        state = ADMUNet(CONFIGS["ffhq256"]).state_dict()
    assert tuple(state["input_blocks.9.1.qkv.weight"].shape) == (3 * 512, 512, 1)  # Conv1d
    assert tuple(state["out.2.weight"].shape) == (6, 128, 3, 3)


def test_unbuildable_configs_are_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        ADMUNet(dataclasses.replace(TINY, model_channels=24))
    with pytest.raises(ValueError, match="num_head_channels 64"):
        ADMUNet(dataclasses.replace(TINY, num_head_channels=64))
    with pytest.raises(ValueError, match="image_size 18"):
        ADMUNet(dataclasses.replace(TINY, image_size=18, channel_mult=(1, 2, 2)))


def test_full_configs_run_on_the_meta_device():
    for config in CONFIGS.values():
        with torch.device("meta"):
            out = ADMUNet(config)(torch.zeros(2, 3, 256, 256), torch.zeros(2))
        assert tuple(out.shape) == (2, 6, 256, 256)


# ---------------------------------------------------------------- building blocks against their formulas


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 3.5, 999.0])
    emb = timestep_embedding(t, 8)
    k = torch.arange(4, dtype=torch.float64)
    angles = t.double()[:, None] * 10000.0 ** (-k / 4)
    torch.testing.assert_close(emb.double(), torch.cat([angles.cos(), angles.sin()], 1), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_head_layout(new_order):
    """softmax(q^T k / sqrt(c)) v per head, with q/k/v taken from the documented channel layout."""
    channels, heads, c = 64, 4, 16
    block = randomized(AttentionBlock(channels, heads, new_order), seed=1).double()
    x = torch.randn(2, channels, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    flat = x.reshape(2, channels, 16)
    qkv = F.conv1d(F.group_norm(flat, 32, block.norm.weight, block.norm.bias), block.qkv.weight, block.qkv.bias)
    outs = []
    for h in range(heads):
        if new_order:  # all q, then all k, then all v
            q, k, v = (qkv[:, j * channels + h * c : j * channels + (h + 1) * c] for j in range(3))
        else:  # legacy: [q_h, k_h, v_h] per head
            q, k, v = (qkv[:, h * 3 * c + j * c : h * 3 * c + (j + 1) * c] for j in range(3))
        weights = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(c), dim=-1)
        outs.append(torch.einsum("bts,bcs->bct", weights, v))
    expected = flat + F.conv1d(torch.cat(outs, 1), block.proj_out.weight, block.proj_out.bias)
    torch.testing.assert_close(block(x), expected.reshape_as(x))


def test_resblock_scale_shift_and_resampling():
    """FiLM: GN(h)(1 + s) + b with (s, b) from the embedding; down blocks average-pool both paths."""
    block = randomized(ResBlock(32, 16, 64, 0.0, True, down=True), seed=3).double().eval()
    x = torch.randn(2, 32, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    emb = torch.randn(2, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    gn0, conv0 = block.in_layers[0], block.in_layers[2]
    h = F.conv2d(F.avg_pool2d(F.silu(F.group_norm(x, 32, gn0.weight, gn0.bias)), 2), conv0.weight, conv0.bias, padding=1)
    scale, shift = F.linear(F.silu(emb), block.emb_layers[1].weight, block.emb_layers[1].bias)[:, :, None, None].chunk(2, 1)
    gn1, conv1 = block.out_layers[0], block.out_layers[3]
    h = F.group_norm(h, 32, gn1.weight, gn1.bias) * (1 + scale) + shift
    h = F.conv2d(F.silu(h), conv1.weight, conv1.bias, padding=1)
    skip = F.conv2d(F.avg_pool2d(x, 2), block.skip_connection.weight, block.skip_connection.bias)
    torch.testing.assert_close(block(x, emb), skip + h)


# ---------------------------------------------------------------- the VE denoiser


def test_denoiser_is_the_eps_to_x0_conversion_at_table_timesteps():
    unet = tiny_unet().double()
    prior = ADMPrior(unet)
    abar = torch.from_numpy(linear_schedule_numpy())
    assert prior.sigma_min == pytest.approx(math.sqrt((1 - abar[0]) / abar[0]), rel=1e-9)
    assert prior.sigma_max == pytest.approx(math.sqrt((1 - abar[-1]) / abar[-1]), rel=1e-9)
    assert prior.data_shape == (3, 16, 16)
    steps = torch.tensor([0, 137, 500, 999])
    sigma = ((1 - abar[steps]) / abar[steps]).sqrt()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        x_vp = x * abar[steps].sqrt()[:, None, None, None]
        eps = unet(x_vp, steps.double())[:, :3]
        expected = x - sigma[:, None, None, None] * eps
        torch.testing.assert_close(prior.denoise(x, sigma), expected, rtol=1e-9, atol=1e-9)


def test_learned_variance_channels_are_dropped():
    unet = tiny_unet()
    prior = ADMPrior(unet)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    sigma = torch.tensor([0.5, 3.0])
    with torch.no_grad():
        before = prior.denoise(x, sigma)
        unet.out[2].weight[3:].add_(1.0)
        unet.out[2].bias[3:].add_(1.0)
        torch.testing.assert_close(prior.denoise(x, sigma), before)
        unet.out[2].bias[:3].add_(0.1)
        assert (prior.denoise(x, sigma) - before).abs().max() > 1e-3


def test_learned_range_variance_is_guided_diffusions_p_mean_variance():
    """The VE step variance against guided-diffusion's LEARNED_RANGE rule written in VP:
    the respaced step t -> s has beta = 1 - abar_t / abar_s, the posterior variance
    beta~ = beta (1 - abar_s) / (1 - abar_t), log var = f log beta + (1 - f) log beta~ with
    f = (v + 1) / 2, and a VP variance at level s is abar_s times the VE one."""
    unet = tiny_unet(seed=3).double()
    prior = ADMPrior(unet)
    assert prior.learned_variance
    abar = torch.from_numpy(linear_schedule_numpy())
    t, s = torch.tensor([666, 999]), torch.tensor([333, 666])  # steps of space_timesteps(1000, [4])
    sigma, sigma_next = ((1 - abar[t]) / abar[t]).sqrt(), ((1 - abar[s]) / abar[s]).sqrt()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        denoised, variance = prior.denoise_with_variance(x, sigma, sigma_next)
        torch.testing.assert_close(denoised, prior.denoise(x, sigma), rtol=1e-12, atol=1e-12)
        v = unet(x * abar[t].sqrt()[:, None, None, None], t.double())[:, 3:]
    a_t, a_s = abar[t][:, None, None, None], abar[s][:, None, None, None]
    beta = 1 - a_t / a_s
    posterior = beta * (1 - a_s) / (1 - a_t)
    frac = (v + 1) / 2
    expected = torch.exp(frac * beta.log() + (1 - frac) * posterior.log()) / a_s
    torch.testing.assert_close(variance, expected, rtol=1e-9, atol=0)
    with torch.no_grad():
        _, last = prior.denoise_with_variance(x, sigma, torch.zeros(2, dtype=torch.float64))
    assert (last == 0).all()  # guided-diffusion adds no noise at t == 0


def test_dps_samples_with_the_learned_variance_and_without_it_elsewhere():
    from invsolve import solve
    from invsolve.samplers import Problem
    from invsolve.samplers.dps import DPS, dps_step
    from operators import Inpainting

    prior = ADMPrior(tiny_unet(seed=5).double())
    op = Inpainting(torch.ones(1, 1, 16, 16, dtype=torch.bool))
    problem = Problem(y=torch.zeros(1, 3, 16, 16, dtype=torch.float64), operator=op, prior=prior,
                      x_shape=(1, 3, 16, 16), noise_sigma=0.0, steps=4, generator=torch.Generator().manual_seed(0))
    assert DPS().resolved(problem).learned_variance
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma, sigma_next = 2.0, 1.0
    stepped, denoised = dps_step(problem, x, sigma, sigma_next, 0.0, learned_variance=True)
    with torch.no_grad():
        _, variance = prior.denoise_with_variance(x, torch.tensor([sigma], dtype=torch.float64),
                                                  torch.tensor([sigma_next], dtype=torch.float64))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = denoised + sigma_next**2 / sigma**2 * (x - denoised) + variance.sqrt() * z  # DDPM p_sample
    torch.testing.assert_close(stepped, expected, rtol=1e-12, atol=1e-12)
    fixed = Problem(y=problem.y, operator=op, prior=ADMPrior(tiny_unet(seed=5).double()), x_shape=problem.x_shape,
                    noise_sigma=0.0, steps=4, generator=torch.Generator())
    fixed.prior.learned_variance = False
    assert not DPS().resolved(fixed).learned_variance
    with pytest.raises(ValueError, match="learned_variance"):
        DPS(learned_variance=True).resolved(fixed)
    result = solve(problem.y.float(), op, ADMPrior(tiny_unet(seed=5)), method="dps", steps=3, seed=0, progress=False)
    assert result.options["learned_variance"] and result.nfe == 3


def test_denoiser_rejects_other_sizes():
    prior = ADMPrior(tiny_unet())
    with pytest.raises(ValueError, match=r"\(3, 16, 16\)"):
        prior.denoise(torch.zeros(1, 3, 32, 32), torch.ones(1))


# ---------------------------------------------------------------- loading checkpoints


@pytest.fixture
def saved(tmp_path):
    unet = tiny_unet(seed=8)
    state = unet.state_dict()
    pt, safetensors = tmp_path / "tiny.pt", tmp_path / "tiny.safetensors"
    torch.save(state, pt)
    save_file({k: v.contiguous() for k, v in state.items()}, str(safetensors))
    return unet, pt, safetensors


def test_checkpoints_load_strictly_from_pt_and_safetensors(saved):
    unet, pt, safetensors = saved
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    sigma = torch.tensor([0.2, 5.0])
    with torch.no_grad():
        expected = ADMPrior(unet).denoise(x, sigma)
    for path in (pt, safetensors):
        for prior in (load_adm(path, TINY), resolve_adm_checkpoint(str(path), None, None, config=TINY)):
            assert isinstance(prior, ADMPrior)
            loaded = prior.unet.state_dict()
            assert set(loaded) == set(unet.state_dict())
            assert all(torch.equal(loaded[k], v) for k, v in unet.state_dict().items())
            assert not any(p.requires_grad for p in prior.unet.parameters()) and not prior.unet.training
            with torch.no_grad():
                torch.testing.assert_close(prior.denoise(x, sigma), expected)


def test_half_precision_loading(saved):
    _, pt, _ = saved
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(10))
    sigma = torch.tensor([1.0])
    reference = load_adm(pt, TINY)
    half = load_adm(pt, TINY, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    with torch.no_grad():
        out = half.denoise(x, sigma)
        assert out.dtype == torch.float32
        assert (out - reference.denoise(x, sigma)).abs().max() < 0.1


def test_mismatched_checkpoints_are_refused(saved, tmp_path):
    unet, pt, _ = saved
    with pytest.raises(ValueError, match="matches none of the ADM configs"):
        load_adm(pt)  # the tiny net is neither published config
    state = unet.state_dict()
    missing = {k: v for k, v in state.items() if k != "middle_block.1.qkv.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"1 missing \(middle_block.1.qkv.weight\)"):
        load_adm(tmp_path / "missing.pt", TINY)
    torch.save({**state, "label_emb.weight": torch.zeros(10, 128)}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="1 unexpected"):
        load_adm(tmp_path / "extra.pt", TINY)
    with pytest.raises(ValueError, match="class-conditional"):
        load_adm(tmp_path / "extra.pt")
    wide = dataclasses.replace(TINY, model_channels=64)
    with pytest.raises(ValueError, match="wrong shape"):
        load_adm(pt, wide)
    with pytest.raises(ValueError, match="unknown ADM config"):
        load_adm(pt, "ffhq512")


class NotATensor:
    """A pickled object that weights-only loading must refuse."""


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"time_embed.0.weight": NotATensor()}, path)
    with pytest.raises(ValueError, match="weights-only"):
        load_adm(path, TINY)


def test_missing_files_say_where_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="DPS2022/diffusion-posterior-sampling") as info:
        load_adm(tmp_path / "ffhq_10m.pt")
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"):
        resolve_adm_checkpoint(str(tmp_path / "256x256_diffusion_uncond.pt"))


def test_resolver_ignores_other_names(tmp_path):
    for name in ("natural-64", "google/ddpm-celebahq-256", str(tmp_path)):
        assert resolve_adm_checkpoint(name) is None
    with pytest.raises(TypeError, match="config"):
        resolve_adm_checkpoint(str(tmp_path / "x.pt"), revision="main")


def test_solve_runs_with_an_adm_prior():
    """The prior plugs into solve(): DPS backpropagates through the ADM network."""
    from invsolve import solve
    from operators import Inpainting

    prior = ADMPrior(tiny_unet())
    operator = Inpainting("random", missing=0.5, seed=0)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(11)) * 2 - 1
    y = operator.measure(x, 0.05, generator=torch.Generator().manual_seed(12))
    result = solve(y, operator, prior, method="dps", steps=2, seed=0, progress=False)
    assert result.image.shape == (1, 3, 16, 16) and torch.isfinite(result.image).all()
    assert result.nfe == 2


def test_load_prior_reads_adm_checkpoints(saved):
    import priors

    _, pt, safetensors = saved
    for path in (pt, safetensors):
        assert isinstance(priors.load_prior(path, config=TINY), ADMPrior)
