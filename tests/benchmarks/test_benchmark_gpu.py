"""scripts/benchmark_gpu.py: the FFHQ-256 ADM it builds, and a --smoke run on the CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from priors.adm import CONFIGS
from priors.adm_unet import ADMUNet

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_ffhq256_configuration_has_the_published_93_6_million_parameters():
    # DPS's ffhq_10m.pt (guided-diffusion create_model with the DPS model_config.yaml): 93.6 M parameters.
    with torch.device("meta"):
        unet = ADMUNet(CONFIGS["ffhq256"])
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 93.6


def test_random_adm_predicts_zero_noise_so_its_denoiser_is_the_identity():
    script = load_script()
    prior = script.random_adm(script.SMOKE_CONFIG, torch.device("cpu"), torch.float32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(prior.denoise(x, torch.tensor([0.5, 4.0])), x, rtol=0, atol=0)


def test_smoke_run_writes_one_row_per_method_dtype_and_batch(tmp_path):
    script = load_script()
    assert script.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "gpu.json").read_text())
    rows = {(r["method"], r["dtype"], r["batch"]): r for r in data["rows"]}
    assert set(rows) == {(m, d, b) for m in ("dps", "ddrm") for d in ("float32", "bfloat16") for b in (1, 2)}
    for row in rows.values():
        if row["status"] == "ok":
            assert row["steps"] == 2 and row["seconds"] > 0 and row["compiled"] is False
    assert rows[("dps", "float32", 2)]["status"] == "ok" and rows[("dps", "float32", 2)]["backprop"] is True
    assert "| dps | bfloat16 | no | 2 |" in (tmp_path / "gpu.md").read_text()
