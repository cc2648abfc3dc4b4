"""Where every artefact of an evaluation lives under the output folder OUT."""

from __future__ import annotations

import re
from pathlib import Path

#: Output names and method folder names: letters, digits, ``_`` and ``-`` only, so no path can leave OUT.
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class OutputLayout:
    """Paths under ``OUT``, built only from safe names (see :func:`dataset.safe_name`).

    ``OUT/ground_truth/NAME.png``, ``OUT/measurement/NAME.png``,
    ``OUT/methods/METHOD/NAME.png``, and ``metrics.csv``, ``errors.csv``,
    ``config.json``, ``summary.json``, ``summary.md``, ``grid.png`` in ``OUT``.
    """

    def __init__(self, out: str | Path):
        self.root = Path(out)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"--out {str(self.root)!r} exists and is not a folder")
        self.metrics = self.root / "metrics.csv"
        self.errors = self.root / "errors.csv"
        self.config = self.root / "config.json"
        self.summary_json = self.root / "summary.json"
        self.summary_md = self.root / "summary.md"
        self.grid = self.root / "grid.png"

    def ground_truth(self, name: str) -> Path:
        return self.root / "ground_truth" / f"{_safe(name)}.png"

    def measurement(self, name: str) -> Path:
        return self.root / "measurement" / f"{_safe(name)}.png"

    def restoration(self, method: str, name: str) -> Path:
        return self.root / "methods" / _safe(method) / f"{_safe(name)}.png"


def _safe(part: str) -> str:
    if not _SAFE.match(part):
        raise ValueError(f"{part!r} cannot name an output file: use letters, digits, '_' and '-' only")
    return part
