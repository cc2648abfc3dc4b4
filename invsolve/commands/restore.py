"""``invsolve restore``: restore one image with a diffusion prior.

Either simulate the measurement from a clean image (``INPUT``) or take an already
degraded one (``--measurement FILE``), then sample a restoration with ``solve()``.
Every output path is checked before any work, and nothing non-finite is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

import operators
import priors
from invsolve import io
from invsolve.api import ON_NAN, solve
from invsolve.commands._arguments import (
    add_network_arguments,
    add_task_arguments,
    network_dtype,
    parse_key_values,
    resolve_device,
    whole_number,
)
from invsolve.commands._estimate import announce
from invsolve.method_choice import choose_method
from invsolve.metrics import psnr
from invsolve.resources import check_working_set
from invsolve.result import Result
from invsolve.samplers import method_class
from invsolve.validation import MAX_STEPS, check_method_options, infer_x_shape
from operators.base import Operator
from priors.compiled import load_accelerated

#: The simulated measurement noise uses ``seed + MEASUREMENT_SEED_OFFSET`` so that it
#: is independent of the sampler's noise, which uses ``seed``.
MEASUREMENT_SEED_OFFSET = 1
#: Measurement noise std on the [-1, 1] scale when neither --noise-sigma nor --preset gives one.
DEFAULT_NOISE_SIGMA = 0.05


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "restore",
        help="restore an image (simulated or given measurement) with a diffusion prior",
        description=(
            "Restore an image. With INPUT (a clean image) the measurement y = A(x) + noise is simulated "
            "and written beside the output as OUT.measurement.png; with --measurement FILE an already "
            "degraded image is restored and INPUT, if given, is only the reference for PSNR."
        ),
    )
    parser.add_argument("input", nargs="?", metavar="INPUT", help="clean image (may be omitted with --measurement)")
    add_task_arguments(parser, preset_note='its random mask or kernel is drawn from --seed')
    parser.add_argument(
        "--prior", default="natural-64", metavar="PATH_OR_ID",
        help="diffusers folder, bundled name or hub id (default: the bundled natural-64)",
    )
    parser.add_argument(
        "--method", default=None,
        help="sampling method (default: the one that fits the operator, e.g. ddrm with an SVD; see 'invsolve list')",
    )
    parser.add_argument(
        "--method-arg", action="append", default=[], metavar="KEY=VALUE",
        help="method hyperparameter, repeatable (e.g. step_size=0.5)",
    )
    parser.add_argument(
        "--steps", type=whole_number(1, MAX_STEPS), default=None, help="sampler steps (default: the method's paper value)"
    )
    parser.add_argument(
        "--seed", type=int, default=0,
        help=f"seed of the sampler (the simulated noise uses seed + {MEASUREMENT_SEED_OFFSET}); default 0",
    )
    parser.add_argument(
        "--num-samples", type=whole_number(1), default=1,
        help="posterior samples; with more than one, OUT is their mean and OUT.sampleK.png each sample",
    )
    parser.add_argument(
        "--std", action="store_true",
        help="with --num-samples K >= 2, also write OUT.std.png: the per-pixel standard deviation of the samples",
    )
    parser.add_argument(
        "--size", type=whole_number(1), default=None, metavar="S",
        help="centre-crop and resize INPUT to S x S (default: keep its size; fixed-size priors are tiled)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--measurement", metavar="FILE", help="an already degraded image to restore")
    parser.add_argument("--output", "-o", required=True, metavar="OUT.png", help="where to write the restoration")
    parser.add_argument("--compare", action="store_true", help="also write OUT.compare.png: clean | measured | restored")
    parser.add_argument(
        "--on-nan", choices=ON_NAN, default="raise",
        help="when the samples become NaN or infinite: stop with an error (raise, default) or write the "
        "last finite state with a warning (warn)",
    )
    add_network_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    method_options = parse_key_values(args.method_arg, "--method-arg")
    if args.method is not None:
        method_options = check_method_options(method_class(args.method), method_options)
    operator, args.noise_sigma = _operator_and_noise(args)
    device = resolve_device(args.device)

    prior = load_accelerated(
        args.prior, device, network_dtype(args.dtype), compile=args.compile, channels_last=args.channels_last
    )
    mode = priors.image_mode(prior)
    notes = []
    clean = None
    _check_memory(args, operator, prior, mode, device)
    if args.input:
        size = None if args.size is None else (args.size, args.size)
        clean = io.load_image(args.input, size=size, mode=mode).to(device)
    y = _measurement(args, operator, clean, mode, device)
    try:
        x_shape = infer_x_shape(y, operator, prior, None if clean is None else tuple(clean.shape))
    except ValueError as err:
        source = f"--measurement {args.measurement}" if args.measurement else "the simulated measurement"
        raise ValueError(f"{source}: {err}") from None

    method = args.method
    if method is None:
        method, reason = choose_method(operator, prior)
        print(f"method: {method}, because {reason} (another with --method; the rule: 'invsolve list')")
        method_options = check_method_options(method_class(method), method_options)
    announce(y, operator, prior, method, args.steps, args.num_samples, args.noise_sigma, x_shape, method_options,
             device)
    result = solve(
        y, operator, prior, method=method, steps=args.steps, seed=args.seed,
        num_samples=args.num_samples, noise_sigma=args.noise_sigma, progress=not args.quiet,
        x_shape=x_shape, on_nan=args.on_nan, **method_options,
    )
    if not bool(torch.isfinite(result.samples).all()):
        raise FloatingPointError(f"{result.method} diverged at its first step: there is no finite state to write")
    if result.diverged:
        notes.append(f"{result.method} diverged (--on-nan warn): the outputs hold its last finite state")
    if args.compile and prior.status != "compiled":
        notes.append(f"the network ran uncompiled: {prior.status}")
    if "tiling" in result.options:
        height, width = result.options["tiling"]["tile"]
        notes.append(f"the prior is fixed at {height}x{width}; the image was restored in overlapping tiles")
    restored = (result.mean if args.num_samples > 1 else result.image).clamp(-1, 1)
    written = _write_outputs(args, operator, result, restored, clean, y, notes)
    for note in notes:
        print(f"note: {note}")
    print(_summary(result, restored, clean, y, written))
    return 0


def _write_outputs(
    args: argparse.Namespace, operator: Operator, result: Result, restored: Tensor, clean: Tensor | None,
    y: Tensor, notes: list[str],
) -> list[str]:
    """Write OUT and its siblings; returns what was written, as the summary line shows it."""
    written = [io.save_image(restored, args.output)]
    if not args.measurement:
        if _is_image(operator, y):
            written.append(io.save_image(y, io.sibling_path(args.output, "measurement")))
        else:
            notes.append(f"measurement not written: operator {_task(args)} does not output an image")
    if args.num_samples > 1:
        for k, sample in enumerate(result.samples):
            written.append(io.save_image(sample, io.sibling_path(args.output, f"sample{k}")))
    shown = [str(path) for path in written]
    if args.std:
        path, scale = _write_std_map(result.samples, io.sibling_path(args.output, "std"))
        shown.append(f"{path} (std of the {args.num_samples} samples; white = {scale:.4g} on the [-1, 1] scale)")
    if args.compare:
        panels = [image for image in (clean, y if _is_image(operator, y) else None, restored) if image is not None]
        shown.append(str(io.side_by_side(panels, io.sibling_path(args.output, "compare"))))
    return shown


def _write_std_map(samples: Tensor, path: Path) -> tuple[Path, float]:
    """Write the per-pixel posterior standard deviation of ``samples`` ``(K, 1, C, H, W)`` as a grayscale PNG.

    Each pixel is the root mean square over channels of the unbiased (``K - 1``)
    standard deviation of the K samples, clamped to [-1, 1] as their PNGs are;
    it is scaled so that the largest value is white.  Returns the path and that scale.
    """
    spread = samples.detach().float().clamp(-1, 1).std(dim=0)
    per_pixel = spread.pow(2).mean(dim=1, keepdim=True).sqrt()[0]
    scale = float(per_pixel.max())
    shown = per_pixel / scale if scale > 0 else per_pixel
    return io.save_image(2 * shown - 1, path), scale


def _check_memory(args: argparse.Namespace, operator: Operator, prior: object, mode: str, device: torch.device) -> None:
    """Refuse, from the files' headers alone, a solve whose unknown would not fit in memory:
    INPUT's size (or ``--size``), else the unknown that ``--measurement``'s size implies."""
    channels = 3 if mode == "RGB" else 1
    if args.input:
        height, width = (args.size, args.size) if args.size is not None else io.image_size(args.input)
        shape = (1, channels, height, width)
    else:
        measured = (1, channels, *io.image_size(args.measurement))
        try:
            shape = operator.input_shape(measured) or measured
        except ValueError:  # infer_x_shape says what is wrong, once the image is read
            shape = measured
    check_working_set(shape, args.num_samples, device, "use a smaller --size (or a smaller image) or fewer --num-samples",
                      prior)


def _operator_and_noise(args: argparse.Namespace) -> tuple[Operator, float]:
    """The operator and noise level of ``--operator`` or ``--preset`` (an explicit ``--noise-sigma`` wins)."""
    if args.preset is not None:
        preset = operators.preset(args.preset)
        noise = preset.noise_sigma if args.noise_sigma is None else args.noise_sigma
        return preset.build(seed=args.seed), noise
    operator = operators.build(args.operator, **parse_key_values(args.operator_arg, "--operator-arg"))
    return operator, DEFAULT_NOISE_SIGMA if args.noise_sigma is None else args.noise_sigma


def _measurement(args: argparse.Namespace, operator: Operator, clean: Tensor | None, mode: str, device: torch.device) -> Tensor:
    """The ``--measurement`` image, or ``A(clean) + noise`` drawn from ``seed + MEASUREMENT_SEED_OFFSET``."""
    if args.measurement:
        if not getattr(operator, "output_in_image_range", False):
            raise ValueError(f"operator {_task(args)} does not measure images, so --measurement cannot be used")
        return io.load_image(args.measurement, mode=mode).to(device)
    generator = torch.Generator(device=device).manual_seed(args.seed + MEASUREMENT_SEED_OFFSET)
    return operator.measure(clean, args.noise_sigma, generator=generator)


def _check_arguments(args: argparse.Namespace) -> None:
    """Cheap checks that run before anything is loaded."""
    if args.input is None and args.measurement is None:
        raise ValueError("give INPUT (a clean image to degrade) or --measurement FILE (a degraded image)")
    for path in (args.input, args.measurement):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"no image file at {path!r}")
    if args.size is not None and args.input is None:
        raise ValueError("--size resizes INPUT; a --measurement image is used at its own size")
    if args.preset is not None and args.operator_arg:
        raise ValueError("--preset fixes the operator's arguments; leave out --operator-arg (or use --operator)")
    if args.std and args.num_samples < 2:
        raise ValueError("--std needs --num-samples K with K >= 2 (the standard deviation of the samples)")
    for path in _output_paths(args):
        io.check_output_path(path)


def _output_paths(args: argparse.Namespace) -> list[Path]:
    """Every file the command may write: OUT and its siblings."""
    tags = ["measurement"] * (not args.measurement) + ["compare"] * args.compare + ["std"] * args.std
    tags += [f"sample{k}" for k in range(args.num_samples if args.num_samples > 1 else 0)]
    return [Path(args.output), *(io.sibling_path(args.output, tag) for tag in tags)]


def _task(args: argparse.Namespace) -> str:
    """``'NAME'`` of ``--operator`` or ``of preset 'NAME'`` for messages."""
    return f"of preset {args.preset!r}" if args.preset is not None else repr(args.operator)


def _is_image(operator: object, y: Tensor) -> bool:
    """Whether the measurement ``y`` can be shown as one image file."""
    in_range = getattr(operator, "output_in_image_range", False)
    return bool(in_range) and y.ndim == 4 and y.shape[0] == 1 and y.shape[1] in (1, 3)


def _summary(result: Result, restored: Tensor, clean: Tensor | None, y: Tensor, written: list[str]) -> str:
    parts = [f"{result.method}, {result.options['steps']} steps, NFE {result.nfe:g}, {result.seconds:.2f} s"]
    if clean is not None:
        reference = clean.float().cpu()
        quality = f"PSNR {psnr(restored.float().cpu(), reference).item():.2f} dB"
        if y.shape == clean.shape:
            quality += f" (measurement {psnr(y.float().cpu().clamp(-1, 1), reference).item():.2f} dB)"
        parts.append(quality)
    return "restored: " + ", ".join(parts) + "; wrote " + ", ".join(written)
