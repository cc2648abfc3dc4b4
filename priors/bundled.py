"""Priors that ship with the package, found by name wherever invsolve is installed.

The repository's top-level ``assets/`` folder holds them (``assets/priors/<name>/``,
a diffusers pipeline folder). A source checkout or editable install finds it
beside the ``priors`` package; a wheel installs ``assets/`` into site-packages,
again beside ``priors``, so one rule covers both.
"""

from __future__ import annotations

from pathlib import Path

#: Marker files of a diffusers folder: a pipeline (``model_index.json``) or a bare UNet.
_MARKERS = ("model_index.json", "config.json")


def assets_root() -> Path:
    """The installed ``assets`` folder (it may be missing in a stripped install)."""
    return Path(__file__).resolve().parent.parent / "assets"


def bundled() -> list[str]:
    """Names of the bundled priors, e.g. ``["natural-64"]``, sorted."""
    folder = assets_root() / "priors"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if any((p / m).is_file() for m in _MARKERS))


def bundled_path(name: str) -> Path | None:
    """The folder of the bundled prior ``name``, or ``None`` when no bundled prior has that name."""
    if not isinstance(name, str) or name not in bundled():
        return None
    return assets_root() / "priors" / name
