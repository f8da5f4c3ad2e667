"""The patch VAE: shapes, a short training run, resuming, the scale factor, and its model file."""

import dataclasses
import math

import pytest
import torch

import scoresde
from scoresde.analytic import AnalyticModel, Gaussian
from scoresde.latent.model import LatentModel
from scoresde.latent.vae import VAE, VAEConfig, psnr
from scoresde.latent.vae_files import load_vae, read_vae_file, save_vae
from scoresde.latent.vae_train import VAETrainConfig, compute_scale_factor, train_vae

TINY = VAEConfig(image_size=16, in_channels=3, latent_channels=2, ch=8, ch_mult=(1, 2), num_res_blocks=1)


def smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.tanh(torch.randn(n, 3, 16, 16, generator=gen).cumsum(2).cumsum(3) / 8)


@pytest.mark.parametrize("config,latent", [(TINY, (2, 8, 8)),
                                           (VAEConfig(image_size=32, ch=8, ch_mult=(1, 1, 2)), (4, 8, 8))])
def test_encode_decode_shapes(config, latent):
    vae = VAE(config)
    x = torch.zeros(2, 3, config.image_size, config.image_size)
    assert vae.latent_shape == latent and config.factor == config.image_size // latent[1]
    mean, logvar = vae.encode_posterior(x)
    assert mean.shape == logvar.shape == (2, *latent) and vae.encode(x).shape == (2, *latent)
    assert vae.decode(mean).shape == x.shape
    assert vae.decode(mean.double()).dtype == torch.float64
    with pytest.raises(ValueError, match="x must have shape"):
        vae.encode(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="divisible by the downsampling factor 4"):
        VAEConfig(image_size=18, ch_mult=(1, 1, 1))


