"""``invsolve evaluate`` end to end on a tiny diffusers prior: artefacts, closed-form checks of the
measurement and the no-learning baseline, resuming, ``--overwrite``, and two accelerate processes."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import invsolve.evaluation.work as work
import operators
from invsolve.cli import main
from invsolve.evaluation.dataset import list_images, safe_name, shard
from invsolve.io import load_image

SIZE, STEPS, BOX, NOISE = 16, 3, 8, 0.05
#: Agreement of scores between runs with other process or thread counts (float32 samplers, float64 metrics).
PSNR_TOLERANCE_DB, SSIM_TOLERANCE = 1e-4, 1e-5
IMAGES = ["gray photo.jpg", "smooth.png", "sub/alpha.png"]
METHODS = ["no-learning", "dps", "ddnm"]
original_solve, original_no_learning = work.solve, work.no_learning


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Three images (grayscale JPEG, non-square RGB, RGBA in a sub-folder), a corrupt PNG and a text file."""
    folder = tmp_path_factory.mktemp("data")
    rows, cols = np.meshgrid(np.linspace(0, 1, 20), np.linspace(0, 1, 24), indexing="ij")
    smooth = np.stack([rows, cols, (1 + np.sin(6 * rows * cols)) / 2], axis=-1)
    Image.fromarray((smooth * 255).round().astype(np.uint8)).save(folder / "smooth.png")
    Image.fromarray((np.cos(5 * cols[:, :20]) * 120 + 128).astype(np.uint8), mode="L").save(folder / "gray photo.jpg")
    (folder / "sub").mkdir()
    alpha = np.concatenate([smooth[:, ::-1], rows[..., None]], axis=-1)
    Image.fromarray((alpha * 255).round().astype(np.uint8), mode="RGBA").save(folder / "sub" / "alpha.png")
    (folder / "broken.png").write_bytes((folder / "smooth.png").read_bytes()[:60])
    (folder / "notes.txt").write_text("not an image\n")
    return folder


@pytest.fixture(scope="module")
def offline_torch_home(tmp_path_factory):
    """An empty torch hub cache: the LPIPS backbone weights cannot be found, as on an offline machine."""
    return tmp_path_factory.mktemp("torch_home")


def evaluate_args(data_dir, tiny_prior_dir, out, *extra):
    return [
        "evaluate", str(data_dir), "--operator", "inpainting", "--operator-arg", "mask=box",
        "--operator-arg", f"size={BOX}", "--noise-sigma", str(NOISE), "--prior", str(tiny_prior_dir),
        "--methods", "dps,ddnm", "--size", str(SIZE), "--steps", str(STEPS), "--out", str(out), "--quiet", *extra,
    ]


@pytest.fixture(scope="module")
def reference_out(tmp_path_factory, data_dir, tiny_prior_dir, offline_torch_home):
    """One complete single-process evaluation."""
    out = tmp_path_factory.mktemp("reference") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(offline_torch_home))
        assert main(evaluate_args(data_dir, tiny_prior_dir, out)) == 0
    return out


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def scores(rows):
    """The reproducible part of metrics.csv rows (not seconds or memory), keyed by (image, method)."""
    keep = ("name", "psnr", "ssim", "lpips", "nfe")
    return {(r["image"], r["method"]): tuple(r[k] for k in keep) for r in rows}


def as_unit(path):
    """A PNG as an (H, W, C) float array on [0, 1]."""
    return ((load_image(path)[0] + 1) / 2).permute(1, 2, 0).double().numpy()


