"""What ``invsolve evaluate`` runs, checked before any work, and the identity a resumed run must share."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

import operators
from invsolve.evaluation.layout import OutputLayout
from invsolve.io import temporary_path
from invsolve.metrics import LPIPS_BACKBONES
from invsolve.samplers import method_class
from invsolve.validation import MAX_STEPS, check_count, check_noise_sigma

METRICS = ("psnr", "ssim", "lpips")
#: Precisions of the network (``--dtype``); the sampler state stays float32.
DTYPES = ("float32", "float16", "bfloat16")
#: Settings a resumed run must share with the run that wrote OUT.
IDENTITY_KEYS = (
    "data_dir", "operator", "operator_args", "preset", "noise_sigma", "prior", "size", "seed", "steps", "metrics",
    "lpips_net", "dtype",
)
#: Identity values of settings added later, for a config.json written before them.
IDENTITY_DEFAULTS = {"dtype": "float32"}


@dataclass
class EvaluationSettings:
    """What to evaluate and where to write it (see ``invsolve evaluate --help``)."""

    data_dir: str
    out: str
    operator: str
    prior: str
    #: ``None``: the method that fits the operator (:func:`invsolve.method_choice.choose_method`).
    methods: list[str] | None
    operator_args: dict[str, Any] = field(default_factory=dict)
    noise_sigma: float = 0.05
    size: int | None = None
    limit: int | None = None
    seed: int = 0
    steps: int | None = None
    metrics: tuple[str, ...] = METRICS
    lpips_net: str = "vgg"
    overwrite: bool = False
    device: str | None = None
    grid_rows: int = 8
    progress: bool = True
    preset: str | None = None
    batch_size: int = 1
    dtype: str = "float32"
    compile: bool = False
    channels_last: bool = False

    def check(self) -> None:
        """Reject bad settings before anything is loaded.

        With ``preset`` (:func:`operators.preset`), ``operator`` must be empty or the
        preset's and ``operator_args`` empty or the preset's; both are then set from it.
        """
        if self.preset is not None:
            task = operators.preset(self.preset)
            if self.operator not in ("", task.operator) or self.operator_args not in ({}, task.options):
                raise ValueError(
                    f"preset {self.preset!r} fixes the operator ({task.operator} with {task.options}); "
                    "give either a preset or an operator with its arguments"
                )
            self.operator, self.operator_args = task.operator, dict(task.options)
        if self.methods is not None and not self.methods:
            raise ValueError("--methods needs at least one method")
        for method in self.methods or ():
            method_class(method)
        if self.methods is not None and len(set(self.methods)) != len(self.methods):
            raise ValueError(f"--methods lists a method twice: {','.join(self.methods)}")
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown or not self.metrics:
            given = ", ".join(unknown) or "(none given)"
            raise ValueError(f"unknown metric(s) {given}; choose from {', '.join(METRICS)}")
        if self.lpips_net not in LPIPS_BACKBONES:
            raise ValueError(f"unknown LPIPS backbone {self.lpips_net!r}; choose one of {', '.join(LPIPS_BACKBONES)}")
        self.noise_sigma = check_noise_sigma(self.noise_sigma, "--noise-sigma")
        for name, value, most in (("--size", self.size, None), ("--steps", self.steps, MAX_STEPS),
                                  ("--limit", self.limit, None), ("--grid-rows", self.grid_rows, None)):
            if value is not None:
                check_count(name, value, 1, most)
        check_count("--seed", self.seed, 0, 2**64 - 1)
        check_count("--batch-size", self.batch_size, 1)
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in (None, "cpu", "cuda"):
            raise ValueError(f"unsupported device {self.device!r}; use cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("CUDA is not available on this machine; use --device cpu")


def identity(settings: EvaluationSettings, hw: tuple[int, int]) -> dict[str, Any]:
    """The settings that decide the results (what ``config.json`` records): the network's
    precision does, while the batch size, compilation and memory layout change only the
    float rounding (like thread and process counts) and may differ between runs."""
    prior = os.path.abspath(settings.prior) if os.path.isdir(settings.prior) else settings.prior
    return {
        "data_dir": os.path.abspath(settings.data_dir),
        "operator": settings.operator,
        "operator_args": settings.operator_args,
        "preset": settings.preset,
        "noise_sigma": settings.noise_sigma,
        "prior": prior,
        "size": list(hw),
        "seed": settings.seed,
        "steps": settings.steps,
        "metrics": sorted(settings.metrics),
        "lpips_net": settings.lpips_net,
        "dtype": settings.dtype,
    }


def check_resumable(layout: OutputLayout, current: dict[str, Any]) -> None:
    """Refuse to add to an OUT whose ``config.json`` records a different set-up."""
    if not layout.config.is_file():
        return
    try:
        previous = json.loads(layout.config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(layout.config)!r} is not valid JSON ({err}); use another --out, or --overwrite") from None
    if not isinstance(previous, dict):
        raise ValueError(f"{str(layout.config)!r} is not an invsolve configuration; use another --out, or --overwrite")
    changed = [key for key in IDENTITY_KEYS if previous.get(key, IDENTITY_DEFAULTS.get(key)) != current[key]]
    if changed:
        details = "; ".join(f"{key}: {previous.get(key)!r} then, {current[key]!r} now" for key in changed)
        raise ValueError(
            f"{layout.root} holds results of a different set-up ({details}); "
            "use another --out, or --overwrite to discard them"
        )


def write_config(layout: OutputLayout, current: dict[str, Any]) -> None:
    """Replace ``config.json`` atomically: other processes may be reading it."""
    temporary = temporary_path(layout.claim(layout.config))
    temporary.write_text(json.dumps(current, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, layout.config)
