"""The on-disk format of invsolve's non-diffusion network priors (restorers, learned proximal networks).

A folder holds ``config.json`` and ``model.safetensors``::

    {"invsolve_prior": "restorer" | "lpn",
     "architecture": "<a class name of that kind's ARCHITECTURES table>",
     "arguments": {... keyword arguments of the class ...},
     ... kind-specific fields (the restorer's degradation, the training noise level) ...}

Only classes listed in a kind's ``ARCHITECTURES`` table are built (no import by
name), and weights are read with safetensors, never unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
KIND_KEY = "invsolve_prior"


def read_config(folder: str | os.PathLike) -> dict | None:
    """The folder's ``config.json`` when it declares a network prior kind, else ``None``."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # not ours; the diffusion loaders report a broken config
    return config if isinstance(config, dict) and KIND_KEY in config else None


def build_network(
    folder: str | os.PathLike,
    config: dict,
    architectures: dict[str, type[nn.Module]],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """The network a folder describes, with its safetensors weights (strict key match), frozen, in eval mode."""
    from safetensors.torch import load_file

    name = config.get("architecture")
    if name not in architectures:
        raise ValueError(
            f"{folder}: unknown architecture {name!r} for a {config[KIND_KEY]} prior; known: {', '.join(sorted(architectures))}"
        )
    weights = Path(folder) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} beside {CONFIG_NAME}")
    network = architectures[name](**config.get("arguments", {}))
    network.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    network.to(device=device, dtype=dtype)
    return network.eval().requires_grad_(False)


def save_network(folder: str | os.PathLike, network: nn.Module, config: dict[str, Any]) -> Path:
    """Write ``config.json`` (with the network's class name) and ``model.safetensors`` into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {**config, "architecture": type(network).__name__}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    state = {key: value.detach().cpu().contiguous() for key, value in network.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME))
    return folder
