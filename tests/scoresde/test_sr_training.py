"""SR stages in the trainer (TrainConfig.sr_factor > 1), their files (`load_sr_stage`) and `scoresde cascade`."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import scoresde
from scoresde.cli import main
from scoresde.data import patches, to_model_input
from scoresde.latent import sr_stage
from scoresde.latent.cascade import SRStage, sr_loss
from scoresde.pretrained import export_model
from scoresde.train import TrainConfig, train
from scoresde.training.builders import build_net_config
from scoresde.training.config import SR_AUG_MAX
from scoresde.training import step as train_step
from scoresde.training.step import compute_loss

from .helpers import resumed_equals_uninterrupted

TINY = dict(data="patches", net_options={"ch": 8, "num_res_blocks": 1, "ch_mult": (1, 2), "attn_resolutions": ()},
            batch_size=4, lr=1e-3, warmup_steps=2, ema_decay=0.9, log_every=1, progress=False, device="cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny trained files: a base model of the 32 x 32 patches pooled to 16 x 16 and a 16 -> 32 SR stage
    (checkpoint and export)."""
    out = tmp_path_factory.mktemp("sr")
    base = train(TrainConfig(**TINY, image_size=32, downsample=2, steps=2, ckpt_every=2, out_dir=str(out / "base")))
    sr = train(TrainConfig(**TINY, image_size=32, sr_factor=2, sr_aug_max=0.3, steps=2, ckpt_every=2,
                           out_dir=str(out / "sr")))
    exported = export_model(out / "sr" / "checkpoint.safetensors", out / "sr.safetensors")
    return {"base": out / "base" / "checkpoint.safetensors", "sr_ckpt": out / "sr" / "checkpoint.safetensors",
            "sr": exported, "sr_result": sr, "base_result": base, "dir": out}


@pytest.mark.parametrize("kw,match", [
    (dict(sr_aug_max=0.2), r"sr_aug_max applies to SR runs \(sr_factor > 1\); sr_factor is 1"),
    (dict(sr_factor=0), "sr_factor must be an integer >= 1"),
    (dict(downsample=0), "downsample must be an integer >= 1"),
    (dict(sr_factor=2, sr_aug_max=1.5), r"sr_aug_max must be a number in \[0.0, 1.0\]"),
    (dict(sr_factor=2, augment=("xflip",)), r"does not support \['augment'\]"),
    (dict(sr_factor=2, conditional=True), r"does not support \['conditional'\]"),
    (dict(sr_factor=2, sample_every=5), r"does not support \['sample_every'\]"),
    (dict(sr_factor=2, time_sampling="likelihood"), r"does not support \[\"time_sampling 'likelihood'\"\]"),
    (dict(sr_factor=2, loss="flow_matching", sde="flow", prediction="flow"), r"does not support \[\"loss 'flow_matching'\"\]"),
    (dict(sr_factor=2, net_options={"out_channels": 3}), r"does not support \['net_options out_channels'\]"),
])
def test_sr_config_refuses_what_it_does_not_implement(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{**TINY, **kw})


def test_sr_network_sees_twice_the_channels_and_the_factor_divides_the_size():
    config = TrainConfig(**TINY, image_size=32, sr_factor=4)
    net = build_net_config(config, (3, 32, 32), 2)
    assert (net.in_channels, net.out_channels, net.augment_dim, net.image_size) == (6, 3, 1, 32)
    assert config.sr_options() == SR_AUG_MAX and replace(config, sr_aug_max=0.1).sr_options() == 0.1
    with pytest.raises(ValueError, match="sr_factor 3 must divide the image size 32"):
        build_net_config(replace(config, sr_factor=3), (3, 32, 32), 2)


def test_downsample_trains_on_pooled_images(files, monkeypatch, tmp_path):
    assert files["base_result"].model.net.config.image_size == 16
    assert scoresde.load_model(files["base"]).image_shape == (3, 16, 16)
    with pytest.raises(ValueError, match="downsample 3 must divide the image size 32"):
        build_net_config(TrainConfig(**TINY, image_size=32, downsample=3), (3, 32, 32), 2)
    seen = []
    real = train_step.dsm_loss
    monkeypatch.setattr(train_step, "dsm_loss", lambda model, x0, **kw: seen.append(x0) or real(model, x0, **kw))
    train(TrainConfig(**TINY, image_size=16, downsample=4, steps=1, ckpt_every=1, out_dir=str(tmp_path / "run")))
    x0 = seen[0]
    assert x0.shape == (4, 3, 4, 4) and x0.abs().max() <= 1
    # an average of 16 dequantized pixels: not on the 256-level grid any more
    levels = (x0 + 1) * 127.5
    assert (levels - levels.round()).abs().max() > 1e-3


def test_the_trainer_loss_of_an_sr_run_is_sr_loss(files):
    """compute_loss of an SR run is sr_loss of the SR stage over the run's network, draw for draw."""
    config = TrainConfig(**TINY, image_size=32, sr_factor=2, sr_aug_max=0.3)
    stage = files["sr_result"].model
    x0 = to_model_input(patches("train", 32).images[:4], 256, dequantize=True, generator=torch.Generator().manual_seed(0))
    model = scoresde.ScoreModel(stage.backbone, stage.sde, "eps", c_noise="log_noise")
    got, _ = compute_loss(config, model, x0, y=None, null_label=None, levels=256, history=None,
                          generator=torch.Generator().manual_seed(5))
    want = sr_loss(stage, x0, s_max=0.3, generator=torch.Generator().manual_seed(5)).mean()
    assert torch.equal(got, want) and got > 0


