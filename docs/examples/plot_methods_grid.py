"""
Methods × tasks as an image grid
================================

Four fast methods on four tasks, on the bundled 48 px example image with noise 0.05 on
the [-1, 1] scale: a Gaussian blur (reflect padding, which has an exact SVD), SR ×4, a
centred box and 70 % random missing pixels. Every method runs its per-task defaults with
the step count cut to 20 (the methods × tasks benchmark,
:doc:`../results/generated/matrix`, runs their official step counts). Each panel's
title is its PSNR; the first column is the measurement. DiffPIR, whose default is 100
levels, leaves visible noise on the blur and SR tasks at 20.
"""

import matplotlib.pyplot as plt
import torch

import operators
from invsolve import io, solve
from invsolve.commands.demo import demo_image_path
from invsolve.metrics import psnr
from priors import load_prior

SIZE, NOISE = 48, 0.05
prior = load_prior("natural-64")
clean = io.load_image(demo_image_path(), size=SIZE)
tasks = {
    "Gaussian blur": operators.build("gaussian_blur", kernel_size=25, sigma=3.0),
    "SR ×4": operators.build("super_resolution", factor=4),
    "box": operators.build("inpainting", mask="box", size=16, shape=(SIZE, SIZE)),
    "random 70 %": operators.build("inpainting", mask="random", missing=0.7, shape=(SIZE, SIZE), seed=0),
}
methods = ["ddrm", "ddnm", "diffpir", "pigdm"]

fig, axes = plt.subplots(len(tasks), len(methods) + 1, figsize=(1.7 * (len(methods) + 1), 1.9 * len(tasks)))
for row, (task, operator) in zip(axes, tasks.items()):
    y = operator.measure(clean, NOISE, generator=torch.Generator().manual_seed(0))
    row[0].imshow(io.to_uint8(y)[0].permute(1, 2, 0).numpy())
    row[0].set_title(task, fontsize=8)
    for ax, method in zip(row[1:], methods):
        result = solve(y, operator, prior, method=method, steps=20, noise_sigma=NOISE, seed=0, progress=False)
        restored = result.image.clamp(-1, 1)
        ax.imshow(io.to_uint8(restored)[0].permute(1, 2, 0).numpy())
        ax.set_title(f"{method} {psnr(restored, clean).item():.1f} dB", fontsize=8)
    for ax in row:
        ax.axis("off")
fig.tight_layout()
