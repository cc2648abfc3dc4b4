"""``invsolve evaluate`` keeps OUT safe: it deletes only what its manifest records, refuses an OUT that
overlaps DATA_DIR or holds someone else's files, checks OUT before any work, records diverged runs in
errors.csv (never as done), holds a lock against a second run, and resumes after SIGINT or SIGKILL.

Runs use an analytic Gaussian prior (``tests/helpers/gaussian_evaluate.py``) so that subprocesses start fast."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import invsolve.io
import priors
from invsolve.cli import main
from invsolve.evaluation import EvaluationSettings
from invsolve.io import load_image
from tests.helpers.gaussian_evaluate import SIZE, SlowGaussianPrior, load_gaussian_prior, save_random_images

HELPER = Path(__file__).resolve().parents[1] / "helpers" / "gaussian_evaluate.py"
IMAGES = 4
METHODS = ("no-learning", "dps", "ddnm")
#: Agreement of scores between processes (thread counts may differ): PSNR in dB, SSIM absolute.
PSNR_TOLERANCE_DB, SSIM_TOLERANCE = 1e-4, 1e-5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return save_random_images(tmp_path_factory.mktemp("data"), IMAGES, seed=0)


@pytest.fixture(autouse=True)
def gaussian_prior(monkeypatch):
    monkeypatch.setattr(priors, "load_prior", load_gaussian_prior)


def evaluate_args(data_dir, out, *extra, steps=3):
    return [
        "evaluate", str(data_dir), "--operator", "inpainting", "--operator-arg", "mask=box", "--operator-arg",
        "size=8", "--noise-sigma", "0.05", "--prior", "gaussian", "--methods", "dps,ddnm", "--size", str(SIZE),
        "--steps", str(steps), "--metrics", "psnr,ssim", "--out", str(out), "--quiet", *extra,
    ]


def read_rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def one_line_error(capsys, pattern):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("invsolve: error: "), err
    assert pattern in err, err
    return err


def test_overwrite_deletes_only_what_the_manifest_records(data_dir, tmp_path):
    out = tmp_path / "proj"
    assert main(evaluate_args(data_dir, out)) == 0
    notes = [out / "notes.txt", out / "methods" / "notes.txt", out / "methods" / "dps" / "notes.txt"]
    for note in notes:
        note.write_text("mine\n")
    manifest = (out / "invsolve-manifest.txt").read_text().splitlines()
    assert "methods/notes.txt" not in manifest and "notes.txt" not in manifest
    assert len(read_rows(out / "metrics.csv")) == IMAGES * len(METHODS)
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert set(pngs) <= set(manifest)
    assert main(evaluate_args(data_dir, out, "--overwrite")) == 0
    assert all(note.read_text() == "mine\n" for note in notes)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == pngs
    assert len(read_rows(out / "metrics.csv")) == IMAGES * len(METHODS)


def test_a_folder_with_someone_elses_outputs_is_refused(data_dir, tmp_path, capsys):
    """DATA_DIR-like content (methods/x.png) in an OUT without a manifest is never overwritten or deleted."""
    out = tmp_path / "d"
    (out / "methods").mkdir(parents=True)
    (out / "methods" / "x.png").write_bytes(b"a user's file")
    for extra in ((), ("--overwrite",)):
        assert main(evaluate_args(data_dir, out, *extra)) == 2
        one_line_error(capsys, "already holds methods")
    assert (out / "methods" / "x.png").read_bytes() == b"a user's file"
    assert sorted(p.name for p in out.iterdir()) == ["methods"]


def test_symlinks_never_lead_writes_or_deletions_outside_out(data_dir, tmp_path, capsys):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    assert main(evaluate_args(data_dir, out)) == 0
    victim = sorted((out / "methods" / "dps").iterdir())[0].name
    elsewhere.mkdir()
    (elsewhere / victim).write_bytes(b"precious")
    for png in (out / "methods" / "dps").iterdir():
        png.unlink()
    (out / "methods" / "dps").rmdir()
    (out / "methods" / "dps").symlink_to(elsewhere, target_is_directory=True)
    assert main(evaluate_args(data_dir, out, "--overwrite")) == 2
    one_line_error(capsys, "leads outside the output folder")
    assert sorted(p.name for p in elsewhere.iterdir()) == [victim]
    assert (elsewhere / victim).read_bytes() == b"precious"


@pytest.mark.parametrize("where", ["same", "out inside data", "data inside out"])
def test_out_overlapping_data_dir_is_refused(tmp_path, where, capsys, monkeypatch):
    monkeypatch.setattr(priors, "load_prior", lambda *a, **k: pytest.fail("loaded the prior before refusing"))
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.zeros((SIZE, SIZE, 3), dtype=np.uint8)).save(data / "a.png")
    out = {"same": data, "out inside data": data / "results", "data inside out": tmp_path}[where]
    assert main(evaluate_args(data, out, "--overwrite")) == 2
    one_line_error(capsys, "DATA_DIR")
    assert sorted(p.name for p in data.iterdir()) == ["a.png"]


def test_out_under_a_file_or_read_only_is_refused_before_any_work(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(priors, "load_prior", lambda *a, **k: pytest.fail("loaded the prior before refusing"))
    (tmp_path / "file").write_text("x")
    assert main(evaluate_args(data_dir, tmp_path / "file" / "out")) == 2
    one_line_error(capsys, "is a file, not a folder")
    # Simulate a read-only parent (root may write anywhere, so os.access is what the check asks).
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(invsolve.io.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    assert main(evaluate_args(data_dir, locked / "out")) == 2
    one_line_error(capsys, "is not writable")
    assert not (locked / "out").exists()


def test_non_finite_noise_sigma_is_refused(data_dir, tmp_path, capsys):
    for bad in ("nan", "inf", "-0.1"):
        args = evaluate_args(data_dir, tmp_path / "out")
        args[args.index("--noise-sigma") + 1] = bad
        assert main(args) == 2
        one_line_error(capsys, "--noise-sigma")
    with pytest.raises(ValueError, match="finite"):
        EvaluationSettings(str(data_dir), str(tmp_path), "inpainting", "gaussian", ["dps"], noise_sigma=float("nan")).check()
    assert not (tmp_path / "out").exists()


class NaNPrior(SlowGaussianPrior):
    def denoise(self, x, sigma):
        return x * float("nan")


def test_diverged_runs_go_to_errors_and_are_retried(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    monkeypatch.setattr(priors, "load_prior", lambda *a, **k: NaNPrior())
    assert main(evaluate_args(data_dir, out)) == 0
    assert "8 diverged runs in errors.csv" in capsys.readouterr().out
    rows = read_rows(out / "metrics.csv")
    assert sorted({r["method"] for r in rows}) == ["no-learning"] and len(rows) == IMAGES
    errors = read_rows(out / "errors.csv")
    assert sorted((e["image"], e["method"]) for e in errors) == sorted(
        (f"img{i}.png", m) for i in range(IMAGES) for m in ("dps", "ddnm")
    )
    assert all("DivergenceError" in e["error"] and "step 0" in e["error"] for e in errors)
    assert not (out / "methods" / "dps").exists()
    assert json.loads((out / "summary.json").read_text())["images"]["failed_runs"] == 2 * IMAGES

    monkeypatch.setattr(priors, "load_prior", load_gaussian_prior)
    assert main(evaluate_args(data_dir, out)) == 0
    assert len(read_rows(out / "metrics.csv")) == IMAGES * len(METHODS)
    assert read_rows(out / "errors.csv") == []


def test_a_nan_row_is_not_counted_as_done(data_dir, tmp_path):
    out = tmp_path / "out"
    assert main(evaluate_args(data_dir, out)) == 0
    rows = read_rows(out / "metrics.csv")
    first = rows[0]
    text = (out / "metrics.csv").read_text().replace(first["psnr"], "nan", 1)
    (out / "metrics.csv").write_text(text)
    assert main(evaluate_args(data_dir, out)) == 0
    again = {(r["image"], r["method"]): r for r in read_rows(out / "metrics.csv")}
    assert len(again) == len(rows) and again[(first["image"], first["method"])]["psnr"] == first["psnr"]


# --- subprocesses: interrupted runs and a second run at the same time ---------------------------------


def start(data_dir, out, delay):
    env = {**os.environ, "GAUSSIAN_PRIOR_DELAY": str(delay), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, str(HELPER), *evaluate_args(data_dir, out, steps=10)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint,
    )


def _default_sigint():
    """The child gets SIGINT as from a terminal: a suite started in the background by a
    non-interactive shell (``pytest &``, ``nohup``) has SIGINT ignored, which children inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def complete_rows(path):
    """Rows of a CSV file that end with a newline (what a rerun keeps), header excluded."""
    if not path.is_file():
        return 0
    text = path.read_text()
    return max(0, text[: text.rfind("\n") + 1].count("\n") - 1)


