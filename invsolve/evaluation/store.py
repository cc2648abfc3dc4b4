"""Resumable CSV files: one row per finished (image, method) pair, on disk as soon as it exists.

Each process appends to its own file (``metrics.csv`` for a single process,
``metrics.rank{i}.csv`` under ``accelerate launch``); :func:`merge_rows` folds
every such file into ``metrics.csv``.  Rows end with a newline, so a row that a
crash cut short (no newline yet) is recognised and dropped.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from invsolve.io import temporary_path

#: Columns of ``metrics.csv``; metrics that were not computed (or are unavailable) are empty.
METRIC_COLUMNS = ("image", "name", "method", "psnr", "ssim", "lpips", "nfe", "seconds", "peak_memory_mib")
#: Columns of ``errors.csv``: an unreadable image (``method`` empty) or a failed (image, method) run.
ERROR_COLUMNS = ("image", "method", "error")


def format_value(value: Any) -> str:
    """CSV text of a value: ``""`` for ``None``, the shortest exact text of a float."""
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return repr(value) if isinstance(value, float) else str(value)


def _complete_text(path: Path) -> str:
    """The file's text up to its last newline (``""`` when it does not exist)."""
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8")
    return text if text.endswith("\n") else text[: text.rfind("\n") + 1]


def _parse(text: str, columns: tuple[str, ...], path: Path) -> list[dict[str, str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return []
    if tuple(header) != columns:
        raise ValueError(
            f"{path} has columns {header}, expected {list(columns)}; it was not written by this version "
            "of 'invsolve evaluate': use another --out or --overwrite"
        )
    return [dict(zip(columns, values)) for values in reader if len(values) == len(columns)]


def read_rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Complete rows of a CSV file written by :class:`CsvLog` (``[]`` when it does not exist)."""
    return _parse(_complete_text(Path(path)), columns, Path(path))


class CsvLog:
    """Append rows to a CSV file (header first); each row is flushed and synced to disk.

    An existing file is checked for the same columns and cut back to its last
    complete row before anything is appended.
    """

    def __init__(self, path: Path, columns: tuple[str, ...]):
        self.path = Path(path)
        self.columns = columns
        self.path.parent.mkdir(parents=True, exist_ok=True)
        complete = _complete_text(self.path)
        _parse(complete, columns, self.path)
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._file.truncate(len(complete.encode("utf-8")))
        self._writer = csv.writer(self._file, lineterminator="\n")
        if not complete:
            self._write(columns)

    def append(self, row: dict[str, Any]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"unknown column(s) {sorted(unknown)} for {self.path.name}")
        self._write([format_value(row.get(column)) for column in self.columns])

    def _write(self, values: Iterable[str]) -> None:
        self._writer.writerow(values)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CsvLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_rows(path: Path, columns: tuple[str, ...], rows: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` by ``rows`` atomically (write a temporary file, then rename)."""
    path = Path(path)
    temporary = temporary_path(path)
    with open(temporary, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([format_value(row.get(column)) for column in columns])
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def rank_path(path: Path, rank: int, num_processes: int) -> Path:
    """The file one process appends to: ``path`` itself for a single process, else ``stem.rank{i}.csv``."""
    return path if num_processes == 1 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def rank_files(path: Path) -> list[Path]:
    """Per-process files beside ``path`` left by this or an earlier sharded run, sorted."""
    return sorted(path.parent.glob(f"{path.stem}.rank*{path.suffix}"))


def merge_rows(path: Path, columns: tuple[str, ...], key: tuple[str, ...]) -> list[dict[str, str]]:
    """Fold ``path`` and its per-process files into ``path``; the last row per ``key`` wins.

    Rows are sorted by ``key``, so the result does not depend on the number of
    processes; the per-process files are removed once the merged file is on disk.
    """
    latest: dict[tuple[str, ...], dict[str, str]] = {}
    sources = [Path(path), *rank_files(Path(path))]
    for source in sources:
        for row in read_rows(source, columns):
            latest[tuple(row[k] for k in key)] = row
    rows = [latest[k] for k in sorted(latest)]
    write_rows(path, columns, rows)
    for source in sources[1:]:
        source.unlink()
    return rows
