"""Benchmark presets: the published operators, per-image seeding, and ``--preset`` on the command line."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import operators
from invsolve.cli import main
from invsolve.evaluation import EvaluationSettings
from invsolve.evaluation.dataset import image_seed, list_images
from operators import GaussianBlur, Inpainting, MotionBlur, SuperResolution
from tests.helpers.tiny_priors import save_tiny_pixel_prior

ALL = ("sr4", "box128", "box128_daps", "random70", "gauss61", "motion61")


def image(size: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


def missing_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the zeros of a {0, 1} mask ``(..., H, W)``."""
    rows = torch.nonzero((mask.reshape(-1, *mask.shape[-2:]) == 0).all(0).any(1)).flatten()
    cols = torch.nonzero((mask.reshape(-1, *mask.shape[-2:]) == 0).all(0).any(0)).flatten()
    return int(rows[0]), int(cols[0]), len(rows), len(cols)


def test_every_preset_is_listed_with_noise_005_and_names_its_protocol():
    assert tuple(operators.presets()) == ALL
    for name in ALL:
        preset = operators.preset(name)
        assert preset.noise_sigma == 0.05
        assert "DPS" in preset.description or "DAPS" in preset.description, name
        assert "protocol" in preset.description, name
    with pytest.raises(ValueError, match="unknown preset 'sr8'; available: sr4, box128"):
        operators.preset("sr8")
    with pytest.raises(TypeError, match="seed"):
        operators.preset("box128").build(seed=1.5)


def test_sr4_is_antialiased_bicubic_256_to_64():
    op = operators.preset("sr4").build()
    assert isinstance(op, SuperResolution)
    x = image(64)
    y = op(x)
    assert op.output_shape((1, 3, 256, 256)) == (1, 3, 64, 64)
    # PyTorch's antialiased bicubic (Keys a = -0.5 stretched by 4) agrees away from the
    # boundary, where MATLAB mirrors and PyTorch renormalises.
    reference = F.interpolate(x, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], reference[..., 2:-2, 2:-2], rtol=0, atol=1e-12)
    assert (y - F.interpolate(x, scale_factor=0.25, mode="bicubic", align_corners=False)).abs().max() > 0.05


def test_gauss61_is_the_scipy_gaussian_of_dps_and_daps_with_reflect_boundaries():
    """DPS / DAPS ``Blurkernel``: ``scipy.ndimage.gaussian_filter`` of a centred delta, std 3 (truncate 4)."""
    from scipy.ndimage import gaussian_filter

    op = operators.preset("gauss61").build()
    assert isinstance(op, GaussianBlur) and op.separable and "svd" in op.capabilities
    delta = np.zeros((61, 61))
    delta[30, 30] = 1
    kernel = torch.from_numpy(gaussian_filter(delta, sigma=3.0))
    torch.testing.assert_close(op.kernel, kernel, rtol=0, atol=1e-15)
    assert op.kernel[30, 30 + 13] == 0 and op.kernel[30, 30 + 12] > 0  # zero beyond 4 std = 12 px
    x = image(64, seed=1)
    padded = F.pad(x, (30, 30, 30, 30), mode="reflect")
    expected = F.conv2d(padded.reshape(3, 1, 124, 124), kernel[None, None]).reshape(1, 3, 64, 64)
    torch.testing.assert_close(op(x), expected, rtol=0, atol=1e-10)


def test_motion61_is_a_seeded_61_pixel_kernel_with_reflect_boundaries():
    a, b, c = (operators.preset("motion61").build(seed=s) for s in (4, 4, 5))
    assert isinstance(a, MotionBlur) and (a.kernel_size, a.intensity) == (61, 0.5)
    kernel = a.kernel.to(torch.float64)
    assert kernel.shape == (61, 61) and kernel.min() >= 0 and math.isclose(float(kernel.sum()), 1.0, rel_tol=1e-9)
    assert torch.equal(a.kernel, b.kernel) and not torch.equal(a.kernel, c.kernel)
    x = image(64, seed=2)
    padded = F.pad(x, (30, 30, 30, 30), mode="reflect")
    expected = F.conv2d(padded.reshape(3, 1, 124, 124), kernel.flip(0, 1)[None, None]).reshape(1, 3, 64, 64)
    torch.testing.assert_close(a(x), expected, rtol=0, atol=1e-10)


def test_random70_drops_70_percent_of_pixels_in_all_channels_with_one_mask_per_run():
    op = operators.preset("random70").build(seed=3)
    assert isinstance(op, Inpainting) and not operators.preset("random70").per_image  # DAPS keeps its mask
    mask = op.mask_for((1, 3, 256, 256))
    full = mask.expand(1, 3, 256, 256)
    assert int((full[0, 0] == 0).sum()) == round(0.7 * 256 * 256)
    assert torch.equal(full[0, 0], full[0, 1]) and torch.equal(full[0, 0], full[0, 2])
    again = operators.preset("random70").build(seed=3).mask_for((1, 3, 256, 256))
    other = operators.preset("random70").build(seed=4).mask_for((1, 3, 256, 256))
    assert torch.equal(mask, again) and not torch.equal(mask, other)


