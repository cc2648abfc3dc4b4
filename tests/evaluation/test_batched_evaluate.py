"""Batched solves and ``invsolve evaluate --batch-size``: one seed per image gives each image of a
batch the restoration it gets alone (to float rounding), whatever the batch around it."""

import csv
import json

import pytest
import torch

import invsolve.evaluation.work as work
import operators
import priors
from invsolve import solve
from invsolve.cli import main
from invsolve.evaluation.batch import StackedInpainting, stacked_operator
from invsolve.samplers import DivergenceError, Problem
from priors import load_prior
from tests.helpers.gaussian_evaluate import SIZE, load_gaussian_prior, save_random_images
from tests.helpers.linear_latent import make_linear_problem

SEEDS = [11, 22, 33]
#: A batched convolution differs from batch 1 in the last float32 bits; 20 steps amplify that
#: to a few 1e-6 on images in [-1, 1] (measured: at most 3.4e-6 over these methods).
BATCH_ATOL = 1e-4
#: EnKG's Kalman gain divides by the spread of a 4-particle ensemble in measurement space, which
#: amplifies those last bits further (measured: 1.05e-4 with OMP_NUM_THREADS=4).
ENKG_BATCH_ATOL = 1e-3
#: Another seed moves a restoration by far more than that (measured: >= 0.1).
OTHER_SEED_GAP = 1e-2


@pytest.fixture(scope="module")
def tiny_prior(tiny_prior_dir):
    return load_prior(str(tiny_prior_dir))


@pytest.fixture(scope="module")
def blur_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=g) * 1.6 - 0.8
    op = operators.GaussianBlur(kernel_size=5, sigma=1.0, padding="reflect")
    return op, op.measure(x, 0.05, g)


METHODS = [
    ("ddrm", {}), ("dps", {}), ("diffpir", {}), ("ddnm", {}), ("pigdm", {}), ("mcg", {}), ("reddiff", {}),
    ("enkg", {"ensemble_size": 4, "max_ode_steps": 2, "batch_size": 5}), ("daps", {"langevin_steps": 5}),
]


@pytest.mark.parametrize("method, options", METHODS, ids=[m for m, _ in METHODS])
def test_a_batch_with_one_seed_per_image_restores_each_image_as_alone(tiny_prior, blur_problem, method, options):
    op, y = blur_problem
    steps = 3 if method == "daps" else 10
    run = dict(method=method, steps=steps, noise_sigma=0.05, progress=False, num_samples=2, **options)
    batched = solve(y, op, tiny_prior, seed=SEEDS, **run)
    assert batched.options["seed"] == SEEDS
    for b, seed in enumerate(SEEDS):
        alone = solve(y[b:b + 1], op, tiny_prior, seed=seed, **run)
        atol = ENKG_BATCH_ATOL if method == "enkg" else BATCH_ATOL
        torch.testing.assert_close(batched.samples[:, b], alone.samples[:, 0], rtol=0, atol=atol)
    swapped = solve(y[1:2], op, tiny_prior, seed=SEEDS[0], **run)
    assert (batched.samples[:, 1] - swapped.samples[:, 0]).abs().max() > OTHER_SEED_GAP


@pytest.mark.parametrize("method, options", [("psld", {"eta": 1.0, "omega": 0.3, "gamma": 0.3}),
                                             ("latent_dps", {"omega": 0.3})])
def test_latent_methods_keep_one_generator_per_image(method, options):
    """The linear latent prior of the latent-method tests (float64), two measurements."""
    prior, op, y, noise, _ = make_linear_problem(table=True)
    y = torch.cat([y, y + 0.1])
    run = dict(method=method, steps=8, noise_sigma=noise, progress=False, num_samples=3, **options)
    batched = solve(y, op, prior, seed=[5, 6], **run)
    for b, seed in enumerate([5, 6]):
        alone = solve(y[b:b + 1], op, prior, seed=seed, **run)
        torch.testing.assert_close(batched.samples[:, b], alone.samples[:, 0], rtol=0, atol=1e-10)


def test_randn_draws_each_images_rows_in_one_block_from_its_generator():
    """Rows ``sample * B + b`` of image ``b`` are ``torch.randn((samples, ...), generator=g_b)``."""
    B, samples = 3, 2
    problem = Problem(
        y=torch.zeros(samples * B, 4), operator=None, prior=None, x_shape=(samples * B, 4), noise_sigma=0.0,
        steps=1, generator=torch.Generator().manual_seed(99),
        generators=tuple(torch.Generator().manual_seed(s) for s in SEEDS),
    )
    drawn = [problem.randn(), problem.randn((samples * B, 2, 5))]
    for b, seed in enumerate(SEEDS):
        g = torch.Generator().manual_seed(seed)
        torch.testing.assert_close(drawn[0][b::B], torch.randn(samples, 4, generator=g), rtol=0, atol=0)
        torch.testing.assert_close(drawn[1][b::B], torch.randn(samples, 2, 5, generator=g), rtol=0, atol=0)
    shared = problem.randn((5, 2))  # not per row: from the shared generator
    torch.testing.assert_close(shared, torch.randn(5, 2, generator=torch.Generator().manual_seed(99)), rtol=0, atol=0)


