"""Where every artefact of an evaluation lives under the output folder OUT."""

from __future__ import annotations

import re
from pathlib import Path

from invsolve.evaluation.manifest import Manifest
from invsolve.io import check_writable_folder

#: Output names and method folder names: letters, digits, ``_`` and ``-`` only, so no path can leave OUT.
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class OutputLayout:
    """Paths under ``OUT``, built only from safe names (see :func:`dataset.safe_name`).

    ``OUT/ground_truth/NAME.png``, ``OUT/measurement/NAME.png``,
    ``OUT/methods/METHOD/NAME.png``, and ``metrics.csv``, ``errors.csv``,
    ``config.json``, ``summary.json``, ``summary.md``, ``grid.png`` in ``OUT``.
    Every writer calls :meth:`claim` first, which records the path in the manifest
    (:mod:`invsolve.evaluation.manifest`).
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
        self.manifest = Manifest(self.root)

    def claim(self, path: Path) -> Path:
        """Record ``path`` in the manifest before it is written; returns it."""
        return self.manifest.claim(path)

    def ground_truth(self, name: str) -> Path:
        return self.root / "ground_truth" / f"{_safe(name)}.png"

    def measurement(self, name: str) -> Path:
        return self.root / "measurement" / f"{_safe(name)}.png"

    def restoration(self, method: str, name: str) -> Path:
        return self.root / "methods" / _safe(method) / f"{_safe(name)}.png"


def check_out_folder(out: str | Path, data_dir: str | Path) -> None:
    """Refuse an ``--out`` that cannot be written or that overlaps ``DATA_DIR``, before any work.

    OUT inside DATA_DIR would make every rerun read its own outputs as images; DATA_DIR
    inside OUT would put the inputs where ``--overwrite`` cleans up.
    """
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ValueError(f"--out {str(root)!r} exists and is not a folder")
    check_writable_folder(root, f"--out {str(root)!r}")
    target, data = root.resolve(), Path(data_dir).resolve()
    if target == data or data in target.parents:
        raise ValueError(
            f"--out {str(root)!r} lies inside DATA_DIR {str(data_dir)!r}: a rerun would evaluate its own "
            "outputs as images; choose an --out outside DATA_DIR"
        )
    if target in data.parents:
        raise ValueError(
            f"DATA_DIR {str(data_dir)!r} lies inside --out {str(root)!r}: outputs and inputs would mix; "
            "choose an --out outside DATA_DIR"
        )


def _safe(part: str) -> str:
    if not _SAFE.match(part):
        raise ValueError(f"{part!r} cannot name an output file: use letters, digits, '_' and '-' only")
    return part
