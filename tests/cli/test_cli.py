"""The command line end to end on a tiny diffusers prior and its error messages."""

import contextlib
import io
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import operators
from invsolve import methods
from invsolve.cli import main
from invsolve.io import STRIP_GAP, load_image, to_uint8

ROOT = Path(__file__).resolve().parents[2]
SIZE = 16


@pytest.fixture(scope="module")
def clean_png(tmp_path_factory):
    """A smooth 16 x 16 RGB test image."""
    rows, cols = np.meshgrid(np.linspace(0, 1, SIZE), np.linspace(0, 1, SIZE), indexing="ij")
    pixels = np.stack([rows, cols, (rows + cols) / 2], axis=-1) * 255
    path = tmp_path_factory.mktemp("images") / "clean.png"
    Image.fromarray(pixels.round().astype(np.uint8)).save(path)
    return path


def restore_args(inputs, tiny_prior_dir, output, *extra):
    return [
        "restore", *[str(i) for i in inputs],
        "--operator", "gaussian_blur", "--operator-arg", "kernel_size=5",
        "--noise-sigma", "0.05", "--prior", str(tiny_prior_dir), "--method", "dps",
        "--steps", "3", "--device", "cpu", "--output", str(output), *extra,
    ]


def png(path):
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def first_run(tiny_prior_dir, clean_png, tmp_path_factory):
    """One in-process ``invsolve restore`` (gaussian_blur, dps, 3 steps, seed 0): output path and stdout."""
    out = tmp_path_factory.mktemp("run") / "results" / "restored.png"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(restore_args([clean_png], tiny_prior_dir, out, "--seed", "0", "--quiet"))
    assert status == 0
    return out, stdout.getvalue()


def test_restore_end_to_end(first_run, clean_png):
    out, stdout = first_run
    measurement = out.with_name("restored.measurement.png")
    assert png(out).shape == (SIZE, SIZE, 3)
    assert png(measurement).shape == (SIZE, SIZE, 3)
    # DPS takes one network evaluation per step.
    assert re.search(r"NFE 3\b", stdout) and re.search(r"PSNR -?[0-9.]+ dB", stdout)

    # The written measurement is A(x) + 0.05 n with n drawn from seed + 1, as documented.
    op = operators.build("gaussian_blur", kernel_size=5)
    expected = op.measure(load_image(clean_png), 0.05, generator=torch.Generator().manual_seed(1))
    assert np.abs(png(measurement).astype(int) - to_uint8(expected[0]).permute(1, 2, 0).numpy()).max() <= 1
    assert np.abs(png(measurement).astype(int) - png(clean_png).astype(int)).mean() > 2  # blurred and noisy


def test_same_seed_same_restoration(first_run, tiny_prior_dir, clean_png, tmp_path):
    again = tmp_path / "again.png"
    assert main(restore_args([clean_png], tiny_prior_dir, again, "--seed", "0", "--quiet")) == 0
    assert np.array_equal(png(again), png(first_run[0]))


def test_restore_from_a_measurement_file(first_run, tiny_prior_dir, tmp_path, capsys):
    measured = first_run[0].with_name("restored.measurement.png")
    out = tmp_path / "from_file.png"
    assert main(restore_args([], tiny_prior_dir, out, "--measurement", str(measured), "--quiet")) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    assert png(out).shape == (SIZE, SIZE, 3)
    assert "PSNR" not in summary  # no clean reference was given
    assert not (tmp_path / "from_file.measurement.png").exists()


