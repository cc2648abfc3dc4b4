#!/bin/bash
# invsolve evaluate --batch-size 1 vs 8 on 8 held-out 64 px crops (SR x4, noise 0.05), 20 steps per method.
# Usage: scripts/benchmark_batch_speedup.sh WORKDIR   (writes WORKDIR/data, WORKDIR/b1, WORKDIR/b8; prints the summaries)
set -e
work=${1:-/tmp/batch_speedup}
mkdir -p "$work/data"
python - "$work/data" <<'PY'
import sys
from invsolve.benchmarks.images import heldout_images
from invsolve.io import save_image
images = heldout_images(64, 8)
for i, image in enumerate(images.images):
    save_image(image[None], f"{sys.argv[1]}/crop{i}.png")
print(images.source)
PY
methods=ddrm,ddnm,diffpir,dps,pigdm,mcg,reddiff,daps
for b in 1 8; do
  rm -rf "$work/b$b"
  echo "batch $b: load $(cut -d' ' -f1-3 /proc/loadavg), threads ${OMP_NUM_THREADS:-default}"
  /usr/bin/time -f "wall %e s, cpu %U+%S s" invsolve evaluate "$work/data" --preset sr4 --methods $methods \
      --size 64 --steps 20 --metrics psnr --out "$work/b$b" --batch-size $b --quiet
  echo "load after $(cut -d' ' -f1-3 /proc/loadavg)"
done
python - "$work" <<'PY'
import json, sys
one, eight = (json.load(open(f"{sys.argv[1]}/b{b}/summary.json")) for b in (1, 8))
print("| method | B=1 images/s | B=8 images/s | speed-up | PSNR B=1 | PSNR B=8 |")
print("|---|---:|---:|---:|---:|---:|")
for m, s1 in one["methods"].items():
    s8 = eight["methods"][m]
    r1, r8 = s1["images_per_second"], s8["images_per_second"]
    p1 = s1["psnr"]["mean"] if s1["psnr"] else float("nan")
    p8 = s8["psnr"]["mean"] if s8["psnr"] else float("nan")
    print(f"| {m} | {r1:.3g} | {r8:.3g} | {r8 / r1:.2f} | {p1:.4f} | {p8:.4f} |" if r1 and r8 else f"| {m} | - | - | - | {p1:.4f} | {p8:.4f} |")
PY
