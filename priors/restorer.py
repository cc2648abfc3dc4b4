r"""Restoration networks as priors (Hu, Delbracio, Milanfar and Kamilov, "A Restoration Network as
an Implicit Prior", ICLR 2024; official code ``wustl-cig/DRP``).

A restorer ``R`` is trained to undo one known degradation ``H`` (x2 bicubic super-resolution,
Gaussian denoising, ...): ``R(H x) \approx x``.  DRP (``invsolve/samplers/drp.py``) uses the
map ``x \mapsto R(H x)`` as an implicit prior for other inverse problems.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from priors.network_folder import build_network, read_config, save_network


class ResidualBlock(nn.Module):
    """``x + conv(relu(conv(x)))``, 3x3 convolutions of constant width."""

    def __init__(self, width: int):
        super().__init__()
        self.first = nn.Conv2d(width, width, 3, padding=1)
        self.second = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.second(F.relu(self.first(x)))


class ResidualUpsampler(nn.Module):
    r"""A small super-resolution network in the EDSR style (Lim et al., CVPRW 2017):

    .. math:: R(v) = \mathrm{up}_{\text{bicubic}}(v) + T\bigl(\mathrm{shuffle}(U(B(E v) + E v))\bigr)

    with ``E`` a 3x3 head, ``B`` ``blocks`` residual blocks of width ``width`` at the low
    resolution, ``U`` a 3x3 convolution to ``width * factor^2`` channels and a pixel shuffle,
    ``T`` a 3x3 tail: the network learns the detail that bicubic interpolation misses.
    (The official DRP uses SwinIR, 11.8 M parameters; this one is a bundle-sized stand-in.)
    """

    def __init__(self, factor: int = 2, channels: int = 3, width: int = 48, blocks: int = 6):
        super().__init__()
        self.arguments = {"factor": factor, "channels": channels, "width": width, "blocks": blocks}
        self.factor = factor
        self.head = nn.Conv2d(channels, width, 3, padding=1)
        self.body = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)))
        self.up = nn.Sequential(nn.Conv2d(width, width * factor**2, 3, padding=1), nn.PixelShuffle(factor))
        self.tail = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # start at bicubic upsampling
        nn.init.zeros_(self.tail.bias)

    def forward(self, v: Tensor) -> Tensor:
        base = F.interpolate(v, scale_factor=self.factor, mode="bicubic", align_corners=False)
        features = self.head(v)
        return base + self.tail(self.up(self.body(features) + features))


#: Network classes a saved restorer folder may name.
ARCHITECTURES: dict[str, type[nn.Module]] = {"ResidualUpsampler": ResidualUpsampler}


class RestorerPrior:
    r"""A restoration network with the degradation it inverts (prior kind ``"restorer"``).

    **Contract of the wrapped module.** ``network(v)`` takes a batch ``v = H(x)`` (images
    in [-1, 1], shaped as ``H``'s output, float) and returns the restored ``x`` (shaped as
    ``H``'s input, in [-1, 1]); it must be deterministic (eval mode).  ``degradation`` names
    ``H`` as an operator spec, ``{"operator": NAME, **arguments}`` for ``operators.build``
    (default: the identity, i.e. a denoiser; then ``noise_sigma`` should say which level),
    or is any linear operator object with ``forward`` / ``adjoint``.  ``noise_sigma``
    (on [-1, 1]) is the noise the network was trained to remove from ``H x``, for the record.

    :meth:`restore` applies ``R``; DRP builds ``H`` from :attr:`degradation` and applies
    ``R(H x)``.  Methods that need a diffusion denoiser refuse this prior and vice versa.
    """

    prior_kind = "restorer"
    data_shape = None
    data_range = None

    def __init__(self, network: nn.Module, degradation: Any = None, noise_sigma: float = 0.0):
        if not callable(network):
            raise TypeError(f"network must be a callable torch module, got {type(network).__name__}")
        if degradation is not None and not isinstance(degradation, dict) and not hasattr(degradation, "adjoint"):
            raise TypeError(
                "degradation must be None (identity), an operator spec {'operator': NAME, ...} "
                f"or a linear operator with forward and adjoint; got {type(degradation).__name__}"
            )
        if isinstance(degradation, dict) and "operator" not in degradation:
            raise ValueError("a degradation spec needs the key 'operator' (a name of operators.available())")
        self.network = network
        self.degradation = degradation
        self.noise_sigma = float(noise_sigma)

    @property
    def device(self) -> torch.device | None:
        parameter = next(iter(getattr(self.network, "parameters", lambda: iter(()))()), None)
        return None if parameter is None else parameter.device

    @property
    def dtype(self) -> torch.dtype | None:
        parameter = next(iter(getattr(self.network, "parameters", lambda: iter(()))()), None)
        return None if parameter is None else parameter.dtype

    def restore(self, v: Tensor) -> Tensor:
        """``R(v)`` without gradient, in the dtype of ``v``."""
        dtype = self.dtype or v.dtype
        with torch.no_grad():
            return self.network(v.to(dtype)).to(v.dtype)

    def save(self, folder: str | os.PathLike, **card: Any) -> None:
        """Write the restorer folder (``config.json`` + ``model.safetensors``); the degradation must be a spec."""
        if self.degradation is not None and not isinstance(self.degradation, dict):
            raise ValueError("only a restorer whose degradation is a spec {'operator': NAME, ...} can be saved")
        save_network(folder, self.network, {
            "invsolve_prior": "restorer", "arguments": getattr(self.network, "arguments", {}),
            "degradation": self.degradation, "noise_sigma": self.noise_sigma, **card,
        })

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> RestorerPrior:
        """Load a folder written by :meth:`save`."""
        config = read_config(folder)
        if config is None or config["invsolve_prior"] != "restorer":
            raise ValueError(f"{folder} is not a restorer folder (config.json with \"invsolve_prior\": \"restorer\")")
        network = build_network(folder, config, ARCHITECTURES, device, dtype)
        return cls(network, config.get("degradation"), config.get("noise_sigma", 0.0))

    def __repr__(self) -> str:
        return f"RestorerPrior({type(self.network).__name__}, degradation={self.degradation!r})"
