"""
Posterior samples and a per-pixel standard deviation map
========================================================

A 24 × 24 hole in the bundled 64 px example image (noise 0.05 on the [-1, 1] scale),
restored eight times by DDRM (its default 20 steps) in one batch, each sample from its
own seed. Where the measurement pins the image down the samples agree; inside the hole
they differ, and their per-pixel standard deviation (root mean square over the colour
channels, as ``invsolve restore --std`` writes it) shows where the prior is guessing.
"""

import matplotlib.pyplot as plt
import torch

import operators
from invsolve import io, solve
from invsolve.commands.demo import demo_image_path
from priors import load_prior

prior = load_prior("natural-64")
clean = io.load_image(demo_image_path(), size=64)
operator = operators.build("inpainting", mask="box", size=24, shape=(64, 64))
y = operator.measure(clean, 0.05, generator=torch.Generator().manual_seed(0))

result = solve(y, operator, prior, method="ddrm", num_samples=8, noise_sigma=0.05, seed=0, progress=False)
samples = result.samples[:, 0].clamp(-1, 1)                   # (8, 3, 64, 64): 8 samples of image 0
std = samples.var(dim=0, unbiased=True).mean(dim=0).sqrt()    # (64, 64): RMS over channels
print(f"{samples.shape[0]} samples, {result.nfe:.0f} network evaluations each")
print(f"mean std inside the hole {std[20:44, 20:44].mean():.3f}, outside {std[:16].mean():.3f}")


def show(ax, image, title):
    ax.imshow(io.to_uint8(image)[0].permute(1, 2, 0).numpy())
    ax.set_title(title, fontsize=8)
    ax.axis("off")


fig, axes = plt.subplots(2, 4, figsize=(8, 4.4))
show(axes[0, 0], clean, "truth")
show(axes[0, 1], y, "measurement")
show(axes[0, 2], samples.mean(dim=0, keepdim=True), "mean of 8 samples")
shown = axes[0, 3].imshow(std.numpy(), cmap="magma")
axes[0, 3].set_title("per-pixel std", fontsize=8)
axes[0, 3].axis("off")
fig.colorbar(shown, ax=axes[0, 3], fraction=0.046)
for k, ax in enumerate(axes[1]):
    show(ax, samples[k : k + 1], f"sample {k}")
fig.tight_layout()
