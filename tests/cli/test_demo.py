"""``invsolve demo`` end to end: a short run writes the strip and prints the metrics."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from invsolve.cli import main
from invsolve.commands.demo import demo_image_path
from invsolve.io import STRIP_GAP


def test_short_demo_restores_and_writes_the_strip(tmp_path, capsys):
    output = tmp_path / "demo.png"
    assert main(["demo", "--steps", "8", "--samples", "2", "--output", str(output), "--quiet"]) == 0
    printed = capsys.readouterr().out
    scores = {
        label: (float(p), float(s))
        for label, p, s in re.findall(r"(measurement|restoration)\s+PSNR\s+([\d.]+) dB\s+SSIM\s+([\d.]+)", printed)
    }
    assert set(scores) == {"measurement", "restoration"}, printed
    assert scores["restoration"][0] > scores["measurement"][0] + 1.0, printed
    assert re.search(r"time [\d.]+ s", printed)

    strip = np.asarray(Image.open(output).convert("RGB"))
    truth = np.asarray(Image.open(demo_image_path()).convert("RGB"))
    height, width = truth.shape[:2]
    assert strip.shape == (height, 3 * width + 2 * STRIP_GAP, 3)
    assert np.array_equal(strip[:, -width:], truth)  # the last tile is the ground truth, unchanged
    restored = strip[:, width + STRIP_GAP : 2 * width + STRIP_GAP].astype(float)
    measured = strip[:, :width].astype(float)
    assert np.abs(restored - truth).mean() < np.abs(measured - truth).mean()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "argument --steps: must be between 1 and 100000, got 0"),
        (["--steps", "99999999999999999999"], "argument --steps: must be between 1 and 100000"),
        (["--samples", "0"], "argument --samples: must be >= 1, got 0"),
        (["--samples", "2.5"], "argument --samples: expected a whole number, got '2.5'"),
        (["--method", "no-such-method"], "unknown method"),
        (["--output", "demo.jpg"], ".png"),
        (["--method-arg", "lam"], "KEY=VALUE"),
        (["--method-arg", "eta=nan"], "option eta must be a finite number, got nan"),
        (["--method-arg", "eta=-1"], "option eta must be >= 0, got -1"),
        (["--seed", "x"], "invalid int value"),
    ],
)
def test_bad_arguments_get_one_line_errors(tmp_path, capsys, argv, message):
    argv = argv if "--output" in argv else [*argv, "--output", str(tmp_path / "d.png")]
    assert main(["demo", *argv]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "d.png").exists()
