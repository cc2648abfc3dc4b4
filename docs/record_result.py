"""Run one ``invsolve benchmark`` command and store its JSON under docs/results/ with its provenance.

Usage (from the repository root)::

    python docs/record_result.py posterior --quick
    python docs/record_result.py matrix --quick --methods ddrm,ddnm,diffpir,dps

The benchmark writes ``<name>.json`` into a temporary folder; this script adds a
``"recorded"`` entry (the exact command, the git commit, the date and the
machine) and writes ``docs/results/<name>.json``, which the docs render.

A matrix too long for one sitting runs one task per command, each into its own folder
holding ``matrix.json`` and its ``recorded.json`` (the entry above, written by
``python docs/record_result.py --record FOLDER COMMIT COMMAND...`` when the run starts);
``--merge-matrix NAME FOLDER...`` joins them into ``docs/results/NAME.json``, whose
``recorded`` lists every run's command, commit and date::

    python docs/record_result.py --merge-matrix matrix-defaults runs/gaussian_blur runs/super_resolution
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


def machine() -> str:
    return f"{processor_name()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.machine()}"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def record_run(folder: Path, commit: str, command: list[str]) -> None:
    """Write ``folder/recorded.json`` for a run of ``command`` at ``commit`` starting now."""
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"command": shlex.join(command), "commit": commit, "date": now(), "machine": machine()}
    (folder / "recorded.json").write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")


def merge_matrix(folders: list[Path]) -> dict:
    """One matrix report from per-task runs: cells, images and task descriptions joined in order."""
    runs = [json.loads((f / "matrix.json").read_text(encoding="utf-8")) for f in folders]
    merged = runs[0]
    for run in runs[1:]:
        merged["cells"] += run["cells"]
        merged["tasks"].update(run["tasks"])
        merged["config"]["tasks"] += [t for t in run["config"]["tasks"] if t not in merged["config"]["tasks"]]
        merged["config"].setdefault("counts", {}).update(run["config"].get("counts", {}))
        merged["images"] += [name for name in run["images"] if name not in merged["images"]]
    entries = [json.loads((f / "recorded.json").read_text(encoding="utf-8")) for f in folders]
    merged["recorded"] = {
        "command": "; ".join(e["command"] for e in entries),
        "commit": ", ".join(dict.fromkeys(e["commit"] for e in entries)),
        "date": f"{entries[0]['date']} to {max(e['date'] for e in entries)} (run starts)",
        "machine": entries[0]["machine"],
        "runs": entries,
    }
    return merged


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    if argv[0] == "--record":
        record_run(Path(argv[1]), argv[2], argv[3:])
        return 0
    if argv[0] == "--merge-matrix":
        target = RESULTS / f"{argv[1]}.json"
        target.write_text(json.dumps(merge_matrix([Path(a) for a in argv[2:]]), indent=2) + "\n", encoding="utf-8")
        print(f"wrote {target}")
        return 0
    name, args = argv[0], argv[1:]
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "invsolve", "benchmark", name, *args, "--out", folder]
        subprocess.run(command, cwd=ROOT, check=True)
        data = json.loads((Path(folder) / f"{name}.json").read_text(encoding="utf-8"))
    data["recorded"] = {
        "command": shlex.join(["invsolve", "benchmark", name, *args]),
        "commit": git_commit(),
        "date": now(),
        "machine": machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS / f'{name}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