def test_seed_lists_are_checked(tiny_prior, blur_problem):
    op, y = blur_problem
    with pytest.raises(ValueError, match="seed holds 2 seeds for a measurement batch of 3"):
        solve(y, op, tiny_prior, method="ddrm", steps=2, seed=[1, 2], progress=False)
    with pytest.raises(ValueError, match=r"seed\[1\] must be between"):
        solve(y, op, tiny_prior, method="ddrm", steps=2, seed=[1, -2, 3], progress=False)
    one = solve(y[:1], op, tiny_prior, method="ddrm", steps=2, seed=[7], progress=False)
    assert one.options["seed"] == 7
    torch.testing.assert_close(
        one.image, solve(y[:1], op, tiny_prior, method="ddrm", steps=2, seed=7, progress=False).image, rtol=0, atol=0
    )


def test_per_image_masks_stack_into_one_operator_that_keeps_the_task():
    parts = [operators.build("inpainting", mask="box", size=6, position="random", margin=2, seed=s) for s in (1, 2)]
    shape = (1, 3, 16, 16)
    stacked = stacked_operator(parts, shape)
    assert isinstance(stacked, StackedInpainting) and stacked.task == parts[0].task == "box_inpainting"
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # 2 samples x 2 images
    for row in range(4):
        torch.testing.assert_close(stacked(x)[row], parts[row % 2](x[row:row + 1])[0], rtol=0, atol=0)
    assert stacked_operator([parts[0]] * 2, shape) is parts[0]
    assert stacked_operator([parts[0], operators.GaussianBlur(kernel_size=3, sigma=1.0)], shape) is None


# --- invsolve evaluate --batch-size, on the analytic Gaussian prior ------------------------------------------

IMAGES = 3
EVAL_METHODS = ("no-learning", "ddrm", "dps", "diffpir")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return save_random_images(tmp_path_factory.mktemp("data"), IMAGES, seed=1)


@pytest.fixture(autouse=True)
def gaussian_prior(monkeypatch):
    monkeypatch.setattr(priors, "load_prior", load_gaussian_prior)


def evaluate(data_dir, out, *extra):
    args = [
        "evaluate", str(data_dir), "--operator", "inpainting", "--operator-arg", "mask=random",
        "--operator-arg", "missing=0.5", "--noise-sigma", "0.05", "--prior", "gaussian",
        "--methods", ",".join(EVAL_METHODS[1:]), "--size", str(SIZE), "--steps", "4", "--metrics", "psnr,ssim",
        "--out", str(out), "--quiet", *extra,
    ]
    assert main(args) == 0
    with open(out / "metrics.csv", newline="") as file:
        return {(r["image"], r["method"]): r for r in csv.DictReader(file)}


def test_evaluate_batch_size_gives_the_rows_of_batch_one(data_dir, tmp_path):
    single = evaluate(data_dir, tmp_path / "one")
    batched = evaluate(data_dir, tmp_path / "two", "--batch-size", "2")  # batches of 2 and 1 images
    assert set(single) == set(batched) == {(f"img{i}.png", m) for i in range(IMAGES) for m in EVAL_METHODS}
    for key, row in single.items():
        assert float(batched[key]["psnr"]) == pytest.approx(float(row["psnr"]), abs=1e-4)
        assert float(batched[key]["ssim"]) == pytest.approx(float(row["ssim"]), abs=1e-5)
        assert batched[key]["nfe"] == row["nfe"]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["network"]["batch_size"] == 2
    rows = [r for r in batched.values() if r["method"] == "ddrm"]
    rate = summary["methods"]["ddrm"]["images_per_second"]
    assert rate == pytest.approx(len(rows) / sum(float(r["seconds"]) for r in rows), rel=1e-9)
    assert "images / s" in (tmp_path / "two" / "summary.md").read_text()


def test_a_diverging_batch_is_solved_image_by_image(data_dir, tmp_path, monkeypatch):
    """One image that diverges costs only its own row: the batch is redone one image at a time."""
    original = work.solve

    def solve_diverging_on_img1(y, *args, seed, **kwargs):
        if isinstance(seed, list) or seed == work.image_seed("img1.png", 0, "sampler"):
            raise DivergenceError("ddrm", 0, 1.0, None)
        return original(y, *args, seed=seed, **kwargs)

    monkeypatch.setattr(work, "solve", solve_diverging_on_img1)
    rows = evaluate(data_dir, tmp_path / "out", "--batch-size", "3")
    solved = {key for key in rows if key[1] != "no-learning"}
    assert solved == {(f"img{i}.png", m) for i in (0, 2) for m in EVAL_METHODS[1:]}
    with open(tmp_path / "out" / "errors.csv", newline="") as file:
        errors = sorted((e["image"], e["method"]) for e in csv.DictReader(file))
    assert errors == [("img1.png", m) for m in sorted(EVAL_METHODS[1:])]
