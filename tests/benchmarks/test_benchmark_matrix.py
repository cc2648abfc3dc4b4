"""The methods x tasks matrix: its no-learning estimates in closed form, its flags, refusals and
failures as cells, and a --quick smoke run of the command."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from invsolve.benchmarks import matrix as matrix_module
from invsolve.benchmarks.images import BenchmarkImages, benchmark_images, heldout_images
from invsolve.benchmarks.matrix import BELOW_BASELINE, NON_FINITE, MatrixConfig, run_matrix
from invsolve.benchmarks.matrix_report import markdown_table, write_report
from invsolve.benchmarks.tasks import TASK_PRESETS, benchmark_task, no_learning_estimate
from invsolve.cli import main
from invsolve.evaluation.baseline import NO_LEARNING
from invsolve.result import Result
from priors import load_prior


def _image(size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_blur_baseline_is_the_blurred_measurement():
    op = benchmark_task("gaussian_blur").operator(32, 0)
    y = op.measure(_image(), 0.05, torch.Generator().manual_seed(1))
    torch.testing.assert_close(no_learning_estimate(op, y, (1, 3, 32, 32)), y.clamp(-1, 1), rtol=0, atol=0)


def test_super_resolution_baseline_is_bicubic_upsampling():
    op = benchmark_task("sr4").operator(32, 0)
    y = op(_image())
    expected = F.interpolate(y, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)
    torch.testing.assert_close(no_learning_estimate(op, y, (1, 3, 32, 32)), expected, rtol=0, atol=0)


@pytest.mark.parametrize("task", ["box_inpainting", "random_inpainting"])
def test_inpainting_baseline_keeps_observed_pixels_and_fills_holes_with_their_mean(task):
    x = _image()
    op = benchmark_task(task).operator(32, 5)
    y = op.measure(x, 0.05, torch.Generator().manual_seed(1))
    out = no_learning_estimate(op, y, tuple(x.shape))
    observed = op.mask_for(tuple(x.shape)).expand_as(x)
    assert 0 < observed.sum() < observed.numel()
    torch.testing.assert_close(out[observed], y[observed].clamp(-1, 1), rtol=0, atol=0)
    for c in range(3):
        seen = observed[0, c]
        mean = y[0, c][seen].mean()
        torch.testing.assert_close(out[0, c][~seen], mean.expand(int((~seen).sum())), rtol=1e-6, atol=1e-6)


def test_box_hole_keeps_its_share_of_the_image_at_any_size():
    # 256 px protocol: a 128 x 128 hole, 16 px from the edges (DPS); at 64 px: 32 x 32, 4 px.
    for size, hole, margin in [(256, 128, 16), (64, 32, 4)]:
        op = benchmark_task("box128").operator(size, 3)
        missing = ~op.mask_for((1, 3, size, size))[0, 0]
        rows, cols = missing.any(1).nonzero().flatten(), missing.any(0).nonzero().flatten()
        assert int(missing.sum()) == hole * hole
        assert rows.min() >= margin and cols.min() >= margin and rows.max() < size - margin


def test_tasks_accept_matrix_and_preset_names_and_refuse_others():
    assert [benchmark_task(p).name for p in TASK_PRESETS.values()] == list(TASK_PRESETS)
    with pytest.raises(ValueError, match="unknown task 'deblur'"):
        benchmark_task("deblur")


@pytest.fixture(scope="module")
def prior():
    return load_prior("natural-64")


def _images(count: int = 2) -> BenchmarkImages:
    return BenchmarkImages(torch.cat([_image(32, i) for i in range(count)]), [f"noise{i}" for i in range(count)], "test")


def test_flags_mark_non_finite_and_far_below_baseline_cells(prior, monkeypatch):
    def fake_solve(y, op, prior, method, **kwargs):
        image = torch.full((1, 3, 32, 32), float("nan")) if method == "dps" else -3 * torch.ones(1, 3, 32, 32)
        return Result(samples=image[None], nfe=7, operator_calls=7, seconds=0.5, method=method)

    monkeypatch.setattr(matrix_module, "solve", fake_solve)
    config = MatrixConfig(methods=("dps", "ddnm"), tasks=("super_resolution",), size=32, lpips=False)
    report = run_matrix(config, prior, _images())
    dps, ddnm = report.cell("dps", "super_resolution"), report.cell("ddnm", "super_resolution")
    assert dps.flags == [NON_FINITE] and all(v != v for v in dps.psnr)
    assert ddnm.flags == [BELOW_BASELINE] and ddnm.nfe == [7.0, 7.0] and ddnm.max_abs == [3.0, 3.0]
    truth = _images().images[:1]
    clamped = 10 * torch.log10(1 / ((truth + 1) / 2).double().pow(2).mean())  # scored as the image -1
    assert ddnm.psnr[0] == pytest.approx(float(clamped), abs=1e-4)
    table = markdown_table(report)
    assert "| dps | NaN † |" in table and "‡" in table.split("| ddnm |")[1].splitlines()[0]


def test_refusals_and_failures_are_cells_and_the_run_goes_on(prior, monkeypatch):
    calls = []

    def broken_solve(y, op, prior, method, **kwargs):
        calls.append(method)
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(matrix_module, "solve", broken_solve)
    config = MatrixConfig(methods=("latent_dps", "dps"), tasks=("gaussian_blur", "box_inpainting"), size=32,
                          lpips=False)
    report = run_matrix(config, prior, _images())
    refused = report.cell("latent_dps", "gaussian_blur")
    assert refused.status == "n/a" and "needs latent" in refused.reason
    failed = report.cell("dps", "box_inpainting")
    assert failed.status == "failed" and failed.reason == "RuntimeError: boom"
    assert calls == ["dps", "dps"]  # once per task: a failed cell is not retried on the next image
    assert report.cell(NO_LEARNING, "gaussian_blur").status == "ok"
    assert "- latent_dps on gaussian_blur: n/a (needs latent" in markdown_table(report)


def test_partial_reports_follow_every_cell_and_task_counts_limit_the_images(prior, monkeypatch, tmp_path):
    def fake_solve(y, op, prior, method, **kwargs):
        return Result(samples=torch.zeros(1, 1, 3, 32, 32), nfe=1, operator_calls=1, seconds=0.1, method=method)

    monkeypatch.setattr(matrix_module, "solve", fake_solve)
    config = MatrixConfig(methods=("ddrm", "dps"), tasks=("gaussian_blur", "super_resolution"), size=32,
                          lpips=False, counts={"gaussian_blur": 2, "super_resolution": 1})
    seen = []

    def save(partial):
        path, _ = write_report(partial, tmp_path)
        seen.append([(c["method"], c["task"], len(c["psnr"])) for c in json.loads(
            (tmp_path / "matrix.json").read_text())["cells"] if c["method"] != NO_LEARNING])

    report = run_matrix(config, prior, _images(), on_progress=save)
    assert len(seen) == 2 * 2 + 2 * 1  # one save per cell: methods x images of each task
    assert seen[0] == [("ddrm", "gaussian_blur", 1), ("dps", "gaussian_blur", 0)]
    assert report.cell("ddrm", "gaussian_blur").nfe == [1.0, 1.0]
    assert report.cell("ddrm", "super_resolution").nfe == [1.0]
    with pytest.raises(ValueError, match="not run"):
        MatrixConfig(tasks=("gaussian_blur",), counts={"motion_blur": 1}).validate()


def test_heldout_crops_are_the_split_files_crops_shrunk():
    found = heldout_images(32, 2)
    assert found.images.shape == (2, 3, 32, 32) and found.names[0] == "chelsea.png@60,110"
    assert found.images.abs().max() <= 1
    demo = benchmark_images(["demo"], 32, 4)
    assert demo.images.shape == (1, 3, 32, 32) and demo.names == ["chelsea-128.png"]


def test_quick_matrix_command_writes_markdown_and_json(tmp_path, capsys):
    out = tmp_path / "matrix"
    assert main(["benchmark", "matrix", "--quick", "--images", "demo", "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "matrix.json").read_text())
    cells = {(c["method"], c["task"]): c for c in data["cells"]}
    assert set(cells) == {(m, t) for m in (NO_LEARNING, "ddrm", "diffpir") for t in TASK_PRESETS}
    sr = cells[("ddrm", "super_resolution")]
    assert sr["status"] == "ok" and sr["nfe"] == [4.0] and 0 < sr["psnr"][0] < 60
    assert data["config"]["size"] == 32 and data["images"] == ["chelsea-128.png"]
    markdown = (out / "matrix.md").read_text()
    assert "**PSNR (dB)**" in markdown and "| no-learning |" in markdown
    assert "wrote" in capsys.readouterr().out
