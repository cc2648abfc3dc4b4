"""``OUT/invsolve-manifest.txt``: every file ``invsolve evaluate`` writes under OUT, recorded first.

A path is appended to the manifest *before* the file is created, so the manifest
always covers what a run wrote, even one killed mid-write.  ``--overwrite`` deletes
exactly the recorded files (with their temporary ``.NAME.tmp`` siblings) and the
folders this leaves empty; anything else in OUT, such as a user's notes, stays.
A folder that already holds one of the names evaluate writes but has no manifest
was filled by someone else, and is refused rather than overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from invsolve.io import temporary_path

MANIFEST_NAME = "invsolve-manifest.txt"
#: Names ``invsolve evaluate`` writes directly in OUT.
RESERVED_NAMES = (
    "metrics.csv", "errors.csv", "config.json", "summary.json", "summary.md", "grid.png",
    "ground_truth", "measurement", "methods",
)


class Manifest:
    """The recorded outputs of OUT (relative POSIX paths, one per line, append-only).

    Several processes of one run may append: each line goes out in one ``O_APPEND``
    write, and a line cut short by a crash (no newline) is ignored when read.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / MANIFEST_NAME
        self._claimed: set[str] = set()
        self.reload()

    def exists(self) -> bool:
        return self.path.is_file()

    def reload(self) -> None:
        """Read the recorded paths again (another process may have changed the file)."""
        self._claimed = set(self._recorded())

    def _recorded(self) -> list[str]:
        if not self.path.is_file():
            return []
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")[:-1]  # the last piece has no newline: empty, or cut short
        return [line for line in lines if _is_inside(line)]

    def claim(self, path: str | Path) -> Path:
        """Record ``path`` (under OUT, reached without leaving it through a symlink) before it is written."""
        path = Path(path)
        try:
            relative = PurePosixPath(path.relative_to(self.root).as_posix())
        except ValueError:
            raise ValueError(f"{str(path)!r} is not under the output folder {str(self.root)!r}") from None
        if not self._stays_inside(path):
            raise ValueError(f"{str(path)!r} leads outside the output folder {str(self.root)!r} through a symlink")
        name = str(relative)
        if name not in self._claimed:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(descriptor, (name + "\n").encode("utf-8"))
            finally:
                os.close(descriptor)
            self._claimed.add(name)
        return path

    def remove_claimed(self) -> None:
        """Delete every recorded file, its temporary sibling and the recorded folders left empty; then forget them."""
        folders = set()
        for name in sorted(self._claimed):
            path = self.root / name
            if not self._stays_inside(path):
                continue  # a folder on the way was replaced by a symlink: never delete through it
            for candidate in (path, temporary_path(path)):
                if candidate.is_file() or candidate.is_symlink():
                    candidate.unlink()
            folders.update(parent for parent in path.parents if parent != self.root and self.root in parent.parents)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                folder.rmdir()
        self.path.write_text("", encoding="utf-8")
        self._claimed.clear()

    def _stays_inside(self, path: Path) -> bool:
        return path.parent.resolve().is_relative_to(self.root.resolve())


def foreign_outputs(root: str | Path) -> list[str]:
    """Names of :data:`RESERVED_NAMES` in ``root`` that no manifest accounts for (empty when there is one)."""
    root = Path(root)
    if (root / MANIFEST_NAME).is_file() or not root.is_dir():
        return []
    return [name for name in RESERVED_NAMES if (root / name).exists() or (root / name).is_symlink()]


def _is_inside(line: str) -> bool:
    """Whether a manifest line names a path inside OUT (relative, no ``..``): others are never deleted."""
    path = PurePosixPath(line)
    return bool(line) and not path.is_absolute() and ".." not in path.parts and "\\" not in line