@pytest.mark.parametrize(
    "name, margin, per_image", [("box128", 16, True), ("box128_daps", 32, False)], ids=["dps", "daps"]
)
def test_box_presets_draw_the_corner_like_their_paper(name, margin, per_image):
    """``np.random.randint(margin, 256 - margin - 128)`` per axis: DPS margin 16, a new box per
    image (util/img_utils.py); DAPS margin 32, one box for the run (forward_operator/__init__.py)."""
    preset = operators.preset(name)
    assert preset.per_image == per_image and preset.seeded
    corners = set()
    for seed in range(1000):
        mask = preset.build(seed=seed).mask_for((1, 3, 256, 256))
        if seed < 10:
            full = mask.expand(1, 3, 256, 256)
            assert missing_box(full)[2:] == (128, 128) and int((full[0, 0] == 0).sum()) == 128 * 128
        hole = ~mask[0, 0]
        corners.add((int(hole.any(1).nonzero()[0]), int(hole.any(0).nonzero()[0])))
    tops = {top for top, _ in corners} | {left for _, left in corners}
    # 2000 coordinates over at most 96 values: each value is missed with probability < 1e-9
    assert tops == set(range(margin, 256 - margin - 128))
    first = preset.build(seed=7).mask_for((1, 3, 256, 256))
    assert torch.equal(first, preset.build(seed=7).mask_for((1, 3, 256, 256)))


def test_settings_refuse_a_preset_with_another_operator(tmp_path):
    settings = EvaluationSettings(
        data_dir=str(tmp_path), out=str(tmp_path / "out"), operator="gaussian_blur", prior="p", methods=["dps"],
        preset="box128",
    )
    with pytest.raises(ValueError, match="preset 'box128' fixes the operator"):
        settings.check()
    settings = EvaluationSettings(
        data_dir=str(tmp_path), out=str(tmp_path / "out"), operator="", prior="p", methods=["dps"], preset="sr4",
    )
    settings.check()
    assert (settings.operator, settings.operator_args) == ("super_resolution", {"factor": 4, "method": "bicubic"})


# ---------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
    return save_tiny_pixel_prior(tmp_path_factory.mktemp("prior"), sample_size=32)


def write_png(path, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    pixels = np.stack([rows, cols, rng.uniform(0, 1, (size, size))], axis=-1) * 255
    Image.fromarray(pixels.round().astype(np.uint8)).save(path)


def run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(args)
    return status, out.getvalue(), err.getvalue()


def test_restore_with_a_preset_and_a_noise_override(prior_dir, tmp_path):
    clean = tmp_path / "clean.png"
    write_png(clean, 32, seed=0)
    output = tmp_path / "out.png"
    base = ["restore", str(clean), "--prior", str(prior_dir), "--steps", "2", "--device", "cpu", "--quiet", "-o", str(output)]
    status, stdout, stderr = run([*base, "--preset", "gauss61", "--noise-sigma", "0"])
    assert status == 0, stderr
    measured = np.asarray(Image.open(tmp_path / "out.measurement.png")).astype(np.float64)
    x = torch.from_numpy(np.asarray(Image.open(clean)).astype(np.float64) / 127.5 - 1).permute(2, 0, 1)[None]
    blurred = operators.GaussianBlur(61, 3.0, truncate=4.0)(x)[0].permute(1, 2, 0).numpy()
    assert np.abs(measured - np.round((blurred + 1) * 127.5)).max() <= 1  # noiseless: A(x) up to rounding
    status, _, stderr = run([*base, "--preset", "sr4"])
    assert status == 0, stderr
    assert np.asarray(Image.open(tmp_path / "out.measurement.png")).shape == (8, 8, 3)
    status, _, stderr = run([*base, "--preset", "sr4", "--operator-arg", "factor=2"])
    assert status != 0 and "leave out --operator-arg" in stderr
    status, _, stderr = run([*base, "--preset", "sr4", "--operator", "gaussian_blur"])
    assert status != 0 and "not allowed with argument" in stderr


def test_evaluate_box128_draws_one_box_per_image_from_its_name(prior_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for k, name in enumerate(("a.png", "b.png")):
        write_png(data / name, 192, seed=k)
    out = tmp_path / "out"
    status, _, stderr = run([
        "evaluate", str(data), "--preset", "box128", "--prior", str(prior_dir), "--methods", "ddnm",
        "--steps", "2", "--size", "192", "--metrics", "psnr", "--device", "cpu", "--seed", "3", "--out", str(out), "--quiet",
    ])
    assert status == 0, stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["preset"], config["operator"], config["noise_sigma"]) == ("box128", "inpainting", 0.05)
    boxes = []
    for entry in list_images(data):
        expected = operators.preset("box128").build(seed=image_seed(entry.key, 3, "operator"))
        box = missing_box(expected.mask_for((1, 3, 192, 192)))
        boxes.append(box)
        # The no-learning baseline A^+ y = m * y reads 0 (grey 128) exactly in the missing box.
        baseline = np.asarray(Image.open(out / "methods" / "no-learning" / f"{entry.name}.png")).astype(int)
        top, left, height, width = box
        assert height == width == 128
        inside = baseline[top : top + height, left : left + width]
        assert inside.min() == inside.max() and inside.min() in (127, 128)
        ring = baseline[max(top - 1, 0) : top + height + 1, max(left - 1, 0) : left + width + 1]
        assert ring.std() > inside.std()
    assert boxes[0] != boxes[1]
