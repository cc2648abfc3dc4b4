"""
The posterior benchmark: distance to the exact posterior against cost
=====================================================================

``invsolve benchmark posterior`` runs every method that works with a matrix operator on
the Gaussian-mixture problem of MCGdiff (25 components on a 5 × 5 grid), where the
posterior is known exactly, and scores each method's samples by their sliced
Wasserstein-1 distance to exact posterior samples. This example draws the committed run,
``docs/results/posterior.json`` (its command, commit and machine are printed below): one
point per method and measurement dimension ``d_y``, against the network evaluations per
sample (mean over the seeds; the spread is in the table). The noise floor (two sets of exact samples) and the prior's distance frame it;
the table is on the generated :doc:`../results/generated/posterior` page.
"""

import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt

import invsolve

# the committed results of this source checkout (invsolve is installed from it, editable)
RESULTS = Path(invsolve.__file__).resolve().parents[1] / "docs" / "results"
data = json.loads((RESULTS / "posterior.json").read_text())
print("recorded:", ", ".join(f"{k}: {v}" for k, v in data["recorded"].items()))

nfe = defaultdict(list)
for run in data["runs"]:
    if run["nfe"] is not None:  # a failed run (its error is on the results page) has no cost
        nfe[run["method"]].append(run["nfe"])
settings = sorted({(r["d"], r["d_y"]) for r in data["references"]})
fig, axes = plt.subplots(1, len(settings), figsize=(3.4 * len(settings), 3.4), sharey=True, squeeze=False)
for ax, (d, d_y) in zip(axes[0], settings):
    key = f"d={d},d_y={d_y}"
    for method, per_setting in data["summary"].items():
        # a diverged method (SW beyond 1e6, e.g. FlowChef's official step here) is in the table, not the plot
        if per_setting.get(key) and math.isfinite(per_setting[key]["sw_mean"]) and per_setting[key]["sw_mean"] < 1e6:
            cost = sum(nfe[method]) / len(nfe[method])
            ax.plot(cost, per_setting[key]["sw_mean"], "o", ms=4)
            ax.annotate(method, (cost, per_setting[key]["sw_mean"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    refs = [r for r in data["references"] if (r["d"], r["d_y"]) == (d, d_y)]
    ax.axhline(sum(r["floor"] for r in refs) / len(refs), color="grey", ls="--", lw=1, label="noise floor")
    ax.axhline(sum(r["prior"] for r in refs) / len(refs), color="grey", ls=":", lw=1, label="prior")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations per sample")
    ax.set_title(f"d = {d}, d_y = {d_y}", fontsize=9)
axes[0, 0].set_ylabel("sliced Wasserstein-1 (lower is better)")
axes[0, 0].legend(fontsize=7)
fig.tight_layout()
