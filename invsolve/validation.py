"""Checks run by ``solve()`` before any work, each with a message that says what to do."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from priors.base import is_latent_prior, is_prior, is_proximal_prior, is_restorer_prior


def capabilities(operator: Any, prior: Any) -> frozenset[str]:
    """What the operator and prior offer, in the vocabulary of ``Method.needs``."""
    caps = set(getattr(operator, "capabilities", {"forward", "vjp"}))
    if is_restorer_prior(prior) or is_proximal_prior(prior):
        caps.add("restorer" if is_restorer_prior(prior) else "proximal")
    else:
        caps.add("latent" if is_latent_prior(prior) else "pixel")
    if getattr(prior, "text_conditioned", False):
        caps.add("text")
    return frozenset(caps)


def missing_needs(needs: tuple[str, ...], caps: frozenset[str]) -> list[str]:
    """The entries of ``needs`` (``"a|b"`` = either) that ``caps`` does not cover."""
    return [need for need in needs if not set(need.split("|")) & caps]


def check_methods_fit(names: list[str], classes: dict[str, Any], operator: Any, prior: Any) -> None:
    """Raise a ``ValueError`` naming what is missing, and the methods that would work,
    when any method in ``names`` needs what the operator or the prior lacks."""
    caps = capabilities(operator, prior)
    for name in names:
        missing = missing_needs(classes[name].needs, caps)
        if missing:
            working = sorted(other for other, cls in classes.items() if not missing_needs(cls.needs, caps))
            raise ValueError(
                f"method {name!r} needs {', '.join(m.replace('|', ' or ') for m in missing)}, which "
                f"{type(operator).__name__} with {type(prior).__name__} does not offer; "
                f"methods that work here: {', '.join(working) or 'none'}"
            )


def check_prior(prior: Any) -> None:
    if not (is_prior(prior) or is_restorer_prior(prior) or is_proximal_prior(prior)):
        raise TypeError(
            f"{type(prior).__name__} is not a prior: a prior needs denoise(x, sigma), "
            "sigma_min and sigma_max (see priors.Prior), or is a restorer / proximal prior "
            "(priors.RestorerPrior, priors.LPNPrior)"
        )


def check_measurement(y: Tensor, noise_sigma: float, operator: Any) -> None:
    if not isinstance(y, Tensor):
        raise TypeError(f"measurement must be a torch.Tensor, got {type(y).__name__}")
    if not y.is_floating_point():
        raise ValueError(
            f"measurement has dtype {y.dtype}; images must be float in [-1, 1] "
            "(convert uint8 with invsolve.io.to_model_range)"
        )
    if not torch.isfinite(y).all():
        raise ValueError("measurement contains NaN or inf values")
    if noise_sigma < 0:
        raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma}")
    if getattr(operator, "output_in_image_range", False):
        margin = 0.5 + 6 * noise_sigma
        lo, hi = y.min().item(), y.max().item()
        if lo < -1 - margin or hi > 1 + margin:
            raise ValueError(
                f"measurement values span [{lo:.3g}, {hi:.3g}], far outside [-1, 1]: invsolve "
                "expects images in [-1, 1]; convert [0, 255] with x / 127.5 - 1 and [0, 1] "
                "with 2 * x - 1 (invsolve.io.to_model_range)"
            )


def infer_x_shape(y: Tensor, operator: Any, prior: Any, x_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """Shape of the unknown for one measurement batch, checked against the operator."""
    if x_shape is None:
        implied = operator.input_shape(tuple(y.shape)) if hasattr(operator, "input_shape") else None
        data_shape = getattr(prior, "data_shape", None)
        if implied is not None:
            x_shape = implied
        elif data_shape is not None and not is_latent_prior(prior):
            x_shape = (y.shape[0], *data_shape)
        else:
            x_shape = tuple(y.shape)
    x_shape = tuple(x_shape)
    try:
        expected = tuple(operator.output_shape(x_shape))
    except ValueError as err:
        raise ValueError(f"the operator rejects inputs of shape {x_shape}: {err}") from None
    if expected != tuple(y.shape):
        raise ValueError(
            f"measurement shape {tuple(y.shape)} does not match the operator: "
            f"{type(operator).__name__} maps inputs {x_shape} to {expected}"
        )
    needs_tiling(prior, x_shape)
    return x_shape


def needs_tiling(prior: Any, x_shape: tuple[int, ...]) -> bool:
    """Whether a fixed-size image prior must be tiled (:class:`priors.Tiled`) to model an
    unknown of batch shape ``x_shape`` (pixels).

    The prior's ``data_shape`` is compared with one item of the unknown, in latent
    units for a latent prior (``prior.latent_shape(x_shape)``).  Any other height or
    width, larger or smaller, is tiled: axes longer than the prior's size are covered
    by overlapping tiles, shorter ones are reflected up to it and cropped back.  A
    ``ValueError`` says when tiling cannot help (other channels, or non-image data).
    """
    data_shape = getattr(prior, "data_shape", None)
    if data_shape is None:
        return False
    data_shape = tuple(data_shape)
    latent = is_latent_prior(prior)
    item = tuple(prior.latent_shape(tuple(x_shape)))[1:] if latent else tuple(x_shape[1:])
    if item == data_shape:
        return False
    if len(item) == 3 and len(data_shape) == 3 and item[0] == data_shape[0]:
        return True
    kind = "latents" if latent else "data"
    hint = (
        f"; the unknown needs {data_shape[0]} channels" if len(item) == len(data_shape) == 3
        else "; only image priors (C, H, W) adapt to other sizes"
    )
    raise ValueError(f"the prior models {kind} of shape {data_shape}, the unknown's is {item}{hint}")