def test_first_run_writes_every_artefact(reference_out, data_dir):
    rows = read_csv(reference_out / "metrics.csv")
    assert sorted((r["image"], r["method"]) for r in rows) == sorted((i, m) for i in IMAGES for m in METHODS)
    assert read_csv(reference_out / "errors.csv")[0]["image"] == "broken.png"
    assert len(read_csv(reference_out / "errors.csv")) == 1
    for row in rows:
        assert row["name"] == safe_name(row["image"]) and row["lpips"] == ""
        assert float(row["nfe"]) == (0 if row["method"] == "no-learning" else STEPS)
        truth = as_unit(reference_out / "ground_truth" / f"{row['name']}.png")
        restored = as_unit(reference_out / "methods" / row["method"] / f"{row['name']}.png")
        assert truth.shape == (SIZE, SIZE, 3)
        # The CSV scores the unquantised restoration; the PNGs are 8-bit, so allow a small gap.
        assert float(row["psnr"]) == pytest.approx(peak_signal_noise_ratio(truth, restored, data_range=1), abs=0.05)
        expected_ssim = structural_similarity(
            restored, truth, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=2
        )
        assert float(row["ssim"]) == pytest.approx(expected_ssim, abs=0.01)

    summary = json.loads((reference_out / "summary.json").read_text())
    assert summary["images"] == {"listed": 4, "evaluated": 3, "errors": 1, "failed_runs": 0}
    assert list(summary["methods"]) == METHODS
    for method, stats in summary["methods"].items():
        values = [float(r["psnr"]) for r in rows if r["method"] == method]
        assert stats["images"] == 3 and stats["lpips"] is None
        assert stats["psnr"]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
        assert stats["psnr"]["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-9)
    assert summary["lpips"]["available"] is False and summary["lpips"]["backbone"] == "VGG-16"
    markdown = (reference_out / "summary.md").read_text()
    assert "| dps | 3 |" in markdown and "n/a" in markdown and "unavailable" in markdown

    grid = np.asarray(Image.open(reference_out / "grid.png"))
    assert grid.shape == (3 * (SIZE + 2) - 2, 5 * (SIZE + 2) - 2, 3)
    first = safe_name(IMAGES[0])
    for column, folder in enumerate(["ground_truth", "measurement", "methods/no-learning"]):
        tile = grid[:SIZE, column * (SIZE + 2) : column * (SIZE + 2) + SIZE]
        np.testing.assert_array_equal(tile, np.asarray(Image.open(reference_out / folder / f"{first}.png")))


def test_measurement_is_seeded_by_file_name_and_baseline_is_the_pseudo_inverse(reference_out, data_dir):
    """Closed form for a box mask m: y = m x + sigma eps with eps from the name's seed, A^+ y = m y."""
    operator = operators.build("inpainting", mask="box", size=BOX)
    rows = {(r["image"], r["method"]): r for r in read_csv(reference_out / "metrics.csv")}
    for key in IMAGES:
        x = load_image(data_dir / key, size=SIZE)
        digest = hashlib.sha256(f"measurement:0:{key}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        mask = operator(torch.ones_like(x))
        y = mask * x + NOISE * torch.randn(x.shape, generator=generator)
        saved_y = load_image(reference_out / "measurement" / f"{safe_name(key)}.png")
        assert (saved_y - y.clamp(-1, 1)).abs().max() <= 1 / 127.5 + 1e-6
        baseline = (mask * y).clamp(-1, 1)
        saved = load_image(reference_out / "methods" / "no-learning" / f"{safe_name(key)}.png")
        assert (saved - baseline).abs().max() <= 1 / 127.5 + 1e-6
        truth, estimate = (((t[0] + 1) / 2).permute(1, 2, 0).double().numpy() for t in (x, baseline))
        expected = peak_signal_noise_ratio(truth, estimate, data_range=1)
        assert float(rows[(key, "no-learning")]["psnr"]) == pytest.approx(expected, abs=1e-4)


@pytest.fixture
def offline(monkeypatch, offline_torch_home):
    monkeypatch.setenv("TORCH_HOME", str(offline_torch_home))


def test_rerun_does_no_work_and_overwrite_redoes_it(
    reference_out, data_dir, tiny_prior_dir, offline, tmp_path, monkeypatch, caplog
):
    out = tmp_path / "out"
    shutil.copytree(reference_out, out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "methods").rglob("*.png")}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished pair was computed again")

    monkeypatch.setattr(work, "solve", refuse)
    monkeypatch.setattr(work, "no_learning", refuse)
    assert main(evaluate_args(data_dir, tiny_prior_dir, out)) == 0
    assert scores(read_csv(out / "metrics.csv")) == scores(read_csv(reference_out / "metrics.csv"))
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "methods").rglob("*.png")}
    assert sum("LPIPS unavailable" in record.getMessage() for record in caplog.records) == 1

    calls = []
    monkeypatch.setattr(work, "solve", lambda *a, **k: calls.append(k["method"]) or original_solve(*a, **k))
    monkeypatch.setattr(work, "no_learning", lambda *a: calls.append("no-learning") or original_no_learning(*a))
    assert main(evaluate_args(data_dir, tiny_prior_dir, out, "--overwrite")) == 0
    assert sorted(calls) == sorted(METHODS * len(IMAGES))
    assert scores(read_csv(out / "metrics.csv")) == scores(read_csv(reference_out / "metrics.csv"))


