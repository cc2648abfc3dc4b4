"""
Super-resolution ×4 with the bundled prior
==========================================

The ``sr4`` preset (bicubic ×4 with antialiasing, as DPS and DAPS define it; noise 0.05
on the [-1, 1] scale) applied to the bundled 64 px example image, so the measurement is
16 × 16. Bicubic upsampling of the measurement is the no-learning baseline. DDRM (the
operator's exact SVD) and DDNM (its exact pseudo-inverse) run 20 steps each; DDRM's
panel is the mean of 4 samples drawn in one batch, DDNM's a single sample. A single
sample carries about twice the error of the posterior mean, which is why the model
card's quality bar averages samples.
"""

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import operators
from invsolve import io, solve
from invsolve.commands.demo import demo_image_path
from invsolve.metrics import psnr
from priors import load_prior

prior = load_prior("natural-64")
clean = io.load_image(demo_image_path(), size=64)
operator = operators.preset("sr4").build()
y = operator.measure(clean, 0.05, generator=torch.Generator().manual_seed(0))
bicubic = F.interpolate(y, scale_factor=4, mode="bicubic", align_corners=False).clamp(-1, 1)

panels = {"truth": clean, f"measurement {tuple(y.shape[-2:])}": y,
          f"bicubic {psnr(bicubic, clean).item():.1f} dB": bicubic}
for method, samples in (("ddrm", 4), ("ddnm", 1)):
    result = solve(y, operator, prior, method=method, steps=20, num_samples=samples, noise_sigma=0.05,
                   seed=0, progress=False)
    restored = result.mean.clamp(-1, 1)
    panels[f"{method} ({samples}) {psnr(restored, clean).item():.1f} dB"] = restored

fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6))
for ax, (title, image) in zip(axes, panels.items()):
    ax.imshow(io.to_uint8(image)[0].permute(1, 2, 0).numpy())
    ax.set_title(title, fontsize=8)
    ax.axis("off")
fig.tight_layout()
