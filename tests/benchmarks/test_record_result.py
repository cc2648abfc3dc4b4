"""docs/record_result.py joins a matrix run one task per command: every cell, image and task kept
in order, and each run's command, commit and date recorded."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("record_result", ROOT / "docs" / "record_result.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(folder: Path, task: str, images: list[str], record, command: list[str]) -> None:
    cells = [{"method": m, "task": task, "status": "ok", "psnr": [20.0 + i]} for i, m in enumerate(("no-learning", "ddrm"))]
    data = {"config": {"tasks": [task], "counts": {task: len(images)}}, "images": images,
            "tasks": {task: f"{task}: description"}, "cells": cells}
    folder.mkdir()
    (folder / "matrix.json").write_text(json.dumps(data))
    record(folder, "abc123", command)


def test_merge_keeps_every_cell_and_every_run(tmp_path):
    module = _module()
    _run(tmp_path / "a", "gaussian_blur", ["x.png", "y.png"], module.record_run,
         ["invsolve", "benchmark", "matrix", "--tasks", "gaussian_blur", "--count", "2"])
    _run(tmp_path / "b", "super_resolution", ["x.png"], module.record_run,
         ["invsolve", "benchmark", "matrix", "--tasks", "super_resolution", "--count", "1"])
    merged = module.merge_matrix([tmp_path / "a", tmp_path / "b"])
    assert merged["config"]["tasks"] == ["gaussian_blur", "super_resolution"]
    assert merged["config"]["counts"] == {"gaussian_blur": 2, "super_resolution": 1}
    assert merged["images"] == ["x.png", "y.png"]
    assert [(c["method"], c["task"]) for c in merged["cells"]] == [
        ("no-learning", "gaussian_blur"), ("ddrm", "gaussian_blur"),
        ("no-learning", "super_resolution"), ("ddrm", "super_resolution")]
    assert set(merged["tasks"]) == {"gaussian_blur", "super_resolution"}
    commands = [run["command"] for run in merged["recorded"]["runs"]]
    assert commands == ["invsolve benchmark matrix --tasks gaussian_blur --count 2",
                        "invsolve benchmark matrix --tasks super_resolution --count 1"]
    assert merged["recorded"]["commit"] == "abc123" and "; " in merged["recorded"]["command"]