def _conditioned_output(stage: SRStage) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(3, *stage.low_shape, generator=gen)
    x = torch.randn(3, *stage.image_shape, generator=gen)
    return stage.conditioned(w, 0.1).eps(x, torch.full((3,), 0.4))


def test_sr_files_load_as_sr_stages_only(files):
    res = files["sr_result"]
    assert isinstance(res.model, SRStage) and res.model.image_shape == (3, 32, 32) and res.model.low_shape == (3, 16, 16)
    from_ckpt = scoresde.load_sr_stage(files["sr_ckpt"])
    from_export = scoresde.load_sr_stage(files["sr"])
    assert from_ckpt.step == from_export.step == 2 and from_export.factor == 2
    assert from_export.config["sr_aug_max"] == 0.3
    ref = _conditioned_output(res.model)
    assert torch.equal(_conditioned_output(from_ckpt), ref)
    assert torch.allclose(_conditioned_output(from_export), ref, atol=5e-3)  # float16 weights
    with pytest.raises(ValueError, match="holds the super-resolution stage of a cascade .*load_sr_stage"):
        scoresde.load_model(files["sr"])
    with pytest.raises(ValueError, match="holds a model of images .*load it with scoresde.load_model"):
        scoresde.load_sr_stage(files["base"])
    with pytest.raises(ValueError, match="EMA weights only"):
        scoresde.load_sr_stage(files["sr"], ema=False)


@pytest.mark.slow
def test_sr_run_init_from_an_exported_stage(files, tmp_path):
    config = TrainConfig(**TINY, image_size=32, sr_factor=2, steps=0, init_from=str(files["sr"]),
                         out_dir=str(tmp_path / "run"))
    res = train(config)
    exported = scoresde.load_sr_stage(files["sr"])
    assert torch.equal(_conditioned_output(res.model), _conditioned_output(exported))


@pytest.mark.slow
def test_sr_run_resumes_exactly(monkeypatch, tmp_path):
    base = TrainConfig(**TINY, image_size=32, sr_factor=4, steps=6, ckpt_every=3)
    resumed_equals_uninterrupted(monkeypatch, base, tmp_path, loss="sr_loss", module=sr_stage)


def test_cli_cascade_writes_grids_and_arrays(files, tmp_path, capsys):
    out, low, save = tmp_path / "c.png", tmp_path / "low.png", tmp_path / "c.npz"
    code = main(["cascade", "--base", str(files["base"]), "--sr", str(files["sr"]), "--n", "3", "--steps", "2",
                 "--solver", "ddim", "--sr-solver", "dpm_solver++", "--sr-steps", "3", "--aug-level", "0.1",
                 "--out", str(out), "--low-out", str(low), "--save", str(save), "--quiet"])
    assert code == 0 and out.is_file() and low.is_file()
    text = capsys.readouterr().out
    assert "NFE base 2 + SR 3" in text
    data = np.load(save)
    assert data["x"].shape == (3, 3, 32, 32) and data["low"].shape == data["w"].shape == (3, 3, 16, 16)
    assert data["images"].shape == (3, 32, 32, 3) and data["images"].dtype == np.uint8
    # the base stage is plain sampling of the base model with --seed
    low_ref = scoresde.sample(scoresde.load_model(files["base"]), solver="ddim", steps=2, n=3, seed=0).x
    assert np.allclose(data["low"], low_ref.numpy(), atol=1e-6)


@pytest.mark.parametrize("args,match", [
    (["--sr", "missing.safetensors"], "--sr: model file 'missing.safetensors' does not exist"),
    (["--out", "c.gif"], "--out"),
    (["--save", "c.txt"], "--save"),
    (["--device", "nodevice"], "nodevice"),
])
def test_cli_cascade_checks_flags_before_any_work(files, args, match, capsys):
    argv = ["cascade", "--base", str(files["base"]), "--sr", str(files["sr"]), "--quiet", *args]
    assert main(argv) == 2
    assert match in capsys.readouterr().err


@pytest.mark.slow
def test_cli_cascade_refuses_a_base_of_the_wrong_shape(files, tmp_path, capsys):
    # the SR stage's own file as a base is refused by load_model; a 32 x 32 base for a 16 -> 32 stage by shape
    big = train(TrainConfig(**TINY, image_size=32, steps=1, ckpt_every=1, out_dir=str(tmp_path / "big")))
    assert big.step == 1
    argv = ["cascade", "--base", str(tmp_path / "big" / "checkpoint.safetensors"), "--sr", str(files["sr"]), "--quiet",
            "--out", str(tmp_path / "c.png")]
    assert main(argv) == 2
    assert "the base model makes images (3, 32, 32), the SR stage is conditioned on (3, 16, 16)" in capsys.readouterr().err
