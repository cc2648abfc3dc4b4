"""Writing a benchmark's markdown and JSON files."""

from __future__ import annotations

import json
import math
from pathlib import Path


def strict_json(value: object) -> object:
    """``value`` with non-finite floats (NaN PSNR of a diverged method, ...) replaced by ``None``."""
    if isinstance(value, dict):
        return {str(key): strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_outputs(markdown: str, data: dict, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.json`` into ``out_dir`` (created if needed); only there."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out / f"{stem}.md", out / f"{stem}.json"
    md_path.write_text(markdown, encoding="utf-8")
    json_path.write_text(json.dumps(strict_json(data), indent=2) + "\n", encoding="utf-8")
    return md_path, json_path
