"""
Speed: seconds per solve against the network's own time
=======================================================

``invsolve benchmark speed`` times each solve and, separately, the same network calls
alone; their ratio is the method's overhead (operator work, data-consistency steps,
bookkeeping). This example draws the committed run, ``docs/results/speed.json`` (its
command, commit and machine are printed below): seconds per solve by image size, and
the overhead of every cell. The full table is on the generated
:doc:`../results/generated/speed` page.
"""

import json
from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt

import invsolve

# the committed results of this source checkout (invsolve is installed from it, editable)
RESULTS = Path(invsolve.__file__).resolve().parents[1] / "docs" / "results"
data = json.loads((RESULTS / "speed.json").read_text())
print("recorded:", ", ".join(f"{k}: {v}" for k, v in data["recorded"].items()))
cells = [c for c in data["cells"] if c.get("status") == "ok"]

by_method = defaultdict(list)
for c in cells:
    by_method[c["method"]].append(c)

fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4))
for method, rows in by_method.items():
    rows.sort(key=lambda c: c["size"])
    left.plot([c["size"] for c in rows], [c["seconds"] for c in rows], marker="o", label=method)
left.set_xlabel("image size (px)")
left.set_ylabel("seconds per solve")
left.set_yscale("log")
left.legend(fontsize=7)

labels = [f"{c['method']} {c['size']}px" for c in cells]
right.barh(labels, [c["overhead"] for c in cells], color="tab:blue")
right.axvline(1.0, color="grey", ls="--", lw=1)
right.set_xlabel("overhead (s per solve / network s)")
right.tick_params(axis="y", labelsize=7)
fig.suptitle(f"{data['prior']}, batch {data['config']['batch']}, {data['config']['steps']} steps", fontsize=9)
fig.tight_layout()