def wait_for_rows(process, path, rows, timeout=120):
    deadline = time.monotonic() + timeout
    while complete_rows(path) < rows:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)


def scores(path):
    rows = read_rows(path)
    keyed = {(r["image"], r["method"]): r for r in rows}
    assert len(keyed) == len(rows), "a row is duplicated"
    return keyed


def test_killed_runs_resume_to_the_metrics_of_an_uninterrupted_run(data_dir, tmp_path):
    reference = tmp_path / "reference"
    assert main(evaluate_args(data_dir, reference, steps=10)) == 0
    out = tmp_path / "out"
    for kill in (signal.SIGKILL, signal.SIGINT):
        # Signal once this process has written two rows of its own: it is then mid-run and, at
        # 0.1 s per network call, seconds away from its end even on a loaded machine.
        done = complete_rows(out / "metrics.csv")
        assert done + 2 < IMAGES * len(METHODS), "the killed run finished nearly everything"
        process = start(data_dir, out, delay=0.1)
        wait_for_rows(process, out / "metrics.csv", done + 2)
        process.send_signal(kill)
        _, err = process.communicate(timeout=60)
        assert process.returncode == (130 if kill == signal.SIGINT else -signal.SIGKILL), (done, err[-2000:])
    assert main(evaluate_args(data_dir, out, steps=10)) == 0

    ours, expected = scores(out / "metrics.csv"), scores(reference / "metrics.csv")
    assert ours.keys() == expected.keys() and len(ours) == IMAGES * len(METHODS)
    for pair, row in ours.items():
        assert row["nfe"] == expected[pair]["nfe"]
        assert float(row["psnr"]) == pytest.approx(float(expected[pair]["psnr"]), rel=0, abs=PSNR_TOLERANCE_DB)
        assert float(row["ssim"]) == pytest.approx(float(expected[pair]["ssim"]), rel=0, abs=SSIM_TOLERANCE)
        restored = load_image(out / "methods" / row["method"] / f"{row['name']}.png")
        assert restored.shape == (1, 3, SIZE, SIZE)
    assert not list(out.rglob(".*.tmp"))


def test_a_second_run_into_the_same_out_is_refused_and_a_killed_lock_is_released(data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    process = start(data_dir, out, delay=0.1)  # seconds of work left after the first row, even on a loaded machine
    try:
        wait_for_rows(process, out / "metrics.csv", 1)
        assert main(evaluate_args(data_dir, out, steps=10)) == 2
        one_line_error(capsys, f"in use by another 'invsolve evaluate' (pid {process.pid}")
        assert main(evaluate_args(data_dir, out, "--overwrite", steps=10)) == 2
        one_line_error(capsys, "in use by another")
        assert complete_rows(out / "metrics.csv") >= 1  # the refused --overwrite deleted nothing
    finally:
        process.kill()
        process.communicate(timeout=60)
    assert main(evaluate_args(data_dir, out, steps=10)) == 0
    assert len(scores(out / "metrics.csv")) == IMAGES * len(METHODS)
