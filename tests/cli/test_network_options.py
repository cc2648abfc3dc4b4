"""``--dtype``, ``--compile`` and ``--channels-last`` on ``restore`` and ``evaluate`` (the networks' accuracy
against float32 on the bundled prior: test_precision.py)."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import priors
from invsolve.cli import main
from priors.bundled import assets_root

DEMO = assets_root() / "images" / "chelsea-128.png"


# --- the command-line flags --------------------------------------------------------------------------------


@pytest.fixture
def loads(monkeypatch):
    """Record the options every ``load_prior`` call gets (the real loader still runs)."""
    calls, original = [], priors.load_prior

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(priors, "load_prior", recording)
    return calls


@pytest.fixture
def no_compiler(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", refuse)


def test_restore_runs_the_network_as_asked_and_says_when_compile_fell_back(
    tiny_prior_dir, tmp_path, loads, no_compiler, capsys
):
    out = tmp_path / "out.png"
    args = ["restore", str(DEMO), "--size", "16", "--operator", "gaussian_blur", "--operator-arg", "kernel_size=3",
            "--prior", str(tiny_prior_dir), "--method", "ddrm", "--steps", "3", "--quiet", "-o", str(out),
            "--dtype", "bfloat16", "--channels-last", "--compile"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(args) == 0
    assert loads[-1]["dtype"] == torch.bfloat16
    assert any("torch.compile is unavailable here" in str(w.message) for w in caught)
    printed = capsys.readouterr().out
    assert "note: the network ran uncompiled: eager (compile unavailable: RuntimeError: no C++ compiler found)" in printed
    assert "restored: ddrm, 3 steps" in printed and out.is_file()


def evaluate(data_dir, prior_dir, out, *extra):
    return main([
        "evaluate", str(data_dir), "--operator", "gaussian_blur", "--operator-arg", "kernel_size=3",
        "--prior", str(prior_dir), "--methods", "ddrm", "--size", "16", "--steps", "2", "--metrics", "psnr",
        "--out", str(out), "--quiet", *extra,
    ])


def test_evaluate_records_the_network_options_and_a_resume_keeps_the_precision(
    tiny_prior_dir, tmp_path, loads, no_compiler, capsys
):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / f"img{i}.png")
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert evaluate(data, tiny_prior_dir, out, "--dtype", "bfloat16", "--channels-last", "--compile",
                        "--batch-size", "2") == 0
    assert loads[-1]["dtype"] == torch.bfloat16
    summary = json.loads((out / "summary.json").read_text())
    assert summary["network"] == {
        "dtype": "bfloat16", "compile": "eager (compile unavailable: RuntimeError: no C++ compiler found)",
        "channels_last": True, "batch_size": 2,
    }
    assert summary["methods"]["ddrm"]["images"] == 3
    assert "- network: bfloat16, torch.compile eager" in (out / "summary.md").read_text()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_a_resume_with_another_precision_is_refused_and_old_configs_count_as_float32(tiny_prior_dir, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.full((16, 16, 3), 128, dtype=np.uint8)).save(data / "img.png")
    out = tmp_path / "out"
    assert evaluate(data, tiny_prior_dir, out) == 0
    config = json.loads((out / "config.json").read_text())
    assert config.pop("dtype") == "float32"
    (out / "config.json").write_text(json.dumps(config))  # as written before --dtype existed
    assert evaluate(data, tiny_prior_dir, out) == 0  # resumes
    capsys.readouterr()
    assert evaluate(data, tiny_prior_dir, out, "--dtype", "bfloat16") == 2
    assert "dtype: 'float32' then, 'bfloat16' now" in capsys.readouterr().err


def test_load_accelerated_is_load_prior_then_accelerated(tiny_prior_dir, loads):
    """The one helper restore, evaluate and the benchmarks load with (issue 21.5)."""
    from priors.compiled import CompiledPrior, load_accelerated

    plain = load_accelerated(tiny_prior_dir, "cpu", local_files_only=True)
    assert isinstance(plain, priors.DiffusersPixelPrior)
    fast = load_accelerated(tiny_prior_dir, "cpu", torch.bfloat16, channels_last=True)
    assert isinstance(fast, CompiledPrior) and fast.status == "eager" and fast.channels_last
    assert fast.dtype == torch.bfloat16
    assert loads[0] == {"device": "cpu", "dtype": None, "local_files_only": True}
    assert loads[1] == {"device": "cpu", "dtype": torch.bfloat16}
