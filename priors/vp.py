"""A discrete-time DDPM / VP noise-prediction network seen as a variance-exploding denoiser."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from priors.base import Prior, expand_sigma

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def learned_range_variance(fraction: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    r"""VE variance of the ancestral step ``sigma -> sigma_next`` under a learned-range network.

    Nichol & Dhariwal ("Improved DDPM", ICML 2021, eq. 15; guided-diffusion
    ``p_mean_variance`` with ``LEARNED_RANGE``) interpolate the log variance of the
    step ``t -> s`` between the posterior variance ``beta~`` and ``beta``,
    ``log var = f log beta + (1 - f) log beta~``, with ``f = (v + 1) / 2`` from the
    network's variance channels ``v``.  For the (respaced) step from ``abar_t`` to
    ``abar_s``, ``beta = 1 - abar_t / abar_s`` and ``beta~ = beta (1 - abar_s) / (1 - abar_t)``;
    a VP state at level ``s`` is ``sqrt(abar_s)`` times the VE one, so the VE variance is
    ``var / abar_s``.  With ``abar = 1 / (1 + sigma^2)``:

    .. math::
        \beta / \bar\alpha_s = \frac{(\sigma^2 - \sigma'^2)(1 + \sigma'^2)}{1 + \sigma^2}, \qquad
        \tilde\beta / \bar\alpha_s = \sigma'^2 (1 - \sigma'^2 / \sigma^2),

    the second being the fixed-small (DDIM ``eta = 1``) variance.  At ``sigma_next = 0``
    the step adds no noise (guided-diffusion's ``t == 0``) and the variance is 0.
    ``sigma`` and ``sigma_next`` broadcast against ``fraction``.
    """
    large = (sigma**2 - sigma_next**2) * (1 + sigma_next**2) / (1 + sigma**2)
    small = sigma_next**2 * (1 - sigma_next**2 / sigma**2)
    tiny = torch.finfo(fraction.dtype).tiny
    log_variance = fraction * large.clamp_min(tiny).log() + (1 - fraction) * small.clamp_min(tiny).log()
    return torch.where(sigma_next > 0, log_variance.exp(), torch.zeros_like(log_variance))


def check_images(x: Tensor, sigma: Tensor, channels: int, data_shape: tuple[int, ...] | None) -> Tensor:
    """Check images ``x`` of shape ``(N, channels, H, W)`` (``data_shape`` when fixed) and return
    ``sigma`` as a non-negative tensor of shape ``(N,)`` in ``x``'s device and dtype."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"the prior expects images (N, {channels}, H, W), got shape {tuple(x.shape)}")
    if data_shape is not None and tuple(x.shape[1:]) != data_shape:
        raise ValueError(
            f"this network has attention layers and models images of shape {data_shape}, "
            f"got {tuple(x.shape[1:])}; resize the input to that size"
        )
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must have shape ({x.shape[0]},), got {tuple(sigma.shape)}")
    if (sigma < 0).any():
        raise ValueError("sigma must be non-negative")
    return sigma


def run_padded(
    call: Callable[[Tensor], Tensor], x: Tensor, downsampling: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """``call(inputs)`` on ``x`` moved to the network's ``device`` and ``dtype`` and padded (reflect,
    or replicate when too small) to a multiple of ``downsampling``; the output is cropped back to
    ``x``'s height and width and returned in ``x``'s device and dtype."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % downsampling, -width % downsampling
    inputs = x.to(device=device, dtype=dtype)
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        inputs = F.pad(inputs, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), mode=mode)
    out = call(inputs)
    top, left = pad_h // 2, pad_w // 2
    return out[..., top : top + height, left : left + width].to(device=x.device, dtype=x.dtype)


class VPDenoiser(Prior):
    r"""Any DDPM / VP network ``net(x_vp, t)`` as a VE denoiser ``D(x, sigma)``.

    A DDPM (Ho et al., NeurIPS 2020) with cumulative products ``abar_t`` noises
    ``x_vp = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``; dividing by ``sqrt(abar_t)``
    gives the variance-exploding form ``x = x0 + sigma_t eps`` with

    .. math::
        \sigma_t = \sqrt{(1 - \bar\alpha_t) / \bar\alpha_t}, \qquad
        x_{vp} = x / \sqrt{1 + \sigma^2}

    (Karras et al., "Elucidating the Design Space of Diffusion-Based Generative
    Models", NeurIPS 2022, App. C.3).  For a requested ``sigma`` the network gets
    ``x_vp`` and the fractional timestep found by linear interpolation of ``t``
    against ``log sigma_t`` in the exact ``alphas_cumprod`` table (clamped to the
    table's ends); its output becomes the posterior mean ``x0``:

    * ``epsilon``: ``D = x - sigma * eps``;
    * ``v_prediction`` (Salimans & Ho, ICLR 2022): ``D = sqrt(abar) x_vp - sqrt(1 - abar) v``
      with ``abar = 1 / (1 + sigma^2)``;
    * ``sample``: ``D`` is the output.

    ``denoise`` uses only the first ``channels`` output channels, so learned-variance
    networks (``2 * channels`` outputs, Nichol & Dhariwal 2021) drop their variance
    channels there.  Such a network declared with ``learned_variance=True`` also offers
    :meth:`denoise_with_variance`, the posterior mean together with the variance of the
    ancestral step that its variance channels predict (learned range,
    :func:`learned_range_variance`), from the same network call; samplers whose official
    code samples with that variance (DPS, MCG) use it when ``learned_variance`` is set and
    keep the fixed-small variance otherwise.  With ``data_shape = None`` the network is taken as fully
    convolutional: inputs of any height and width are reflect-padded to a multiple
    of ``downsampling`` and cropped back; otherwise inputs must have ``data_shape``.
    Outside ``[sigma_min, sigma_max]`` the timestep is clamped to the table's end
    while ``x_vp`` and the conversion keep the requested sigma; a zero-terminal-SNR
    table (``abar_T = 0``) drops its infinite last level; ``integer_timesteps``
    rounds ``t`` to the nearest step (lookup-table time embeddings).  The network
    (attribute ``unet``) runs in its own device and dtype, under the caller's grad
    mode (samplers backprop through it); the result has the input's dtype.
    ``sigmas`` is the table of the training timesteps' noise levels (methods take
    their official timestep spacing from it); ``data_range`` and ``clip_sample``
    are as in :class:`~priors.base.Prior` (unbounded and off unless given).
    Subclasses say how the network is called in :meth:`_call_unet`.
    """

    def __init__(
        self,
        unet: Any,
        alphas_cumprod: Tensor,
        prediction_type: str = "epsilon",
        *,
        channels: int,
        data_shape: tuple[int, ...] | None,
        downsampling: int = 1,
        integer_timesteps: bool = False,
        data_range: tuple[float, float] | None = None,
        clip_sample: bool = False,
        learned_variance: bool = False,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type {prediction_type!r} is not supported; use one of {', '.join(PREDICTION_TYPES)}"
            )
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().reshape(-1)
        abar = abar[: int((abar > 0).cumprod(0).sum())]
        if abar.numel() < 2 or (abar > 1).any():
            raise ValueError("alphas_cumprod must hold at least two values in (0, 1]")
        sigmas = ((1 - abar) / abar).sqrt()
        if not (sigmas[1:] > sigmas[:-1]).all() or sigmas[0] <= 0:
            raise ValueError("alphas_cumprod must decrease strictly from a value below 1")
        self.unet = unet
        self.prediction_type = prediction_type
        self.alphas_cumprod = abar
        self.sigmas = sigmas
        self.log_sigmas = sigmas.log()
        self.sigma_min = float(sigmas[0])
        self.sigma_max = float(sigmas[-1])
        self.channels = channels
        self.downsampling = downsampling
        self.data_shape = data_shape
        self.integer_timesteps = integer_timesteps
        if data_range is not None and not data_range[0] < data_range[1]:
            raise ValueError(f"data_range needs low < high, got {tuple(data_range)}")
        if clip_sample and data_range is None:
            raise ValueError("clip_sample needs a data_range to clamp to")
        self.data_range = None if data_range is None else (float(data_range[0]), float(data_range[1]))
        self.clip_sample = bool(clip_sample)
        self.learned_variance = bool(learned_variance)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def sigma_to_timestep(self, sigma: Tensor) -> Tensor:
        """Fractional DDPM timestep of each ``sigma``: ``t`` linear in ``log sigma_t`` (float64, CPU)."""
        log_sigma = torch.as_tensor(sigma).detach().to("cpu", torch.float64).log()
        log_sigma = log_sigma.clamp(self.log_sigmas[0], self.log_sigmas[-1])
        upper = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, len(self.log_sigmas) - 1)
        lower = upper - 1
        fraction = (log_sigma - self.log_sigmas[lower]) / (self.log_sigmas[upper] - self.log_sigmas[lower])
        return lower + fraction

    def _check_input(self, x: Tensor, sigma: Tensor) -> Tensor:
        return check_images(x, sigma, self.channels, self.data_shape)

    def _call_unet(self, inputs: Tensor, timestep: Tensor) -> Tensor:
        """The raw network output for padded ``inputs`` at ``timestep`` (on the network's device)."""
        return self.unet(inputs, timestep)

    def _network(self, x_vp: Tensor, timestep: Tensor, channels: int | None = None) -> Tensor:
        """The first ``channels`` (default: the image's) output channels of the network for
        ``x_vp`` of any size, in ``x_vp``'s device and dtype."""
        timestep = (timestep.round().long() if self.integer_timesteps else timestep.float()).to(self.device)
        out = run_padded(lambda inputs: self._call_unet(inputs, timestep), x_vp, self.downsampling, self.device,
                         self.dtype)
        channels = self.channels if channels is None else channels
        if out.shape[1] < channels:
            raise ValueError(
                f"the network returns {out.shape[1]} channels; learned_variance needs {channels} "
                f"(the image's {self.channels} and as many variance channels)"
            )
        return out[:, :channels]

    def _posterior_mean(self, x: Tensor, x_vp: Tensor, s: Tensor, out: Tensor) -> Tensor:
        if self.prediction_type == "epsilon":
            return x - s * out
        if self.prediction_type == "v_prediction":
            return (x_vp - s * out) / (1 + s**2).sqrt()
        return out

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = self._check_input(x, sigma)
        s = expand_sigma(sigma, x)
        x_vp = x / (1 + s**2).sqrt()
        return self._posterior_mean(x, x_vp, s, self._network(x_vp, self.sigma_to_timestep(sigma)))

    def denoise_with_variance(self, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
        """``D(x, sigma)`` and the per-entry VE variance of the ancestral step to ``sigma_next``
        (shape ``(N,)`` like ``sigma``) that the network's variance channels predict, from one call.

        Needs ``learned_variance=True`` (a network with ``2 * channels`` outputs whose second
        half is guided-diffusion's learned-range ``v`` in [-1, 1]); see :func:`learned_range_variance`.
        """
        if not self.learned_variance:
            raise ValueError(
                f"{type(self).__name__} was not declared with learned_variance=True; its network predicts no variance"
            )
        sigma = self._check_input(x, sigma)
        s, s_next = expand_sigma(sigma, x), expand_sigma(torch.as_tensor(sigma_next).to(sigma).expand_as(sigma), x)
        x_vp = x / (1 + s**2).sqrt()
        out = self._network(x_vp, self.sigma_to_timestep(sigma), 2 * self.channels)
        mean, v = out[:, : self.channels], out[:, self.channels :]
        return self._posterior_mean(x, x_vp, s, mean), learned_range_variance((v + 1) / 2, s, s_next)

    def __repr__(self) -> str:
        shape = "any size" if self.data_shape is None else "x".join(map(str, self.data_shape))
        return (
            f"{type(self).__name__}({self.prediction_type}, {len(self.sigmas)} levels, "
            f"sigma {self.sigma_min:.3g}..{self.sigma_max:.3g}, {shape}, "
            f"{sum(p.numel() for p in self.unet.parameters()) / 1e6:.2f}M params)"
        )
