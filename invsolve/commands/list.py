"""``invsolve list``: the operators, methods and priors invsolve knows."""

from __future__ import annotations

import argparse
import inspect

import operators
from invsolve.method_choice import rule_lines
from priors.bundled import bundled

#: What ``--prior`` accepts besides bundled names.
PRIOR_SOURCES = (
    "a local diffusers folder: a UNet2DModel (config.json + weights) with scheduler_config.json, "
    "or a pipeline folder (model_index.json with unet/ and scheduler/)",
    "a Hugging Face hub id of such a model, e.g. google/ddpm-cifar10-32 (downloaded once into the hub cache)",
    "a latent pipeline folder or hub id: VQModel / AutoencoderKL with a UNet (LDM) or Stable Diffusion",
    "a rectified-flow folder: a UNet2DModel whose scheduler is FlowMatchEulerDiscreteScheduler (pixel flow prior)",
    "a Stable Diffusion 3 / 3.5 or FLUX.1 pipeline folder or hub id (latent flow prior)",
    "an ADM (guided-diffusion) checkpoint file: .pt, .pth or .safetensors, e.g. ffhq_10m.pt",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "list",
        help="list the available operators, methods and priors",
        description="List the forward operators, sampling methods and priors that invsolve knows.",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("operators (--operator NAME, arguments with --operator-arg KEY=VALUE):")
    for name, signature in operator_signatures().items():
        print(f"  {name}{signature}")
    print("methods (--method NAME, hyperparameters with --method-arg KEY=VALUE):")
    for name, line in method_lines().items():
        print(f"  {name:<12} {line}")
    print("default method (no --method): the first that fits the operator and prior")
    for line in rule_lines():
        print(f"  {line}")
    print("priors (--prior PATH_OR_ID):")
    for source in PRIOR_SOURCES:
        print(f"  {source}")
    for name, description in bundled_priors().items():
        print(f"  {name:<12} {description}")
    print("presets (--preset NAME, the published benchmark tasks):")
    for name in operators.presets():
        print(f"  {name}")
    return 0


def operator_signatures() -> dict[str, str]:
    """Registered operator names with their constructor arguments, e.g. ``(kernel_size=61, sigma=3.0)``."""
    signatures = {}
    for name in operators.available():
        parameters = list(inspect.signature(operators.get(name)).parameters.values())
        signatures[name] = "(" + ", ".join(_describe(p) for p in parameters) + ")"
    return signatures


def method_lines() -> dict[str, str]:
    """Registered method names with what they need and a one-line summary."""
    from invsolve import methods
    from invsolve.samplers import registered

    classes = registered()
    lines = {}
    for name, needs in methods().items():
        summary = getattr(classes[name], "summary", "")
        lines[name] = f"needs {needs or 'nothing'}" + (f"; {summary}" if summary else "")
    return lines


def bundled_priors() -> dict[str, str]:
    """Priors shipped with invsolve (``priors.bundled.bundled()``)."""
    return {name: "bundled" for name in bundled()}


def _describe(parameter: inspect.Parameter) -> str:
    if parameter.kind is inspect.Parameter.VAR_KEYWORD:
        return f"**{parameter.name}"
    if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
        return f"*{parameter.name}"
    if parameter.default is inspect.Parameter.empty:
        return parameter.name
    return f"{parameter.name}={parameter.default!r}"
