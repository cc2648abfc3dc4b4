"""Run one ``invsolve benchmark`` command and store its JSON under docs/results/ with its provenance.

Usage (from the repository root)::

    python docs/record_result.py posterior --quick
    python docs/record_result.py matrix --quick --methods ddrm,ddnm,diffpir,dps

The benchmark writes ``<name>.json`` into a temporary folder; this script adds a
``"recorded"`` entry (the exact command, the git commit, the date and the
machine) and writes ``docs/results/<name>.json``, which the docs render.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
# This checkout's packages, never the folders of the same name under docs/.
sys.path[0:1] = [str(ROOT)]

from invsolve.benchmarks.machine import processor_name  # noqa: E402


def git_commit() -> str:
    run = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    return run.stdout.strip()


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    name, args = argv[0], argv[1:]
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "invsolve", "benchmark", name, *args, "--out", folder]
        subprocess.run(command, cwd=ROOT, check=True)
        data = json.loads((Path(folder) / f"{name}.json").read_text(encoding="utf-8"))
    data["recorded"] = {
        "command": shlex.join(["invsolve", "benchmark", name, *args]),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{processor_name()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.machine()}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS / f'{name}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
