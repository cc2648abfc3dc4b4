"""Find a restorer or learned-proximal-network folder (local or bundled) and load it."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from priors.bundled import bundled_path
from priors.lpn import LPNPrior
from priors.network_folder import KIND_KEY, read_config
from priors.restorer import RestorerPrior

#: Loader of each network prior kind named by a folder's ``config.json``.
LOADERS = {"restorer": RestorerPrior.from_folder, "lpn": LPNPrior.from_folder}


def load_network_prior(
    name_or_path: str | os.PathLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> RestorerPrior | LPNPrior | None:
    """The restorer / LPN prior of a folder or bundled name, or ``None`` when it names no such folder
    (then ``load_prior`` tries its diffusion loaders)."""
    path = Path(os.fspath(name_or_path)).expanduser()
    folder = path if path.is_dir() else bundled_path(os.fspath(name_or_path))
    config = None if folder is None else read_config(folder)
    if config is None:
        return None
    kind = config[KIND_KEY]
    if kind not in LOADERS:
        raise ValueError(f"{folder}: unknown network prior kind {kind!r}; known: {', '.join(sorted(LOADERS))}")
    return LOADERS[kind](folder, device, dtype)
