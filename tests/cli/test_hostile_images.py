"""A decompression bomb (a PNG header claiming 40,000 x 40,000 pixels, under 1 KB on disk), and an
image within PIL's limit whose pixels the free memory cannot hold, are refused from the header: one
line and exit status 2 from ``restore``, a row of ``errors.csv`` from ``evaluate``, which goes on."""

from __future__ import annotations

import csv
import struct
import zlib

import pytest
from PIL import Image

from invsolve import resources
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


# --- an image within PIL's limit whose pixels would not fit in memory (issue 22.5) -------------------------

#: 8,000 x 8,000 = 64 M pixels: under PIL's 89.5 M limit, over what 2 GiB of free memory can decode (3 GiB).
WITHIN_PIL_LIMIT = 8_000
FREE = 2 * 2**30


@pytest.fixture
def little_memory(monkeypatch):
    """2 GiB free, and no PNG ever decoded: the refusal must come from the header."""
    from PIL import ImageFile

    monkeypatch.setattr(resources, "available_memory", lambda device=None: FREE)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded the pixels"))
    monkeypatch.delenv("INVSOLVE_SKIP_MEMORY_CHECK", raising=False)


def _restore(tmp_path, tiny_prior_dir, *args):
    return main(["restore", *args, "--operator", "gaussian_blur", "--operator-arg", "kernel_size=3",
                 "--prior", str(tiny_prior_dir), "--method", "ddrm", "--steps", "2", "--device", "cpu",
                 "--output", str(tmp_path / "out" / "restored.png"), "--quiet"])


@pytest.mark.parametrize("how", ["input", "input --size 16", "measurement"])
def test_restore_refuses_what_memory_cannot_hold_before_decoding(tmp_path, tiny_prior_dir, little_memory, capsys, how):
    big = write_bomb(tmp_path / "big.png", WITHIN_PIL_LIMIT)
    args = {"input": [str(big)], "input --size 16": [str(big), "--size", "16"],
            "measurement": ["--measurement", str(big)]}[how]
    assert _restore(tmp_path, tiny_prior_dir, *args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("invsolve: error: "), err
    # without --size the solve's working set is refused; with --size 16 the solve fits but decoding does not
    expected = "decoding it needs an estimated 2.9 GiB" if "--size" in args else "8000x8000 with 1 sample(s) needs"
    assert expected in err and "2.0 GiB free" in err, err
    assert not (tmp_path / "out" / "restored.png").exists()


def test_evaluate_lists_an_image_too_large_to_decode_in_errors_csv_and_goes_on(tmp_path, tiny_prior_dir,
                                                                            little_memory, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    write_bomb(folder / "big.png", WITHIN_PIL_LIMIT)
    Image.new("RGB", (16, 16), (90, 120, 30)).save(folder / "small.png")
    monkeypatch.undo()  # the small image must decode; keep only the memory limit
    monkeypatch.setattr(resources, "available_memory", lambda device=None: FREE)
    out = tmp_path / "run"
    assert main(["evaluate", str(folder), "--operator", "gaussian_blur", "--operator-arg", "kernel_size=3",
                 "--prior", str(tiny_prior_dir), "--methods", "ddrm", "--steps", "2", "--metrics", "psnr",
                 "--out", str(out), "--quiet"]) == 0
    with open(out / "errors.csv", newline="") as handle:
        errors = list(csv.DictReader(handle))
    assert [row["image"] for row in errors] == ["big.png"] and "decoding it needs" in errors[0]["error"]
    with open(out / "metrics.csv", newline="") as handle:
        assert {row["image"] for row in csv.DictReader(handle)} == {"small.png"}
