"""A diffusers rectified-flow pixel UNet (``UNet2DModel`` + ``FlowMatchEulerDiscreteScheduler``) as a prior."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from priors.diffusers_pixel import unet_layout
from priors.flow import VelocityPrior
from priors.vp import check_images, run_padded


class DiffusersFlowPixelPrior(VelocityPrior):
    r"""A ``UNet2DModel`` trained for rectified flow, seen as a VE denoiser ``D(x, sigma)``.

    Conventions of diffusers' ``FlowMatchEulerDiscreteScheduler``
    (``schedulers/scheduling_flow_match_euler_discrete.py``): ``scale_noise`` builds
    ``x_t = t eps + (1 - t) x0``, the network predicts ``v = eps - x0`` (``step`` moves
    ``x_t + (t' - t) v``), and it gets the timestep ``t T`` (``timesteps = sigmas *
    num_train_timesteps``, passed as is by the SD3 pipeline,
    ``pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py``).  The VE conversion is
    :func:`priors.flow.denoise_from_velocity`:

    .. math::
        t = \frac{\sigma}{1 + \sigma}, \qquad x_t = \frac{x}{1 + \sigma}, \qquad
        D(x, \sigma) = x_t - t\, v_\theta(x_t, t T).

    The scheduler's ``shift`` and ``num_train_timesteps`` give the levels (``sigmas``, the
    training sigmas) and the inference grid (``flow_times``).  The UNet's config is read as
    :class:`~priors.diffusers_pixel.DiffusersPixelPrior` reads it (:func:`unet_layout`): fully
    convolutional without attention (padded to the down-sampling factor and cropped back),
    ``data_shape = (C, sample_size, sample_size)`` with it, the nearest integer step for a
    ``learned`` time embedding; ``out_channels`` must equal ``in_channels``.  The network runs
    in its own device and dtype under the caller's grad mode; results have the input's dtype.

    * Dynamic (resolution-dependent) shifting and ``invert_sigmas`` are refused; the
      scheduler's other inference-grid options (Karras / exponential / beta sigmas,
      ``shift_terminal``) are not used.
    """

    def __init__(
        self,
        unet: Any,
        shift: float = 1.0,
        train_steps: int = 1000,
        data_range: tuple[float, float] | None = (-1.0, 1.0),
    ):
        layout = unet_layout(unet.config, variance_channels=False)
        self.unet = unet
        self.channels, self.downsampling = layout.channels, layout.downsampling
        self.integer_timesteps = layout.integer_timesteps
        super().__init__(self._velocity, layout.data_shape, shift=shift, train_steps=train_steps,
                         data_range=data_range)

    @classmethod
    def from_scheduler(cls, unet: Any, scheduler: Any) -> DiffusersFlowPixelPrior:
        """Wrap ``unet`` with a ``FlowMatchEulerDiscreteScheduler``'s ``shift`` and ``num_train_timesteps``."""
        config = scheduler.config
        if getattr(config, "use_dynamic_shifting", False):
            raise ValueError(
                "the flow scheduler uses dynamic (resolution-dependent) shifting, which needs a per-image mu; "
                "a pixel flow prior takes a static shift"
            )
        if getattr(config, "invert_sigmas", False):
            raise ValueError("the flow scheduler inverts its sigmas (t = 0 is noise); pixel flow priors need t = 1 noise")
        return cls(unet, shift=float(config.shift), train_steps=int(config.num_train_timesteps))

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return super().denoise(x, check_images(x, sigma, self.channels, self.data_shape))

    def _velocity(self, x_t: Tensor, t: Tensor) -> Tensor:
        """``v_theta(x_t, t T)`` for images of any allowed size, in ``x_t``'s device and dtype."""
        timestep = t.detach() * self.train_steps
        timestep = (timestep.round().long() if self.integer_timesteps else timestep.float()).to(self.device)
        return run_padded(lambda inputs: self.unet(inputs, timestep, return_dict=False)[0], x_t, self.downsampling,
                          self.device, self.dtype)

    def __repr__(self) -> str:
        shape = "any size" if self.data_shape is None else "x".join(map(str, self.data_shape))
        return (
            f"{type(self).__name__}(rectified flow, shift {self.shift:g}, {self.train_steps} steps, "
            f"sigma {self.sigma_min:.3g}..{self.sigma_max:.3g}, {shape}, "
            f"{sum(p.numel() for p in self.unet.parameters()) / 1e6:.2f}M params)"
        )
