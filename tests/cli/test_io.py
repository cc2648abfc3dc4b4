"""Image I/O: exact uint8 round trips, mode conversions, crop/resize, clamping, safe output paths."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from invsolve.io import (
    STRIP_GAP,
    check_output_path,
    from_model_range,
    image_size,
    load_image,
    prepare_output,
    save_image,
    sibling_path,
    side_by_side,
    to_model_range,
    to_uint8,
)


def random_uint8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_every_uint8_value_survives_the_round_trip():
    values = torch.arange(256, dtype=torch.uint8)
    x = to_model_range(values)
    assert x.dtype == torch.float32
    assert x[0] == -1 and x[255] == 1
    assert torch.equal(to_uint8(x), values)


def test_file_round_trip_is_exact(tmp_path):
    pixels = random_uint8((12, 9, 3))
    Image.fromarray(pixels).save(tmp_path / "in.png")
    x = load_image(tmp_path / "in.png")
    assert x.shape == (1, 3, 12, 9) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    save_image(x, tmp_path / "out.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), pixels)


def test_to_model_range_uint8_and_unit_float():
    u = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.allclose(to_model_range(u), torch.tensor([-1.0, 51 / 127.5 - 1, 1.0]))
    f = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    out = to_model_range(f)
    assert out.dtype == torch.float64
    assert torch.allclose(out, torch.tensor([-1.0, -0.5, 1.0], dtype=torch.float64))
    assert torch.allclose(from_model_range(out), f)
    assert torch.equal(from_model_range(torch.tensor([-3.0, 3.0])), torch.tensor([0.0, 1.0]))


def test_to_model_range_rejects_values_on_another_scale():
    with pytest.raises(ValueError, match="255"):
        to_model_range(torch.tensor([0.0, 200.0]))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        to_model_range(torch.tensor([0, 300]))
    with pytest.raises(TypeError):
        to_model_range(torch.tensor([True]))


def test_grayscale_loads_as_rgb_with_equal_channels(tmp_path):
    gray = random_uint8((7, 5), seed=1)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    x = load_image(tmp_path / "gray.png", mode="RGB")
    assert x.shape == (1, 3, 7, 5)
    expected = torch.from_numpy(gray.astype(np.float32)) / 127.5 - 1
    for c in range(3):
        assert torch.allclose(x[0, c], expected)
    assert load_image(tmp_path / "gray.png", mode="L").shape == (1, 1, 7, 5)


def test_rgb_loads_as_luma_in_mode_l(tmp_path):
    rgb = random_uint8((6, 6, 3), seed=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    x = load_image(tmp_path / "rgb.png", mode="L")
    assert x.shape == (1, 1, 6, 6)
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    luma = (299 * r + 587 * g + 114 * b) / 1000  # ITU-R 601
    got = (x[0, 0].double().numpy() + 1) * 127.5
    assert np.abs(got - luma).max() <= 1.0


def test_rgba_is_composited_over_white(tmp_path):
    color = np.array([10, 200, 60], dtype=np.float64)
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., :3] = color
    rgba[..., 3] = [[255, 0, 128], [255, 255, 255]]
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    x = load_image(tmp_path / "rgba.png")
    assert x.shape == (1, 3, 2, 3)
    got = to_uint8(x[0]).permute(1, 2, 0).numpy().astype(np.float64)
    alpha = rgba[..., 3:].astype(np.float64) / 255
    expected = alpha * color + (1 - alpha) * 255
    assert np.abs(got - expected).max() <= 1.0
    assert np.array_equal(got[0, 0], color) and np.array_equal(got[0, 1], [255, 255, 255])


def test_palette_image_maps_through_its_palette(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255, 17, 34, 51]
    indices = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    image = Image.new("P", (2, 2))
    image.putdata(indices.flatten().tolist())
    image.putpalette(palette + [0] * (768 - len(palette)))
    image.save(tmp_path / "palette.png")
    x = load_image(tmp_path / "palette.png")
    got = to_uint8(x[0]).permute(1, 2, 0).numpy()
    expected = np.array(palette, dtype=np.uint8).reshape(4, 3)[indices]
    assert np.array_equal(got, expected)


def test_sixteen_bit_grayscale_keeps_its_range(tmp_path):
    values = np.array([[0, 65535], [32768, 16384]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "wide.png")
    x = load_image(tmp_path / "wide.png", mode="L")
    assert torch.allclose(x[0, 0].double(), torch.from_numpy(values / 65535.0 * 2 - 1), atol=1e-6)
    assert load_image(tmp_path / "wide.png").shape == (1, 3, 2, 2)


def test_centre_crop_and_resize(tmp_path):
    # 20 x 40 (H x W): red outer quarters, green centre; the square centre crop is all green.
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[..., 0] = 255
    pixels[:, 10:30] = [0, 255, 0]
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    x = load_image(tmp_path / "wide.png", size=10)
    assert x.shape == (1, 3, 10, 10)
    assert torch.equal(to_uint8(x[0]).permute(1, 2, 0), torch.tensor([0, 255, 0], dtype=torch.uint8).expand(10, 10, 3))
    assert load_image(tmp_path / "wide.png", size=(8, 16)).shape == (1, 3, 8, 16)
    with pytest.raises(ValueError, match="size"):
        load_image(tmp_path / "wide.png", size=0)


def test_save_image_clamps_and_accepts_both_layouts(tmp_path):
    x = torch.tensor([[[-5.0, -1.0, 0.0, 1.0, 7.0]]])  # (1, 1, 5): grayscale
    save_image(x, tmp_path / "gray.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "gray.png")), [[0, 0, 128, 255, 255]])
    rgb = torch.full((1, 3, 2, 2), 3.0)
    save_image(rgb, tmp_path / "rgb.png")
    saved = Image.open(tmp_path / "rgb.png")
    assert saved.mode == "RGB" and np.all(np.asarray(saved) == 255)
    with pytest.raises(ValueError, match="shape"):
        save_image(torch.zeros(2, 3, 4, 4), tmp_path / "batch.png")
    with pytest.raises(ValueError, match="shape"):
        save_image(torch.zeros(4, 4, 4), tmp_path / "channels.png")


def test_side_by_side_strip_layout(tmp_path):
    a = torch.full((3, 4, 5), -1.0)  # black RGB, 4 x 5
    b = torch.full((1, 1, 2, 3), 0.0)  # grey grayscale, 2 x 3
    side_by_side([a, b], tmp_path / "strip.png")
    strip = np.asarray(Image.open(tmp_path / "strip.png"))
    assert strip.shape == (4, 5 + STRIP_GAP + 3, 3)
    assert np.all(strip[:, :5] == 0)
    assert np.all(strip[:, 5 : 5 + STRIP_GAP] == 255)
    assert np.all(strip[:2, 5 + STRIP_GAP :] == 128) and np.all(strip[2:, 5 + STRIP_GAP :] == 255)
    with pytest.raises(ValueError):
        side_by_side([], tmp_path / "empty.png")


def test_output_paths(tmp_path):
    out = tmp_path / "new" / "deeper" / "out.png"
    assert prepare_output(out) == out
    assert out.parent.is_dir() and not out.exists()
    assert sibling_path(out, "measurement") == out.parent / "out.measurement.png"
    with pytest.raises(ValueError, match=".png"):
        prepare_output(tmp_path / "other" / "out.jpg")
    assert not (tmp_path / "other").exists()
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ValueError, match="folder"):
        prepare_output(tmp_path / "folder.png")


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        load_image(tmp_path / "text.png")
    Image.fromarray(random_uint8((2, 2, 3))).save(tmp_path / "ok.png")
    with pytest.raises(ValueError, match="mode"):
        load_image(tmp_path / "ok.png", mode="CMYK")


def test_truncated_or_corrupt_images_name_the_file(tmp_path):
    Image.fromarray(random_uint8((16, 16, 3))).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:-40])
    with pytest.raises(ValueError, match=r"cut.png' cannot be decoded \(truncated or corrupt\?\)"):
        load_image(tmp_path / "cut.png")
    assert image_size(tmp_path / "whole.png") == (16, 16)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="text.png' is not an image file"):
        image_size(tmp_path / "text.png")


def test_a_failed_write_leaves_the_previous_file_and_no_partial_one(tmp_path, monkeypatch):
    """PNGs go to a temporary name and are renamed into place, so an interrupted write never
    leaves a half-written file under the final name."""
    import invsolve.io as io_module

    path = tmp_path / "out.png"
    save_image(torch.zeros(1, 3, 4, 4), path)
    before = path.read_bytes()

    class Interrupted:
        def save(self, target, format):
            with open(target, "wb") as file:
                file.write(b"\x89PNG half")
            raise KeyboardInterrupt

    monkeypatch.setattr(io_module, "_to_pil", lambda pixels: Interrupted())
    with pytest.raises(KeyboardInterrupt):
        save_image(torch.ones(1, 3, 4, 4), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_output_paths_are_checked_before_anything_is_written(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_output_path(tmp_path / "file" / "deeper" / "out.png")
    read_only = tmp_path / "read_only.png"
    read_only.write_bytes(b"")
    locked = tmp_path / "locked"
    locked.mkdir()
    import invsolve.io as io_module

    real_access = os.access
    denied = {read_only, locked}
    monkeypatch.setattr(io_module.os, "access", lambda p, mode: Path(p) not in denied and real_access(p, mode))
    with pytest.raises(ValueError, match="exists and is read-only"):
        check_output_path(read_only)
    with pytest.raises(ValueError, match="folder .*locked' is not writable"):
        check_output_path(locked / "new" / "out.png")
    assert not (locked / "new").exists()
