"""The bundled restorer ``natural-sr2`` and learned proximal network ``natural-lpn``: found by name offline,
small, documented, and better than the classical answer on held-out photo crops; folder round trips."""

from __future__ import annotations

import json

import pytest
import skimage.data
import torch
import torch.nn.functional as F

import operators
from invsolve.commands.list import bundled_priors, method_lines
from invsolve.io import load_image
from invsolve.metrics import psnr
from priors import LPNPrior, ResidualUpsampler, RestorerPrior, load_prior
from priors.bundled import assets_root, bundled, bundled_path

NAMES = {"natural-sr2": RestorerPrior, "natural-lpn": LPNPrior}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.chdir(tmp_path_factory.mktemp("elsewhere"))  # no relative folder of that name
        return {name: load_prior(name) for name in NAMES}


@pytest.fixture(scope="module")
def heldout():
    """Two held-out 128x128 crops: the demo image and chelsea's eye (chelsea is not in the training set)."""
    eye = torch.from_numpy(skimage.data.chelsea()[60:188, 110:238].copy()).permute(2, 0, 1).float() / 127.5 - 1
    return torch.cat([load_image(assets_root() / "images" / "chelsea-128.png"), eye[None]])


@pytest.mark.parametrize("name", sorted(NAMES))
def test_bundled_folder_is_small_safetensors_with_a_model_card(name):
    assert name in bundled()
    folder = bundled_path(name)
    weights = list(folder.rglob("*.safetensors"))
    assert len(weights) == 1 and weights[0].stat().st_size <= 10 * 2**20
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt")), "weights must be safetensors only"
    card = (folder / "README.md").read_text()
    for needed in ("Data and split", "Training", "Evaluation", "scripts/quality_bar_networks.py"):
        assert needed in card
    config = json.loads((folder / "config.json").read_text())
    assert config["training"]["steps"] > 0


@pytest.mark.parametrize("name", sorted(NAMES))
def test_loads_offline_by_name(loaded, name):
    assert isinstance(loaded[name], NAMES[name])
    assert loaded[name].data_shape is None  # fully convolutional


def test_restorer_beats_bicubic_at_its_own_task(loaded, heldout):
    restorer = loaded["natural-sr2"]
    assert restorer.degradation == {"operator": "super_resolution", "factor": 2, "method": "bicubic"}
    low = operators.build("super_resolution", factor=2)(heldout)
    restored = restorer.restore(low)
    bicubic = F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False)
    assert restored.shape == heldout.shape
    gain = psnr(restored.clamp(-1, 1), heldout) - psnr(bicubic.clamp(-1, 1), heldout)
    assert (gain > 0.5).all(), gain


def test_lpn_denoises_at_its_training_level(loaded, heldout):
    lpn = loaded["natural-lpn"]
    noisy = heldout + lpn.noise_sigma * torch.randn(heldout.shape, generator=torch.Generator().manual_seed(0))
    gain = psnr(lpn.prox(noisy), heldout) - psnr(noisy, heldout)
    assert (gain > 4.0).all(), gain


def test_list_shows_the_bundled_networks_and_both_methods():
    assert set(NAMES) <= set(bundled_priors())
    lines = method_lines()
    assert "restorer" in lines["drp"] and "proximal" in lines["pnp_admm"]


def test_restorer_folder_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    network = ResidualUpsampler(width=8, blocks=1)
    torch.nn.init.normal_(network.tail.weight, std=0.1)
    spec = {"operator": "super_resolution", "factor": 2, "method": "bicubic"}
    RestorerPrior(network, spec).save(tmp_path / "r")
    loaded = load_prior(tmp_path / "r")
    v = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(loaded.restore(v), network(v), rtol=0, atol=0)
    assert loaded.degradation == spec
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    (tmp_path / "r" / "config.json").write_text(json.dumps({**config, "architecture": "os.system"}))
    with pytest.raises(ValueError, match="unknown architecture 'os.system'"):
        load_prior(tmp_path / "r")
    with pytest.raises(ValueError, match="can be saved"):
        RestorerPrior(network, operators.build("super_resolution", factor=2)).save(tmp_path / "s")
