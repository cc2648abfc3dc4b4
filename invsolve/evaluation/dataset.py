"""The images of a folder: listing, safe output names, per-image seeds and shards."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

#: File suffixes read as images (case-insensitive); other files are ignored.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Longest sanitized stem kept in an output name (the hash keeps names unique).
STEM_CHARS = 48
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class ImageEntry:
    """One image of the folder: its path, its key (relative POSIX path) and its output name."""

    path: Path
    key: str
    name: str


def safe_name(key: str) -> str:
    """An output file stem for ``key`` that cannot leave its folder and cannot collide.

    The stem of the file name is reduced to ``[A-Za-z0-9_-]`` (runs of anything
    else become ``_``, at most :data:`STEM_CHARS` characters) and followed by the
    first 10 hex digits of ``sha256(key)``, so ``a b.png`` and ``a_b.png`` (or the
    same name in two sub-folders) get different outputs.
    """
    stem = _UNSAFE.sub("_", Path(key).stem).strip("_-")[:STEM_CHARS].strip("_-") or "image"
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:10]
    return f"{stem}-{digest}"


def image_seed(key: str, seed: int, purpose: str) -> int:
    """A 63-bit seed from ``sha256("{purpose}:{seed}:{key}")``, stable across runs, processes and machines.

    ``purpose`` separates streams: ``"measurement"`` for the simulated noise (shared
    by every method), ``"sampler"`` for the methods' own randomness and ``"operator"``
    for per-image random operators (the benchmark presets' masks).
    """
    digest = hashlib.sha256(f"{purpose}:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def list_images(folder: str | Path, limit: int | None = None) -> list[ImageEntry]:
    """Image files under ``folder`` (recursively, hidden entries skipped), sorted by key.

    Files are chosen by suffix (:data:`IMAGE_SUFFIXES`); whether they can be decoded
    is found out later.  ``limit`` keeps the first ``limit`` of the sorted list.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no image folder at {str(root)!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    entries = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            key = relative.as_posix()
            entries.append(ImageEntry(path=path, key=key, name=safe_name(key)))
    entries.sort(key=lambda entry: entry.key)
    if not entries:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {str(root)!r}")
    return entries[:limit]


def shard(entries: list[ImageEntry], index: int, count: int) -> list[ImageEntry]:
    """The ``index``-th of ``count`` disjoint round-robin shards of ``entries``."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} out of range for {count} shards")
    return entries[index::count]
