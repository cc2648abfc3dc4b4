"""A diffusers DDPM / VP pixel-space UNet seen as a variance-exploding denoiser."""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor

from priors.vp import VPDenoiser

SUPPORTED_TIME_EMBEDDINGS = ("positional", "learned")


def _uses_attention(config: Any) -> bool:
    """Whether a UNet2DModel config has attention layers (which tie it to one image size)."""
    blocks = tuple(config.down_block_types) + tuple(config.up_block_types)
    mid_attention = config.mid_block_type is not None and getattr(config, "add_attention", True)
    return mid_attention or any("Attn" in name for name in blocks)


class UNetLayout(NamedTuple):
    """What a ``UNet2DModel`` config says about its inputs (:func:`unet_layout`)."""

    channels: int
    data_shape: tuple[int, int, int] | None
    downsampling: int
    integer_timesteps: bool


def unet_layout(config: Any, variance_channels: bool = True) -> UNetLayout:
    """The image channels, the fixed ``data_shape`` (``None`` without attention: any size), the
    down-sampling factor and whether timesteps are integers (``learned`` embedding) of an
    unconditional ``UNet2DModel`` config.  Outputs may carry as many learned-variance channels
    again when ``variance_channels``; Fourier-embedded and class-conditional UNets are refused."""
    if config.time_embedding_type not in SUPPORTED_TIME_EMBEDDINGS:
        raise ValueError(
            f"time_embedding_type {config.time_embedding_type!r} is not a DDPM timestep embedding "
            f"(supported: {', '.join(SUPPORTED_TIME_EMBEDDINGS)}); Fourier-embedded UNets are "
            "continuous-time score-SDE models, not DDPM / VP models"
        )
    if config.num_class_embeds is not None or config.class_embed_type is not None:
        raise ValueError("class-conditional UNet2DModels are not supported; use an unconditional model")
    channels, out_channels = config.in_channels, config.out_channels
    allowed = (channels, 2 * channels) if variance_channels else (channels,)
    if out_channels not in allowed:
        wanted = f"{channels} (or {2 * channels} with learned variances)" if variance_channels else f"{channels}"
        raise ValueError(f"the UNet maps {channels} channels to {out_channels}; a denoiser needs {wanted}")
    data_shape = None
    if _uses_attention(config) and config.sample_size is not None:
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        data_shape = (channels, int(height), int(width))
    downsampling = 2 ** (len(config.block_out_channels) - 1)
    return UNetLayout(channels, data_shape, downsampling, config.time_embedding_type == "learned")


class DiffusersPixelPrior(VPDenoiser):
    r"""A discrete-time DDPM / VP diffusers ``UNet2DModel`` as a VE denoiser ``D(x, sigma)``.

    The conversion is :class:`~priors.vp.VPDenoiser`'s (Ho et al., NeurIPS 2020;
    Karras et al., NeurIPS 2022, App. C.3):

    .. math::
        \sigma_t = \sqrt{(1 - \bar\alpha_t) / \bar\alpha_t}, \qquad
        x_{vp} = x / \sqrt{1 + \sigma^2},

    the fractional timestep linear in ``log sigma_t`` over the exact ``alphas_cumprod``
    table, and ``epsilon`` / ``v_prediction`` / ``sample`` outputs turned into the
    posterior mean.  This class reads the rest from the UNet's config:
    learned-variance models (``out_channels = 2 * in_channels``, Nichol & Dhariwal
    2021) drop the variance channels; a UNet without attention layers is fully
    convolutional (``data_shape = None``; inputs are reflect-padded to a multiple of
    the down-sampling factor and cropped back), one with attention has
    ``data_shape = (C, sample_size, sample_size)``; a ``learned`` (lookup-table) time
    embedding gets the nearest integer step.  Fourier-embedded (score-SDE) and
    class-conditional UNets are rejected.

    Pixel images lie in ``data_range = (-1, 1)``; :meth:`DiffusersPixelPrior.from_scheduler` takes the
    scheduler's ``clip_sample`` / ``clip_sample_range`` (DDPMScheduler clamps its
    ``x0`` prediction to ``[-r, r]`` when set), so every method clamps on such a prior
    as diffusers' own sampler does.  A UNet used on latents (inside a latent prior)
    passes ``data_range=None``.
    """

    def __init__(
        self,
        unet: Any,
        alphas_cumprod: Tensor,
        prediction_type: str = "epsilon",
        data_range: tuple[float, float] | None = (-1.0, 1.0),
        clip_sample: bool = False,
    ):
        layout = unet_layout(unet.config)
        super().__init__(
            unet,
            alphas_cumprod,
            prediction_type,
            channels=layout.channels,
            data_shape=layout.data_shape,
            downsampling=layout.downsampling,
            integer_timesteps=layout.integer_timesteps,
            data_range=data_range,
            clip_sample=clip_sample,
        )

    @classmethod
    def from_scheduler(cls, unet: Any, scheduler: Any) -> DiffusersPixelPrior:
        """Wrap ``unet`` with a diffusers scheduler's ``alphas_cumprod``, ``prediction_type`` and clamping.

        With ``clip_sample`` the data range is ``[-clip_sample_range, clip_sample_range]``
        (diffusers' default range is 1) and the prior clamps as the scheduler does.
        """
        config = scheduler.config
        if getattr(config, "clip_sample", False):
            bound = float(getattr(config, "clip_sample_range", 1.0))
            return cls(unet, scheduler.alphas_cumprod, config.prediction_type, (-bound, bound), clip_sample=True)
        return cls(unet, scheduler.alphas_cumprod, config.prediction_type)

    def _call_unet(self, inputs: Tensor, timestep: Tensor) -> Tensor:
        """The raw network output for padded ``inputs`` (conditional subclasses add their inputs here)."""
        return self.unet(inputs, timestep, return_dict=False)[0]