def test_interrupted_run_keeps_what_it_finished(reference_out, data_dir, tiny_prior_dir, offline, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = []

    def interrupt_second_solve(*args, **kwargs):
        calls.append(kwargs["method"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original_solve(*args, **kwargs)

    monkeypatch.setattr(work, "solve", interrupt_second_solve)
    assert main(evaluate_args(data_dir, tiny_prior_dir, out)) == 130
    finished = scores(read_csv(out / "metrics.csv"))
    assert list(finished) == [(IMAGES[0], "no-learning"), (IMAGES[0], "dps")]

    calls.clear()
    monkeypatch.setattr(work, "solve", lambda *a, **k: calls.append(k["method"]) or original_solve(*a, **k))
    assert main(evaluate_args(data_dir, tiny_prior_dir, out)) == 0
    assert len(calls) == 2 * len(IMAGES) - 1
    assert scores(read_csv(out / "metrics.csv")) == scores(read_csv(reference_out / "metrics.csv"))


def test_changed_setup_is_refused_without_overwrite(reference_out, data_dir, tiny_prior_dir, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference_out, out)
    args = evaluate_args(data_dir, tiny_prior_dir, out)
    args[args.index("--noise-sigma") + 1] = "0.1"
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert "noise_sigma" in error and "--overwrite" in error and len(error.splitlines()) == 1


def test_names_cannot_leave_out_or_collide_and_shards_are_disjoint(tmp_path):
    for key in ["../../etc/passwd", "a b.png", "a_b.png", "x/a b.png", "..png", "-rf.png", "ü.png"]:
        name = safe_name(key)
        assert "/" not in name and not name.startswith((".", "-")) and name.isascii()
    assert len({safe_name(k) for k in ["a b.png", "a_b.png", "x/a b.png", "a b.jpg"]}) == 4
    for name in ["b.png", "a.PNG", "c.jpeg", "z.txt", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"")
    keys = [entry.key for entry in list_images(tmp_path)]
    assert keys == ["a.PNG", "b.png", "c.jpeg"]
    entries = list_images(tmp_path)
    parts = [shard(entries, i, 2) for i in range(2)]
    assert sorted(e.key for part in parts for e in part) == keys and not set(parts[0]) & set(parts[1])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        list_images(tmp_path / "empty")


def test_two_accelerate_processes_give_the_rows_of_one(
    reference_out, data_dir, tiny_prior_dir, offline_torch_home, tmp_path
):
    """accelerate 1.15 starts several CPU processes only through its torchrun launcher (--multi_gpu);
    CUDA is hidden and ACCELERATE_USE_CPU makes them talk through gloo.  Other processes and thread
    counts reorder float reductions, so scores agree within float noise: PSNR within 1e-4 dB and
    SSIM within 1e-5 (absolute), not bit for bit."""
    out = tmp_path / "out"
    env = {
        **os.environ, "TORCH_HOME": str(offline_torch_home), "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "1",
        "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf"),
    }
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "invsolve",
    ]
    done = subprocess.run(
        launch + evaluate_args(data_dir, tiny_prior_dir, out), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sum("LPIPS unavailable" in line for line in done.stderr.splitlines()) == 1
    ours, reference = scores(read_csv(out / "metrics.csv")), scores(read_csv(reference_out / "metrics.csv"))
    assert ours.keys() == reference.keys()
    for pair, (name, psnr, ssim, lpips, nfe) in ours.items():
        assert (name, lpips, nfe) == (reference[pair][0], reference[pair][3], reference[pair][4])
        assert float(psnr) == pytest.approx(float(reference[pair][1]), rel=0, abs=PSNR_TOLERANCE_DB)
        assert float(ssim) == pytest.approx(float(reference[pair][2]), rel=0, abs=SSIM_TOLERANCE)
    assert not list(out.glob("*.rank*.csv"))
    assert [r["image"] for r in read_csv(out / "errors.csv")] == ["broken.png"]
    assert json.loads((out / "summary.json").read_text())["processes"] == 2
