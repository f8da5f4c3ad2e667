"""The shipped models of issue 21 (docs/latent.md): the patch VAE, the latent model of the 32 x 32 patches and
the 8 -> 32 cascade, loaded by name, sampled from Python and the command line, at most 20 MB together."""

import numpy as np
import pytest
import torch

import scoresde
from scoresde.cli import FEW_STEP_KINDS, main
from scoresde.data import patches, to_model_input
from scoresde.latent.cascade import sample_cascade
from scoresde.latent.model import LatentModel
from scoresde.latent.vae import psnr
from scoresde.latent.vae_files import DEFAULT_VAE, default_vae
from scoresde.pretrained import ASSETS, CASCADE_MODELS, FEW_STEP_MODELS, LATENT_MODELS, default_cascade, default_model

SHIPPED = [DEFAULT_VAE, LATENT_MODELS["vp"], *CASCADE_MODELS["vp"]]


def test_the_shipped_latent_and_cascade_files_fit_in_20_mb():
    sizes = {name: (ASSETS / name).stat().st_size for name in SHIPPED}
    assert sum(sizes.values()) <= 20 * 2**20, sizes  # issue 21: together at most 20 MB


def test_the_shipped_vae_reconstructs_test_patches():
    """Posterior-mean reconstructions of 32 test patches spread over the split (35.4 dB over all 350 at export)."""
    vae = default_vae()
    assert vae.scale_factor is not None and 0.5 < vae.scale_factor < 2.0
    test = patches("test", 32).images
    x = to_model_input(test[torch.linspace(0, len(test) - 1, 32).round().long()], 256)
    with torch.no_grad():
        recon = vae.decode(vae.encode(x))
    assert float(psnr(recon, x).mean()) > 30.0


def test_the_shipped_latent_model_embeds_the_shipped_vae_and_samples_images():
    model = default_model("vp", data="patches", kind="latent")
    assert isinstance(model, LatentModel)
    assert tuple(model.image_shape) == (3, 32, 32) and tuple(model.latent_shape) == (4, 8, 8)
    vae = default_vae()
    assert model.scale_factor == vae.scale_factor
    for k, v in vae.state_dict().items():
        assert torch.equal(model.autoencoder.state_dict()[k], v), k
    out = scoresde.sample(model, solver="dpm_solver++", steps=3, n=2, seed=0)
    assert out.x.shape == (2, 3, 32, 32) and bool(torch.isfinite(out.x).all())
    assert out.settings["latent"]["latent_shape"] == [4, 8, 8]


def test_the_shipped_cascade_chains_its_stages():
    base, stage = default_cascade("vp")
    assert tuple(base.image_shape) == tuple(stage.low_shape) == (3, 8, 8) and tuple(stage.image_shape) == (3, 32, 32)
    res = sample_cascade(base, stage, n=2, seed=0, aug_level=0.05, base_options={"solver": "ddim", "steps": 2},
                         sr_options={"solver": "dpm_solver++", "steps": 2})
    assert res.x.shape == (2, 3, 32, 32) and res.nfe == {"base": 2, "sr": 2} and bool(torch.isfinite(res.x).all())


def test_shipped_latent_and_cascade_names_are_checked():
    with pytest.raises(ValueError, match="the shipped latent model is an unconditional model of the 32 x 32 patches"):
        default_model("vp", kind="latent")
    with pytest.raises(ValueError, match=r"no shipped latent default model for sde 've'; shipped: \['vp'\]"):
        default_model("ve", data="patches", kind="latent")
    with pytest.raises(ValueError, match=r"no shipped cascade for sde 'subvp'; shipped: \['vp'\]"):
        default_cascade("subvp")


def test_cli_few_step_kinds_are_the_shipped_few_step_models():
    assert FEW_STEP_KINDS == tuple(FEW_STEP_MODELS)


def test_cli_samples_the_shipped_latent_model_and_cascade(tmp_path, capsys):
    out = tmp_path / "latent.npz"
    assert main(["sample", "--data", "patches", "--kind", "latent", "--solver", "ddim", "--steps", "2", "--n", "2",
                 "--out", str(tmp_path / "latent.png"), "--save", str(out), "--quiet"]) == 0
    assert np.load(out)["x"].shape == (2, 3, 32, 32)
    save = tmp_path / "cascade.npz"
    assert main(["cascade", "--steps", "2", "--sr-steps", "2", "--n", "2", "--out", str(tmp_path / "c.png"),
                 "--save", str(save), "--quiet"]) == 0
    data = np.load(save)
    assert data["x"].shape == (2, 3, 32, 32) and data["low"].shape == (2, 3, 8, 8)
    assert "NFE base 2 + SR 2" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--base", "--sr"])
def test_cli_cascade_wants_both_files_or_neither(flag, tmp_path, capsys):
    path = ASSETS / (CASCADE_MODELS["vp"][0] if flag == "--base" else CASCADE_MODELS["vp"][1])
    assert main(["cascade", flag, str(path), "--out", str(tmp_path / "c.png"), "--quiet"]) == 2
    assert "or give neither for the shipped cascade" in capsys.readouterr().err
