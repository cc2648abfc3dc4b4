"""SD3 and FLUX.1 latent flow priors on the tiny pipelines of ``helpers.tiny_flow_pipelines``, saved
and loaded with ``load_prior``.

Expectations come from diffusers itself: the prompt embeddings from ``StableDiffusion3Pipeline`` /
``FluxPipeline.encode_prompt``, the packing from ``FluxPipeline._pack_latents`` / ``_unpack_latents`` /
``_prepare_latent_image_ids``, the time grid and every Euler step from the pipelines' own denoising
loops (read through ``callback_on_step_end``), the velocity from the transformer called directly and
turned into ``D = x_t - t v`` by hand (``x_t = x / (1 + sigma)``, ``t = sigma / (1 + sigma)``).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from invsolve import solve
from operators import Inpainting
from priors import load_prior
from priors.diffusers_flow_latent import FlowLatentPrior
from priors.flux import FluxDenoiser, latent_position_ids, pack_latents, unpack_latents
from tests.helpers.latent_pipelines import NETWORK_TOLERANCE
from tests.helpers.tiny_flow_pipelines import SCALING, SHIFT, tiny_flux_transformer

H = W = 16  # pixels; latents are 4 x 8 x 8


@pytest.fixture(scope="module")
def flow_pipelines(tmp_path_factory):
    from tests.helpers.tiny_flow_pipelines import save_tiny_flow_pipelines

    root = tmp_path_factory.mktemp("flow-latent")
    return root, save_tiny_flow_pipelines(root)


@pytest.fixture(scope="module")
def diffusers_pipes(flow_pipelines):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    root, _ = flow_pipelines
    return {"sd3": StableDiffusion3Pipeline.from_pretrained(root / "sd3"), "flux": FluxPipeline.from_pretrained(root / "flux")}


def latents(seed: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def by_hand(v: torch.Tensor, z: torch.Tensor, sigma: float) -> torch.Tensor:
    t = sigma / (1 + sigma)
    return z / (1 + sigma) - t * v


def trajectory(pipe, **call) -> tuple[list[torch.Tensor], list[float]]:
    """The latents before and after every step of the pipeline's loop, and its scheduler's time grid."""
    seen = [call["latents"].clone()]

    def keep(pipeline, step, timestep, tensors):
        seen.append(tensors["latents"].clone())
        return tensors

    pipe(height=H, width=W, output_type="latent", callback_on_step_end=keep, **call)
    return seen, pipe.scheduler.sigmas.double().tolist()


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_vae_factors_follow_the_pipelines(flow_pipelines, name) -> None:
    root, parts = flow_pipelines
    prior = load_prior(root / name)
    vae = parts["vae"]
    assert isinstance(prior, FlowLatentPrior) and prior.text_conditioned
    assert (prior.scaling_factor, prior.shift_factor) == (SCALING, SHIFT)
    assert prior.latent_shape((2, 3, H, 12)) == (2, 4, 8, 6)
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0)) * 2 - 1
    # SD3 / FLUX img2img: (latent - shift_factor) * scaling_factor, with the posterior mean
    torch.testing.assert_close(prior.encode(x), (vae.encode(x).latent_dist.mean - SHIFT) * SCALING, **NETWORK_TOLERANCE)
    z = latents(1)
    # the pipelines' decode: latents / scaling_factor + shift_factor
    torch.testing.assert_close(prior.decode(z), vae.decode(z / SCALING + SHIFT).sample, **NETWORK_TOLERANCE)
    with pytest.raises(ValueError, match="multiple of 4"):
        prior.latent_shape((1, 3, 18, 16))


def test_sd3_denoise_is_the_guided_velocity_with_the_pipelines_embeddings(flow_pipelines, diffusers_pipes) -> None:
    root, parts = flow_pipelines
    pipe, transformer = diffusers_pipes["sd3"], parts["sd3"]
    prompt, negative, pooled, negative_pooled = pipe.encode_prompt("face", None, None, device="cpu")
    prior = load_prior(root / "sd3", prompt="face", guidance_scale=2.0)
    z = latents(2)
    for sigma in (0.3, 4.0):
        x_t, t = z / (1 + sigma), torch.full((2,), sigma / (1 + sigma))

        def v(seq, pool):
            return transformer(hidden_states=x_t, timestep=1000 * t, encoder_hidden_states=seq.expand(2, -1, -1),
                               pooled_projections=pool.expand(2, -1), return_dict=False)[0]

        guided = v(negative, negative_pooled) + 2.0 * (v(prompt, pooled) - v(negative, negative_pooled))
        torch.testing.assert_close(prior.denoise(z, torch.full((2,), sigma)), by_hand(guided, z, sigma), **NETWORK_TOLERANCE)
    packed = prior.encode_text("face")
    assert packed.shape == (1, prompt.shape[1] + 1, max(prompt.shape[2], pooled.shape[1]))
    sequence, pool = prior.denoiser.unpack_text(packed)
    torch.testing.assert_close(sequence, prompt, **NETWORK_TOLERANCE)
    torch.testing.assert_close(pool, pooled, **NETWORK_TOLERANCE)


def test_sd3_without_t5_uses_zero_rows_as_the_pipeline_does(flow_pipelines) -> None:
    from diffusers import StableDiffusion3Pipeline

    root, _ = flow_pipelines
    pipe = StableDiffusion3Pipeline.from_pretrained(root / "sd3-no-t5", text_encoder_3=None, tokenizer_3=None)
    assert pipe.text_encoder_3 is None
    prompt, _, pooled, _ = pipe.encode_prompt("face", None, None, device="cpu")
    prior = load_prior(root / "sd3-no-t5", prompt="face")
    sequence, pool = prior.denoiser.unpack_text(prior.encode_text("face"))
    assert sequence.shape == (1, 8 + 256, 32) and sequence[:, 8:].abs().sum() == 0
    torch.testing.assert_close(sequence, prompt, **NETWORK_TOLERANCE)
    torch.testing.assert_close(pool, pooled, **NETWORK_TOLERANCE)


def test_sd3_euler_steps_match_the_pipeline(flow_pipelines, diffusers_pipes) -> None:
    root, _ = flow_pipelines
    prior = load_prior(root / "sd3", prompt="face", guidance_scale=2.0)
    seen, grid = trajectory(diffusers_pipes["sd3"], prompt="face", guidance_scale=2.0, num_inference_steps=4,
                            latents=latents(3, 1))
    times = prior.flow_times(4)
    # the scheduler's grid, shift 3 on linspace(1, shift(1 / 1000), 4), capped at 0.999
    base = torch.linspace(1.0, 3e-3 / (1 + 2e-3), 4, dtype=torch.float64)
    expected = (3 * base / (1 + 2 * base)).tolist() + [0.0]
    assert times == pytest.approx([0.999, *expected[1:]], abs=1e-6) and grid == pytest.approx(expected, abs=1e-6)
    velocity = prior.denoiser.guided_velocity(seen[0], torch.ones(1))  # t = 1: infinite VE level
    torch.testing.assert_close(seen[1], seen[0] + (grid[1] - 1.0) * velocity, **NETWORK_TOLERANCE)
    for i in range(1, 4):
        t, z = grid[i], seen[i]
        denoised = prior.denoise(z / (1 - t), torch.tensor([t / (1 - t)]))
        torch.testing.assert_close(seen[i + 1], z + (grid[i + 1] - t) * (z - denoised) / t, **NETWORK_TOLERANCE)


def test_flux_packing_matches_the_pipeline() -> None:
    from diffusers import FluxPipeline

    z = torch.randn(2, 4, 6, 10, generator=torch.Generator().manual_seed(4))
    tokens = pack_latents(z)
    torch.testing.assert_close(tokens, FluxPipeline._pack_latents(z, 2, 4, 6, 10), rtol=0, atol=0)
    torch.testing.assert_close(unpack_latents(tokens, 6, 10), z, rtol=0, atol=0)
    torch.testing.assert_close(unpack_latents(tokens, 6, 10), FluxPipeline._unpack_latents(tokens, 12, 20, 2), rtol=0, atol=0)
    ids = latent_position_ids(6, 10, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(ids, FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32), rtol=0, atol=0)


def test_flux_denoise_uses_the_guidance_embedding_and_true_cfg(flow_pipelines, diffusers_pipes) -> None:
    root, parts = flow_pipelines
    pipe, transformer = diffusers_pipes["flux"], parts["flux"]
    prompt, pooled, text_ids = pipe.encode_prompt("face", device="cpu")
    negative, negative_pooled, _ = pipe.encode_prompt("", device="cpu")
    prior = load_prior(root / "flux", prompt="face", guidance_scale=2.0)
    assert prior.denoiser.embedded_guidance == 3.5 and prior.denoiser.guidance_embeds
    z, sigma = latents(5), 1.5
    x_t, t = z / (1 + sigma), torch.full((2,), sigma / (1 + sigma))
    ids = pipe._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32)

    def v(seq, pool, guidance=3.5):
        out = transformer(hidden_states=pipe._pack_latents(x_t, 2, 4, 8, 8), timestep=t,
                          guidance=torch.full((2,), guidance), pooled_projections=pool.expand(2, -1),
                          encoder_hidden_states=seq.expand(2, -1, -1), txt_ids=text_ids, img_ids=ids,
                          return_dict=False)[0]
        return pipe._unpack_latents(out, H, W, 2)

    guided = v(negative, negative_pooled) + 2.0 * (v(prompt, pooled) - v(negative, negative_pooled))
    sig = torch.full((2,), sigma)
    torch.testing.assert_close(prior.denoise(z, sig), by_hand(guided, z, sigma), **NETWORK_TOLERANCE)
    prior.denoiser.embedded_guidance = 7.0
    prior.set_prompt("face")
    torch.testing.assert_close(prior.denoise(z, sig), by_hand(v(prompt, pooled, 7.0), z, sigma), **NETWORK_TOLERANCE)


def test_flux_shift_follows_the_resolution_and_the_pipeline_loop(flow_pipelines, diffusers_pipes) -> None:
    root, _ = flow_pipelines
    prior = load_prior(root / "flux", prompt="face", guidance_scale=2.0)
    assert prior.denoiser.mu == pytest.approx(1.15)  # the pipeline's default 1024 x 1024: 4096 tokens
    default_sigmas = prior.sigmas.clone()
    prior.set_image_size(H, W)  # 16 tokens: mu = 0.5 + (1.15 - 0.5) (16 - 256) / (4096 - 256)
    mu = 0.5 + 0.65 * (16 - 256) / 3840
    assert prior.denoiser.mu == pytest.approx(mu)
    k = torch.arange(1, 1001, dtype=torch.float64) / 1000
    shifted = torch.exp(torch.tensor(mu)) / (torch.exp(torch.tensor(mu)) + 1 / k - 1)
    torch.testing.assert_close(prior.sigmas.double(), (shifted / (1 - shifted)).clamp(max=999.0), rtol=1e-5, atol=0)
    assert not torch.allclose(prior.sigmas, default_sigmas) and prior.sigma_min == pytest.approx(float(prior.sigmas[0]))
    pipe = diffusers_pipes["flux"]
    z0 = latents(6, 1)
    seen, grid = trajectory(pipe, prompt="face", negative_prompt="", true_cfg_scale=2.0, num_inference_steps=3,
                            latents=pipe._pack_latents(z0, 1, 4, 8, 8))
    base = torch.linspace(1.0, 1 / 3, 3, dtype=torch.float64)
    expected = (torch.exp(torch.tensor(mu)) / (torch.exp(torch.tensor(mu)) + 1 / base - 1)).tolist() + [0.0]
    assert grid == pytest.approx(expected, abs=1e-6)
    assert prior.flow_times(3) == pytest.approx([0.999, *expected[1:]], abs=1e-6)
    seen = [pipe._unpack_latents(s, H, W, 2) for s in seen]
    velocity = prior.denoiser.guided_velocity(seen[0], torch.ones(1))
    torch.testing.assert_close(seen[1], seen[0] + (grid[1] - 1.0) * velocity, **NETWORK_TOLERANCE)
    for i in (1, 2):
        t, z = grid[i], seen[i]
        denoised = prior.denoise(z / (1 - t), torch.tensor([t / (1 - t)]))
        torch.testing.assert_close(seen[i + 1], z + (grid[i + 1] - t) * (z - denoised) / t, **NETWORK_TOLERANCE)


def test_flux_without_guidance_embedding_passes_none(flow_pipelines) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    _, parts = flow_pipelines
    transformer = tiny_flux_transformer(guidance_embeds=False)
    seen = []
    transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["guidance"]), with_kwargs=True)
    denoiser = FluxDenoiser(transformer, FlowMatchEulerDiscreteScheduler(), (parts["clip"], parts["t5"]),
                            (parts["clip_tokenizer"], parts["t5_tokenizer"]))
    assert denoiser.flow_times(2) == pytest.approx([0.999, 0.5, 0.0])  # shift 1: linspace(1, 1/2, 2)
    assert torch.isfinite(denoiser.denoise(latents(7), torch.tensor([1.0, 2.0]))).all() and seen == [None]


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_prompts_and_guidance_change_the_denoiser(flow_pipelines, name) -> None:
    root, _ = flow_pipelines
    prior = load_prior(root / name)
    assert prior.prompt == "" and prior.guidance_scale == 1.0
    z, sig = latents(8), torch.tensor([0.8, 0.8])
    plain = prior.denoise(z, sig)
    prior.set_prompt("cat")
    cat = prior.denoise(z, sig)
    prior.set_prompt("cat", guidance_scale=3.0)
    guided = prior.denoise(z, sig)
    assert (cat - plain).abs().max() > 1e-4 and (guided - cat).abs().max() > 1e-4
    dog = prior.encode_text("dog")
    with prior.text_conditioning(dog, None, 1.0):
        torch.testing.assert_close(prior.denoise(z, sig), load_prior(root / name, prompt="dog").denoise(z, sig),
                                   **NETWORK_TOLERANCE)
    assert prior.guidance_scale == 3.0
    with pytest.raises(ValueError, match="must have shape"), prior.text_conditioning(dog[:, :3]):
        pass


def test_text_embeddings_get_gradients_through_the_packing(flow_pipelines) -> None:
    """P2L tunes the packed embedding: the sequence rows and the pooled entries both reach the output."""
    root, _ = flow_pipelines
    prior = load_prior(root / "sd3", prompt="face")
    embeds = prior.encode_text("face").requires_grad_(True)
    with prior.text_conditioning(embeds, embeds, 1.0):
        (grad,) = torch.autograd.grad(prior.denoise(latents(11), torch.tensor([1.0, 1.0])).square().sum(), embeds)
    length, width, pooled = prior.denoiser.sequence_length, prior.denoiser.sequence_width, prior.denoiser.pooled_width
    assert grad[:, :length, :width].abs().sum() > 0 and grad[:, length, :pooled].abs().sum() > 0
    assert grad[:, length, pooled:].abs().sum() == 0  # the padding is never read


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_dtype_and_errors(flow_pipelines, name, tmp_path) -> None:
    root, _ = flow_pipelines
    prior = load_prior(root / name, dtype="bfloat16", device="cpu")
    assert prior.dtype == torch.bfloat16 and prior.denoiser.text_encoders[0].dtype == torch.bfloat16
    out = prior.denoise(latents(12), torch.tensor([1.0, 2.0]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    copy = tmp_path / name
    shutil.copytree(root / name, copy)
    index = json.loads((copy / "model_index.json").read_text())
    del index["text_encoder_2"]
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError) as err:
        load_prior(copy)
    assert "\n" not in str(err.value) and "text_encoder_2" in str(err.value) and str(copy) in str(err.value)


LATENT_METHODS = {
    "latent_dps": {"task": "random_inpainting"},
    "psld": {"task": "random_inpainting"},
    "resample": {"pixel_max_iters": 3, "latent_max_iters": 3, "interval": 2},
    "p2l": {"prompt_iterations": 1},
    "treg": {"adaptive_negation": False},  # its CLIP image features are SD v1's text width (768)
}


@pytest.mark.parametrize("name", ["sd3", "flux"])
@pytest.mark.parametrize("method", sorted(LATENT_METHODS))
def test_latent_methods_run_on_flow_priors(flow_pipelines, name, method) -> None:
    root, _ = flow_pipelines
    prior = load_prior(root / name, prompt="face")
    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(9)) * 2 - 1
    op = Inpainting(torch.ones(H, W).tril())
    y = op.measure(x, 0.05, torch.Generator().manual_seed(10))
    options = LATENT_METHODS[method]
    result = solve(y, op, prior, method=method, steps=4, seed=0, noise_sigma=0.05, progress=False, **options)
    assert result.image.shape == x.shape and torch.isfinite(result.image).all()


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_accelerated_flow_latent_prior_wraps_the_transformer(flow_pipelines, name) -> None:
    """``--channels-last`` / ``--compile`` reach the transformer of a latent flow prior, and the grid survives."""
    from priors.compiled import CompiledLatent, accelerated

    root, _ = flow_pipelines
    prior = load_prior(root / name)
    fast = accelerated(prior, channels_last=True)
    assert isinstance(fast, CompiledLatent) and fast.flow_times(4) == prior.flow_times(4)
    z, sig = latents(9), torch.tensor([0.5, 3.0])
    torch.testing.assert_close(fast.denoise(z, sig), prior.denoise(z, sig), **NETWORK_TOLERANCE)
