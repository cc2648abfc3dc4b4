"""
Deblurring and inpainting with the bundled prior
================================================

A Gaussian blur (61 px, sigma 3, circular boundaries) and a box mask on the bundled 64 px
example image, each with measurement noise 0.05 on the [-1, 1] scale, restored by the
DDRM (both operators have an SVD) at its default 20 steps.
"""

import matplotlib.pyplot as plt
import torch

import operators
from invsolve import io, solve
from invsolve.commands.demo import demo_image_path
from priors import load_prior

prior = load_prior("natural-64")
clean = io.load_image(demo_image_path())
tasks = {
    "Gaussian blur": operators.GaussianBlur(61, 3.0, padding="circular"),
    "box inpainting": operators.Inpainting("box", shape=tuple(clean.shape[-2:])),
}


def show(ax, image, title):
    ax.imshow(io.to_uint8(image)[0].permute(1, 2, 0).numpy())
    ax.set_title(title)
    ax.axis("off")


fig, axes = plt.subplots(len(tasks), 3, figsize=(7, 2.4 * len(tasks)))
for row, (name, operator) in zip(axes, tasks.items()):
    y = operator.measure(clean, 0.05, generator=torch.Generator().manual_seed(0))
    restored = solve(y, operator, prior, method="ddrm", noise_sigma=0.05, seed=0, progress=False).image
    for ax, image, title in zip(row, (clean, y, restored), ("truth", name, "DDRM, 20 steps")):
        show(ax, image, title)
fig.tight_layout()
