"""Checks run by ``solve()`` before any work, each with a message that says what to do."""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any

import torch
from torch import Tensor

from operators.base import check_noise_sigma
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


#: Most sampler steps ``solve()`` accepts: published methods run at most a few thousand.
MAX_STEPS = 100_000


def check_count(name: str, value: Any, least: int = 1, most: int | None = None) -> int:
    """``value`` as an ``int`` when it is a whole number in ``[least, most]``; else a
    ``TypeError`` / ``ValueError`` naming ``name`` (``steps=2.7`` and ``True`` are refused)."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if value < least or (most is not None and value > most):
        bound = f"between {least} and {most}" if most is not None else f">= {least}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_method_options(cls: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The options of method class ``cls`` checked against its dataclass fields.

    Unknown names are refused, and every value must fit its field's annotation: a
    float field takes a finite number (converted to ``float``), an int field a whole
    number, a bool field ``True`` / ``False``, a str field text, and ``None`` only
    where the annotation allows it.  Numbers must be >= 0 (step sizes, weights,
    counts, noise levels), except the fields a method lists in an optional
    ``signed_options`` class attribute.  Fields of other types are passed through.
    """
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"method {cls.name!r} has no option(s) {', '.join(unknown)}; "
            f"its options are: {', '.join(sorted(fields)) or 'none'}"
        )
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):
        hints = {}
    signed = set(getattr(cls, "signed_options", ()))
    return {
        name: _check_option(f"method {cls.name!r} option {name}", value, hints.get(name), name in signed)
        for name, value in options.items()
    }


def _annotation_kinds(annotation: Any) -> tuple[set[type], bool]:
    """The plain kinds (bool, int, float, str) an annotation allows, and whether it allows None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
    else:
        members = (annotation,)
    return {member for member in members if member in (bool, int, float, str)}, type(None) in members


def _check_option(label: str, value: Any, annotation: Any, signed: bool) -> Any:
    kinds, optional = _annotation_kinds(annotation)
    if not kinds:
        return value
    if value is None:
        if optional:
            return None
    elif isinstance(value, bool):
        if bool in kinds:
            return value
    elif isinstance(value, numbers.Integral) and (int in kinds or float in kinds):
        value = int(value) if int in kinds else float(value)
        if value < 0 and not signed:
            raise ValueError(f"{label} must be >= 0, got {value}")
        return value
    elif isinstance(value, numbers.Real) and float in kinds:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{label} must be a finite number, got {value}")
        if value < 0 and not signed:
            raise ValueError(f"{label} must be >= 0, got {value}")
        return value
    elif isinstance(value, str) and str in kinds:
        return value
    wanted = {float: "a number", int: "a whole number", bool: "true or false", str: "text"}
    expected = " or ".join(wanted[kind] for kind in (float, int, bool, str) if kind in kinds and not
                           (kind is int and float in kinds))
    raise TypeError(f"{label} must be {expected}{' or None' if optional else ''}, got {value!r}")


def check_measurement(y: Tensor, noise_sigma: float, operator: Any) -> None:
    if not isinstance(y, Tensor):
        raise TypeError(f"measurement must be a torch.Tensor, got {type(y).__name__}")
    if not y.is_floating_point():
        raise ValueError(
            f"measurement has dtype {y.dtype}; images must be float in [-1, 1] "
            "(convert uint8 with invsolve.io.to_model_range)"
        )
    if y.ndim == 0 or y.numel() == 0:
        raise ValueError(f"measurement of shape {tuple(y.shape)} is empty; give a batch of at least one measurement")
    if not torch.isfinite(y).all():
        raise ValueError("measurement contains NaN or inf values")
    check_noise_sigma(noise_sigma)
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
    if is_latent_prior(prior):
        check_latent_shape(prior, x_shape)
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


def check_latent_shape(prior: Any, x_shape: tuple[int, ...]) -> tuple[int, ...]:
    """``prior.latent_shape(x_shape)``, checked against the latent-prior contract: a shape
    of positive ints with the batch axis first (``(N, C, h, w)`` for pixel batches ``(N, ...)``)."""
    shape = prior.latent_shape(tuple(x_shape))
    valid = (
        isinstance(shape, (tuple, list, torch.Size))
        and len(shape) >= 2
        and all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0 for n in shape)
        and shape[0] == x_shape[0]
    )
    if not valid:
        raise ValueError(
            f"{type(prior).__name__}.latent_shape({tuple(x_shape)}) returned {shape!r}; a latent prior's "
            f"latent_shape(pixel_shape) must return the latent batch shape with the batch axis first, "
            f"e.g. ({x_shape[0]}, 4, h, w) (see priors.LatentPrior)"
        )
    return tuple(int(n) for n in shape)