def test_training_lowers_the_loss_resumes_exactly_and_stores_the_scale_factor(tmp_path):
    images = smooth_images(128)
    config = VAETrainConfig(steps=15, batch_size=16, lr=1e-2, kl_weight=1e-3, save_every=5)
    log = []
    vae = train_vae(images, TINY, config, tmp_path / "a.safetensors", log=log.append)
    assert [r["step"] for r in log] == [5, 10, 15]
    assert log[-1]["mse"] < log[1]["mse"] < log[0]["mse"] and log[-1]["mse"] < 0.9 * log[0]["mse"]
    # interrupted after the save at step 5, then called again: the same weights as the uninterrupted run

    def stop(record):
        if record["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_vae(images, TINY, config, tmp_path / "b.safetensors", log=stop)
    assert read_vae_file(tmp_path / "b.safetensors").step == 5
    # a save before the end carries no scale factor (the weights keep changing): LatentModel refuses it until one is set
    unfinished = load_vae(tmp_path / "b.safetensors")
    assert unfinished.scale_factor is None
    latent = AnalyticModel(Gaussian(torch.zeros(unfinished.latent_shape)), scoresde.VPSDE())
    with pytest.raises(ValueError, match="scale_factor is None: not computed"):
        LatentModel(latent, unfinished)
    unfinished.scale_factor = compute_scale_factor(unfinished, images)
    assert LatentModel(latent, unfinished).scale_factor == unfinished.scale_factor != 1.0
    resumed = train_vae(images, TINY, config, tmp_path / "b.safetensors")
    for (name, p), q in zip(vae.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    # the scale factor: 1 / std of the encoded training latents, stored and applied
    assert vae.scale_factor == pytest.approx(compute_scale_factor(vae, images)) and vae.scale_factor != 1.0
    loaded = load_vae(tmp_path / "a.safetensors")
    assert loaded.scale_factor == vae.scale_factor
    latent_model = LatentModel(AnalyticModel(Gaussian(torch.zeros(loaded.latent_shape)), scoresde.VPSDE()), loaded)
    z = latent_model.encode(images)
    torch.testing.assert_close(z, vae.scale_factor * loaded.encode(images))
    assert float(z.std()) == pytest.approx(1.0, abs=1e-4)
    torch.testing.assert_close(latent_model.decode(z), loaded.decode(loaded.encode(images)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="another configuration"):
        train_vae(images, TINY, dataclasses.replace(config, lr=1e-3), tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="at step 15, past steps=10"):
        train_vae(images, TINY, dataclasses.replace(config, steps=10), tmp_path / "a.safetensors")
    longer = train_vae(images, TINY, dataclasses.replace(config, steps=17), tmp_path / "a.safetensors")
    assert read_vae_file(tmp_path / "a.safetensors").step == 17
    assert not torch.equal(longer.decoder[0].weight, vae.decoder[0].weight)


def test_save_load_round_trip_and_refusals(tmp_path):
    torch.manual_seed(0)
    vae = VAE(TINY, scale_factor=0.37)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    vae(smooth_images(4))[0].square().mean().backward()
    opt.step()
    path = save_vae(tmp_path / "v.safetensors", vae, step=7, train_config={"kl_weight": 0.001}, optimizer=opt)
    f = read_vae_file(path)
    assert f.step == 7 and f.train_config == {"kl_weight": 0.001} and f.vae.config == TINY
    assert f.vae.scale_factor == 0.37 and not f.vae.training
    for (name, p), q in zip(vae.state_dict().items(), f.vae.state_dict().values()):
        assert torch.equal(p, q), name
    fresh = torch.optim.Adam(f.vae.parameters(), lr=1e-3)
    fresh.load_state_dict(f.optimizer_state)
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    x = smooth_images(3)
    torch.testing.assert_close(f.vae.encode(x), vae.eval().encode(x), rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]  # no temporary file left
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        load_vae(tmp_path / "bad.safetensors")
    from scoresde.files import write_safetensors
    write_safetensors(tmp_path / "x.safetensors", {"a": torch.zeros(1)}, {"format": "scoresde-checkpoint"})
    with pytest.raises(ValueError, match="expected 'scoresde-vae'"):
        load_vae(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError, match="no VAE file"):
        load_vae(tmp_path / "missing.safetensors")


def test_latent_sampling_through_the_vae_returns_images():
    torch.manual_seed(0)
    vae = VAE(TINY, scale_factor=2.0).eval()
    model = LatentModel(AnalyticModel(Gaussian(torch.zeros(vae.latent_shape)), scoresde.VPSDE()), vae)
    out = scoresde.sample(model, solver="dpm_solver++", steps=5, n=3, seed=0)
    assert out.x.shape == (3, 3, 16, 16) and out.settings["latent"]["latent_shape"] == [2, 8, 8]
    z = scoresde.sample(model.latent, solver="dpm_solver++", steps=5, n=3, seed=0, shape=vae.latent_shape).x
    torch.testing.assert_close(out.x, vae.decode(z / 2.0))


def test_psnr():
    x = torch.zeros(2, 3, 4, 4)
    assert float(psnr(x, x + 0.02)[0]) == pytest.approx(10 * math.log10(4 / 0.0004))


def test_save_samples_streams_the_decoded_images(tmp_path):
    import numpy as np

    from scoresde.sampling_files import save_samples

    torch.manual_seed(0)
    vae = VAE(TINY).eval()
    model = LatentModel(AnalyticModel(Gaussian(torch.zeros(vae.latent_shape)), scoresde.VPSDE()), vae)
    saved = save_samples(tmp_path / "s.npz", n=5, batch_size=2, model=model, solver="ddim", steps=3, seed=0)
    assert saved.shape == (5, 3, 16, 16)
    with np.load(tmp_path / "s.npz") as f:
        x, images = f["x"], f["images"]
    assert images.shape == (5, 16, 16, 3)
    ref = scoresde.sample(model, solver="ddim", steps=3, n=5, seed=0, batch_size=2).x
    np.testing.assert_array_equal(x, ref.numpy())


@pytest.mark.parametrize("every,expected", [(0, [1e-2] * 8), (3, [1e-2] * 3 + [5e-3] * 3 + [2.5e-3] * 2)])
def test_lr_halving_follows_the_step_and_extends_with_the_run(tmp_path, every, expected):
    config = VAETrainConfig(steps=8, batch_size=4, lr=1e-2, save_every=4, lr_halve_every=every)
    assert [config.lr_at(s) for s in range(8)] == pytest.approx(expected, rel=1e-15)
    images = smooth_images(16)
    seen = []
    real_step = torch.optim.Adam.step

    def step(opt, *a, **k):
        seen.append(opt.param_groups[0]["lr"])
        return real_step(opt, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.Adam, "step", step)
        train_vae(images, TINY, dataclasses.replace(config, steps=5), tmp_path / "v.safetensors")
        train_vae(images, TINY, config, tmp_path / "v.safetensors")  # extended: the schedule goes on from step 5
    assert seen == pytest.approx(expected, rel=1e-15)
    with pytest.raises(ValueError, match="lr_halve_every"):
        VAETrainConfig(lr_halve_every=-1)


def test_a_file_from_before_lr_halve_every_resumes(tmp_path):
    images = smooth_images(16)
    config = VAETrainConfig(steps=4, batch_size=4, save_every=2)
    vae = train_vae(images, TINY, dataclasses.replace(config, steps=2), tmp_path / "v.safetensors")
    old = {k: v for k, v in config.to_dict().items() if k != "lr_halve_every"}
    save_vae(tmp_path / "v.safetensors", vae, step=2, train_config={**old, "steps": 2})
    assert read_vae_file(tmp_path / "v.safetensors").step == 2
    assert train_vae(images, TINY, config, tmp_path / "v.safetensors") is not None
    assert read_vae_file(tmp_path / "v.safetensors").step == 4
