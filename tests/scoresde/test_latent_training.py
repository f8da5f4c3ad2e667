"""Latent runs in the trainer (TrainConfig.vae): the network learns the VAE's scaled latents, the files carry the
VAE and load as a LatentModel, resumption checks the VAE, and the command line samples them as images."""

from dataclasses import replace

import pytest
import torch

import scoresde
from scoresde.cli import main
from scoresde.latent.model import LatentModel
from scoresde.latent.vae import VAE, VAEConfig
from scoresde.latent.vae_files import save_vae
from scoresde.pretrained import export_model
from scoresde.train import TrainConfig, load_checkpoint, train
from scoresde.training import loop as train_loop
from scoresde.training import step as train_step

from .helpers import resumed_equals_uninterrupted

TINY = dict(data="patches", image_size=16, batch_size=4, lr=1e-3, warmup_steps=2, ema_decay=0.9, log_every=1,
            net_options={"ch": 8, "num_res_blocks": 1, "ch_mult": (1, 2), "attn_resolutions": ()}, progress=False,
            device="cpu")


def _vae(path, *, seed: int = 0, scale=0.7, image_size: int = 16):
    torch.manual_seed(seed)
    return save_vae(path, VAE(VAEConfig(image_size=image_size, ch=8, ch_mult=(1, 2)), scale_factor=scale))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("latent")
    vae = _vae(out / "vae.safetensors")
    config = TrainConfig(**TINY, vae=str(vae), steps=2, ckpt_every=2, out_dir=str(out / "run"))
    return {"result": train(config), "config": config, "dir": out, "ckpt": out / "run" / "checkpoint.safetensors",
            "exported": export_model(out / "run" / "checkpoint.safetensors", out / "latent.safetensors")}


@pytest.mark.parametrize("kw,match", [
    (dict(vae=""), "vae must be None or a VAE file path"),
    (dict(vae="v.safetensors", sr_factor=2), r"a latent run \(vae\) does not support \['sr_factor 2'\]"),
    (dict(vae="v.safetensors", loss="ct"), r"does not support \[\"loss 'ct'\"\]"),
    (dict(vae="v.safetensors", sample_every=10), r"does not support \['sample_every'\]"),
])
def test_latent_config_refusals(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{**TINY, **kw})


def test_the_network_learns_the_scaled_latents_of_the_batch(run, monkeypatch, tmp_path):
    pixels, latents = [], []
    real_input, real_loss = train_loop.datasets.to_model_input, train_step.dsm_loss
    monkeypatch.setattr(train_loop.datasets, "to_model_input", lambda *a, **k: pixels.append(real_input(*a, **k)) or pixels[-1])
    monkeypatch.setattr(train_step, "dsm_loss", lambda model, x0, **k: latents.append(x0) or real_loss(model, x0, **k))
    train(replace(run["config"], steps=1, out_dir=str(tmp_path / "one")))
    vae = scoresde.load_model(run["exported"]).autoencoder
    assert latents[0].shape == (4, 4, 8, 8)
    assert torch.allclose(latents[0], 0.7 * vae.encode(pixels[0]), atol=1e-6)


def test_latent_files_load_as_latent_models_with_their_vae(run, tmp_path):
    res = run["result"]
    assert isinstance(res.model, LatentModel) and res.model.latent_shape == (4, 8, 8)
    vae = VAE(VAEConfig(image_size=16, ch=8, ch_mult=(1, 2)))
    vae.load_state_dict(load_checkpoint(run["ckpt"]).vae.state_dict())
    for path in (run["ckpt"], run["exported"]):
        model = scoresde.load_model(path)
        assert isinstance(model, LatentModel) and model.image_shape == (3, 16, 16) and model.scale_factor == 0.7
        for (k, a), b in zip(model.autoencoder.state_dict().items(), vae.state_dict().values()):
            assert torch.equal(a, b), k  # float32 in the exported file too
    out = scoresde.sample(scoresde.load_model(run["exported"]), solver="ddim", steps=2, n=3, seed=0)
    assert out.x.shape == (3, 3, 16, 16) and out.settings["latent"]["latent_shape"] == [4, 8, 8]


@pytest.mark.slow
def test_latent_runs_resume_exactly_and_refuse_a_changed_vae(monkeypatch, tmp_path):
    vae = _vae(tmp_path / "vae.safetensors")
    base = TrainConfig(**TINY, vae=str(vae), steps=6, ckpt_every=3)
    _, _, out = resumed_equals_uninterrupted(monkeypatch, base, tmp_path)
    _vae(vae, seed=1)  # another VAE under the same name
    with pytest.raises(ValueError, match="the VAE file differs from the VAE the run started with"):
        train(replace(base, steps=7, out_dir=str(out)))


@pytest.mark.slow
def test_latent_run_refuses_missing_mismatched_or_unscaled_vaes(tmp_path):
    config = TrainConfig(**TINY, steps=1, out_dir=str(tmp_path / "run"), vae=str(tmp_path / "missing.safetensors"))
    with pytest.raises(FileNotFoundError, match="vae: no VAE file"):
        train(config)
    with pytest.raises(ValueError, match=r"it encodes images \(3, 32, 32\), the run's data are \(3, 16, 16\)"):
        train(replace(config, vae=str(_vae(tmp_path / "big.safetensors", image_size=32))))
    with pytest.raises(ValueError, match="scale_factor is None"):
        train(replace(config, vae=str(_vae(tmp_path / "unscaled.safetensors", scale=None))))


def test_cli_samples_a_latent_model_as_images(run, tmp_path, capsys):
    out = tmp_path / "latent.png"
    code = main(["sample", "--model", str(run["exported"]), "--solver", "ddim", "--steps", "2", "--n", "2",
                 "--out", str(out), "--save", str(tmp_path / "x.npz"), "--quiet"])
    assert code == 0 and out.is_file()
    import numpy as np

    assert np.load(tmp_path / "x.npz")["x"].shape == (2, 3, 16, 16)
    assert '"latent_shape": [4, 8, 8]' in capsys.readouterr().out


def test_cli_bpd_of_a_latent_model_is_the_latents_figure(run, capsys):
    code = main(["bpd", "--model", str(run["exported"]), "--data", "patches", "--n", "2", "--method", "dpm_solver",
                 "--steps", "2", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("latent bits/dim (per latent dimension")
    assert '"space": "latent"' in out and '"latent_dim": 256' in out
    model = scoresde.load_model(run["exported"])
    x = scoresde.data.to_model_input(scoresde.data.patches("test", 16).images[:2], 256)
    expected = scoresde.bits_per_dim(model, x, levels=None, method="dpm_solver", steps=2, seed=0).bpd.mean()
    assert f"{float(expected):.4f} ±" in out
