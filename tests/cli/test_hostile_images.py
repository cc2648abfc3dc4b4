"""A decompression bomb (a PNG header claiming 40,000 x 40,000 pixels, under 1 KB on disk) is
refused from its header: one line and exit status 2 from ``restore``, a row of ``errors.csv``
from ``evaluate``, which goes on."""

from __future__ import annotations

import csv
import struct
import zlib

from invsolve.cli import main


def write_bomb(path, side: int = 40_000):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_restore_refuses_a_bomb_in_one_line(tmp_path, capsys):
    bomb = write_bomb(tmp_path / "bomb.png")
    status = main(["restore", str(bomb), "--operator", "gaussian_blur", "--method", "ddrm", "--steps", "2",
                   "--output", str(tmp_path / "out" / "restored.png")])
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("invsolve: error: ") and "too large" in err
    assert not (tmp_path / "out" / "restored.png").exists()


def test_evaluate_lists_a_bomb_in_errors_csv_and_goes_on(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    write_bomb(folder / "bomb.png")
    out = tmp_path / "run"
    assert main(["evaluate", str(folder), "--operator", "gaussian_blur", "--methods", "ddrm", "--steps", "2",
                 "--out", str(out), "--quiet"]) == 0
    with open(out / "errors.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["image"] for row in rows] == ["bomb.png"] and "too large to decode safely" in rows[0]["error"]