def test_super_resolution_restores_from_the_small_image(tiny_prior_dir, tmp_path):
    small = tmp_path / "small.png"
    Image.fromarray(np.full((SIZE // 2, SIZE // 2, 3), 100, dtype=np.uint8)).save(small)
    out = tmp_path / "large.png"
    args = [
        "restore", "--measurement", str(small), "--operator", "super_resolution", "--operator-arg", "factor=2",
        "--prior", str(tiny_prior_dir), "--steps", "2", "--device", "cpu", "--output", str(out), "--quiet",
    ]
    assert main(args) == 0
    assert png(out).shape == (SIZE, SIZE, 3)


def test_restore_defaults_to_the_bundled_prior(clean_png, tmp_path, capsys):
    """Without --prior the bundled natural-64 restores the image at its own size."""
    out = tmp_path / "bundled.png"
    status = main(["restore", str(clean_png), "--operator", "gaussian_blur", "--operator-arg", "kernel_size=5",
                   "--method", "pigdm", "--steps", "2", "--device", "cpu", "--output", str(out), "--quiet"])
    assert status == 0 and "restored:" in capsys.readouterr().out
    assert Image.open(out).size == Image.open(clean_png).size


def test_python_dash_m_entry_point_with_samples_and_strip(tiny_prior_dir, clean_png, tmp_path):
    out = tmp_path / "sub" / "restored.png"
    args = restore_args([clean_png], tiny_prior_dir, out, "--num-samples", "2", "--compare")
    done = subprocess.run(
        [sys.executable, "-m", "invsolve", *args], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "restored:" in done.stdout
    for name in ("restored.png", "restored.measurement.png", "restored.sample0.png", "restored.sample1.png"):
        assert png(out.parent / name).shape == (SIZE, SIZE, 3)
    samples = [png(out.parent / f"restored.sample{k}.png").astype(float) for k in range(2)]
    assert not np.array_equal(samples[0], samples[1])
    # OUT is the mean of the samples, up to uint8 rounding, wherever neither sample was clipped.
    unclipped = (samples[0] > 0) & (samples[0] < 255) & (samples[1] > 0) & (samples[1] < 255)
    assert unclipped.sum() > 50
    assert np.abs(png(out) - (samples[0] + samples[1]) / 2)[unclipped].max() <= 1.0
    assert png(out.parent / "restored.compare.png").shape == (SIZE, 3 * SIZE + 2 * STRIP_GAP, 3)


def test_list_names_every_operator_and_method(capsys):
    assert main(["list"]) == 0
    stdout = capsys.readouterr().out
    for name in [*operators.available(), *methods()]:
        assert re.search(rf"^  {re.escape(name)}\b", stdout, re.MULTILINE), name
    assert "gaussian_blur" in stdout and "dps" in stdout and "priors" in stdout
    rule = stdout.split("default method (no --method)", 1)[1].split("priors", 1)[0]
    assert re.findall(r"^  (\w+) +when the operator", rule, re.MULTILINE)[:4] == ["ddrm", "diffpir", "dps", "enkg"]


def test_list_shows_bundled_priors_and_presets(monkeypatch, capsys):
    from invsolve.commands import list as list_command

    monkeypatch.setattr(list_command, "bundled", lambda: ["tiny-prior"])
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    priors_section = out.split("priors", 1)[1]
    assert re.search(r"^  tiny-prior +bundled", priors_section, re.MULTILINE)
    assert re.search(r"^  gauss61$", out.split("presets", 1)[1], re.MULTILINE)


BAD_INPUTS = {
    "missing input file": (["nowhere.png"], [], "no image file"),
    "unknown operator": ([], ["--operator", "gausian_blur"], "available: .*gaussian_blur"),
    "operator-arg without =": ([], ["--operator-arg", "kernel_size5"], "KEY=VALUE"),
    "operator-arg of the wrong kind": ([], ["--operator-arg", "kernel_size=wide"], "kernel_size"),
    "unknown method": ([], ["--method", "dpss"], "unknown method 'dpss'.*dps"),
    "wrong measurement shape": ([], ["--measurement", "SMALL"], "does not match"),
    "not a png output": ([], ["--output", "out.jpg"], r"\.png"),
    "missing option": ([], ["--operator"], "expected one argument"),
    "nan noise": ([], ["--noise-sigma", "nan"], "--noise-sigma: must be a finite number >= 0"),
    "inf noise with a measurement": ([], ["--measurement", "SAME", "--noise-sigma", "inf"], "must be a finite number"),
    "nan method argument": ([], ["--method-arg", "step_size=nan"], "step_size must be a finite number, got nan"),
    "negative method argument": ([], ["--method-arg", "step_size=-1"], "step_size must be >= 0, got -1"),
    "boolean method argument": ([], ["--method-arg", "step_size=true"], "step_size must be a number, got True"),
    "text method argument": ([], ["--method-arg", "step_size=abc"], "step_size must be a number, got 'abc'"),
    "huge step count": ([], ["--steps", "99999999999999999999"], "--steps: must be between 1 and 100000"),
    "fractional step count": ([], ["--steps", "2.7"], "--steps: expected a whole number, got '2.7'"),
    "fractional sample count": ([], ["--num-samples", "2.5"], "--num-samples: expected a whole number"),
    "huge size": ([], ["--size", "20000"], r"1x3x20000x20000 .* needs an estimated [0-9.]+ GiB .* free"),
    "std of one sample": ([], ["--std"], "--std needs --num-samples K with K >= 2"),
    "output under a file": ([], ["--output", "FILE/out.png"], "is a file, not a folder"),
    "truncated input image": (["TRUNCATED"], [], "truncated.png' cannot be decoded"),
    "diverging method": ([], ["--method-arg", "step_size=1e30"], r"dps diverged: .* at step \d+ \(sigma"),
    "kernel too large": ([], ["--operator", "uniform_blur", "--operator-arg", "size=100001"], "100001"),
}


@pytest.fixture
def bad_files(tmp_path, clean_png):
    """Stand-ins for the markers of BAD_INPUTS: an 8 x 8 image, a copy of the input, a file, a truncated PNG."""
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(small)
    (tmp_path / "file").write_text("not a folder")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(clean_png.read_bytes()[:-40])
    return {"SMALL": str(small), "SAME": str(clean_png), "FILE/out.png": str(tmp_path / "file" / "out.png"),
            "TRUNCATED": str(truncated)}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_give_one_line_and_a_nonzero_status(case, tiny_prior_dir, clean_png, tmp_path, capsys, bad_files):
    inputs, extra, message = BAD_INPUTS[case]
    extra = [bad_files.get(e, e) for e in extra]
    inputs = [bad_files.get(str(i), i) for i in inputs]
    args = restore_args(inputs or [clean_png], tiny_prior_dir, tmp_path / "out.png", "--quiet", *extra)
    if "--operator" in extra:  # another operator: drop the default one's argument
        args.remove("kernel_size=5")
        args.pop(args.index("--operator-arg"))
    status = main(args)
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("invsolve: error: "), err
    assert re.search(message, err), err
    assert not (tmp_path / "out.png").exists()
    assert not list(tmp_path.glob("out.*.png"))


def test_matrix_operator_with_a_number_gives_one_line(tiny_prior_dir, clean_png, tmp_path, capsys):
    args = ["restore", str(clean_png), "--operator", "matrix", "--operator-arg", "A=3", "--prior", str(tiny_prior_dir),
            "--output", str(tmp_path / "out.png"), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "2-D matrix" in err, err


def test_on_nan_warn_writes_the_last_finite_state(tiny_prior_dir, clean_png, tmp_path, capsys):
    out = tmp_path / "out.png"
    args = restore_args([clean_png], tiny_prior_dir, out, "--quiet", "--method-arg", "step_size=1e30", "--on-nan", "warn")
    with pytest.warns(RuntimeWarning, match="diverged"):
        assert main(args) == 0
    assert "note: dps diverged (--on-nan warn)" in capsys.readouterr().out
    assert png(out).shape == (SIZE, SIZE, 3)


def test_restore_prints_the_psnr_of_the_clamped_image_it_writes(tiny_prior_dir, clean_png, tmp_path, capsys, monkeypatch):
    """A restoration far outside [-1, 1] is clamped before it is written and scored, as evaluate scores it."""
    from invsolve.commands import restore as restore_command
    from invsolve.metrics import psnr
    from invsolve.result import Result

    def overshooting_solve(y, *args, **kwargs):
        samples = torch.full((1, *y.shape), 3.0)
        samples[..., : SIZE // 2, :] = -5.0
        return Result(samples=samples, nfe=0, operator_calls=0, seconds=0.0, method="dps", options={"steps": 1})

    monkeypatch.setattr(restore_command, "solve", overshooting_solve)
    assert main(restore_args([clean_png], tiny_prior_dir, tmp_path / "out.png", "--quiet")) == 0
    printed = float(re.search(r"PSNR (-?[0-9.]+) dB", capsys.readouterr().out).group(1))
    written = load_image(tmp_path / "out.png")
    assert torch.equal(written, torch.cat([-torch.ones(1, 3, SIZE // 2, SIZE), torch.ones(1, 3, SIZE // 2, SIZE)], 2))
    assert printed == pytest.approx(psnr(written, load_image(clean_png)).item(), abs=0.006)  # printed to 0.01 dB


def test_std_map_is_the_spread_of_the_samples(tiny_prior_dir, clean_png, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert main(restore_args([clean_png], tiny_prior_dir, out, "--quiet", "--num-samples", "3", "--std")) == 0
    plan, printed = capsys.readouterr().out.strip().splitlines()  # the plan, then the summary
    assert plan.startswith("plan: dps, 3 steps, NFE 3, each with a backward pass: about ")
    scale = float(re.search(r"out\.std\.png \(std of the 3 samples; white = ([0-9.e-]+) on the \[-1, 1\] scale\)", printed).group(1))
    samples = torch.stack([load_image(tmp_path / f"out.sample{k}.png")[0] for k in range(3)]).double()
    expected = samples.std(dim=0).pow(2).mean(dim=0).sqrt()  # unbiased std per channel, RMS over channels
    shown = torch.from_numpy(png(tmp_path / "out.std.png").astype(np.float64)) / 255 * scale
    assert shown.shape == (SIZE, SIZE) and scale > 0.01
    # The map is computed from the float samples; the sample PNGs and the map are 8-bit.
    assert (shown - expected).abs().max() <= 2 / 127.5 + scale / 255
    assert expected.max() == pytest.approx(scale, abs=2 / 127.5)


def test_output_checks_come_before_any_work(tiny_prior_dir, clean_png, tmp_path, capsys, monkeypatch):
    """A read-only folder is refused before the prior is loaded (os.access decides; root may write anywhere)."""
    import invsolve.io
    import priors

    monkeypatch.setattr(priors, "load_prior", lambda *a, **k: pytest.fail("loaded the prior before refusing"))
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(invsolve.io.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    assert main(restore_args([clean_png], tiny_prior_dir, locked / "sub" / "out.png", "--quiet")) == 2
    assert "is not writable" in capsys.readouterr().err


def test_debug_shows_the_traceback(tiny_prior_dir, tmp_path, capsys):
    status = main(["--debug", *restore_args(["nowhere.png"], tiny_prior_dir, tmp_path / "out.png")])
    err = capsys.readouterr().err
    assert status == 2
    assert "Traceback" in err and "FileNotFoundError" in err


def test_restore_script_wraps_the_command_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["restore.py", "--help"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "scripts" / "restore.py"), run_name="__main__")
    assert stop.value.code == 0
    assert "--measurement" in capsys.readouterr().out
