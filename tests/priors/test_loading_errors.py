"""Broken prior files and an unreachable Hub give one line that names the file, fast, never a traceback."""

import json
import time

import numpy as np
import pytest
from PIL import Image

import priors.locations as locations
from invsolve.cli import main
from priors import load_prior

SIZE = 16


def corrupt(folder, case):
    """Break a copy of the tiny prior folder in the way ``case`` names; returns what to load."""
    if case == "config is a JSON list":
        (folder / "config.json").write_text("[1, 2]")
    elif case == "config is not JSON":
        (folder / "config.json").write_text('{"_class_name": ')
    elif case == "unknown beta schedule":
        config = json.loads((folder / "scheduler_config.json").read_text())
        (folder / "scheduler_config.json").write_text(json.dumps({**config, "beta_schedule": "cosinus"}))
    elif case == "truncated weights":
        weights = folder / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif case == "garbage .safetensors checkpoint":
        (folder / "model.safetensors").write_bytes(b"not a safetensors file" * 3)
        return folder / "model.safetensors"
    elif case == "truncated .safetensors checkpoint":
        weights = (folder / "diffusion_pytorch_model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
        return folder / "model.safetensors"
    return folder


CASES = {
    "config is a JSON list": r"config.json' holds a JSON list, not an object",
    "config is not JSON": r"config.json' is not valid JSON",
    "unknown beta schedule": r"scheduler config cannot be used: cosinus",
    "truncated weights": r"weights cannot be loaded: .*diffusion_pytorch_model.safetensors",
    "garbage .safetensors checkpoint": r"model.safetensors' as a .safetensors checkpoint .* truncated or not a safetensors",
    "truncated .safetensors checkpoint": r"model.safetensors' as a .safetensors checkpoint",
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_prior_files_give_one_line_naming_the_file(case, tiny_prior_dir, tmp_path, capsys):
    import shutil

    folder = tmp_path / "prior"
    shutil.copytree(tiny_prior_dir, folder)
    target = corrupt(folder, case)
    with pytest.raises(ValueError, match=CASES[case]):
        load_prior(target)
    image = tmp_path / "clean.png"
    Image.fromarray(np.zeros((SIZE, SIZE, 3), dtype=np.uint8)).save(image)
    status = main(["restore", str(image), "--operator", "gaussian_blur", "--operator-arg", "kernel_size=5",
                   "--prior", str(target), "--output", str(tmp_path / "out.png"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and err.startswith("invsolve: error: "), err


def test_a_mistyped_hub_id_offline_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"'foo/bar'.*cannot be reached \(HF_HUB_OFFLINE is set\)"):
        load_prior("foo/bar", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 5


def test_an_unreachable_hub_is_asked_once_with_a_short_timeout(monkeypatch, tmp_path):
    """No answer from the Hub (here a closed local port) means the cache alone is read: seconds, not minutes."""
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(locations, "_HUB_REACHABLE", {})
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"'foo/bar'.*cannot be reached \(no answer within 5 s\)"):
        load_prior("foo/bar", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 2 * locations.HUB_PROBE_TIMEOUT
    assert locations._HUB_REACHABLE == {"http://127.0.0.1:9": False}
