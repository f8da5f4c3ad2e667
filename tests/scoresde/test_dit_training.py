"""The DiT wherever the U-Net goes: TrainConfig, the trainer (checkpoints, exact resume, compile, bf16
autocast), load_model and export, class-conditional sampling with guidance, bits/dim, crafted files,
and the natural-image patches as a data set of `scoresde.data.load` and the trainer."""

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

import scoresde
from scoresde.data import load
from scoresde.nn import DiT, DiTConfig, UNet
from scoresde.train import TrainConfig, load_checkpoint, load_model, train
from scoresde.training.checkpoints import ASSETS, DEFAULT_MODELS, export_model
from scoresde.training.builders import build_net_config, build_sde
from scoresde.training.step import compute_loss

from .helpers import resumed_equals_uninterrupted
from .test_reliability_files import read, refused, rewrite, set_json

TINY_DIT = {"hidden_size": 32, "depth": 2, "num_heads": 2, "embedding_dim": 16}
TINY = dict(net="dit_digits", net_options=TINY_DIT, batch_size=16, lr=1e-3, warmup_steps=3, ema_decay=0.9,
            log_every=1, progress=False, device="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """out_dir of a 2-step tiny unconditional DiT run on the digits."""
    out = tmp_path_factory.mktemp("dit")
    train(TrainConfig(**TINY, steps=2, out_dir=str(out)))
    return out


# --- configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    (dict(net="dit_tiny"), r"unknown net 'dit_tiny'; choose one of \['ddpmpp_cifar10', 'digits', 'dit_b2'"),
    (dict(net="dit_digits", net_options={"ch": 8}), r"DiTConfig fields \(net 'dit_digits'\).*unknown \['ch'\]"),
    (dict(net="digits", net_options={"depth": 2}), r"UNetConfig fields \(net 'digits'\).*unknown \['depth'\]"),
    (dict(net="dit_digits", net_options={"image_size": 16}), "taken from the data"),
    (dict(net="dit_digits", net_options={"learn_variance": True}), "use TrainConfig.learn_variance"),
    (dict(data="patches", image_size=8), r"data 'patches' needs image_size None \(16\) or one of \[16, 32\]"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_the_builder_sets_what_the_run_decides():
    cfg = TrainConfig(net="dit_s2", conditional=True, learn_variance=True, augment=("xflip",), net_options={"depth": 1})
    net_config = build_net_config(cfg, (1, 8, 8), 10)
    assert isinstance(net_config, DiTConfig) and net_config.depth == 1 and net_config.hidden_size == 384
    assert (net_config.image_size, net_config.in_channels, net_config.num_classes) == (8, 1, 10)
    assert net_config.learn_variance and net_config.augment_dim == 1
    # the ImageNet preset's 1000 classes and learned variance give way to the run's
    plain = build_net_config(replace(cfg, conditional=False, learn_variance=False, augment=()), (3, 16, 16), 2)
    assert plain.num_classes is None and not plain.learn_variance and plain.augment_dim == 0
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="patch_size 2 must divide image_size 7"):
        build_net_config(cfg, (1, 7, 7), 10)


# --- training, resume, files -----------------------------------------------------------------------

def test_exact_resume_after_kill_then_load_and_export(tmp_path, monkeypatch):
    base = TrainConfig(**TINY, steps=6, ckpt_every=3, seed=1)
    res, ref, out = resumed_equals_uninterrupted(monkeypatch, base, tmp_path)
    assert isinstance(ref.net, DiT) and isinstance(ref.ema, DiT)

    path = out / "checkpoint.safetensors"
    _, meta = read(path)
    assert meta["net_kind"] == "dit" and "unet_config" not in meta
    ckpt = load_checkpoint(path)
    assert ckpt.net_kind == "dit" and ckpt.net_config == DiTConfig.from_dict(json.loads(meta["dit_config"]))
    assert json.loads((out / "config.json").read_text())["net_kind"] == "dit"

    x, t = torch.rand(3, 1, 8, 8) * 2 - 1, torch.full((3,), 0.4)
    model = load_model(path)
    assert isinstance(model.net, DiT) and model.image_shape == (1, 8, 8) and model.null_label is None
    torch.testing.assert_close(model.eps(x, t), res.model.eps(x, t), rtol=0, atol=0)
    exported = load_model(export_model(path, tmp_path / "model.safetensors"))
    assert isinstance(exported.net, DiT) and exported.step == 6
    for k, v in exported.net.state_dict().items():  # the float16 weights, back in float32
        assert torch.equal(v, res.ema.state_dict()[k].half().float()), k
    torch.testing.assert_close(exported.eps(x, t), model.eps(x, t), rtol=0, atol=1e-2)


def test_init_from_refuses_another_backbone(run, tmp_path):
    unet_run = TrainConfig(net_options={"ch": 8, "num_res_blocks": 1, "ch_mult": (1,), "attn_resolutions": ()},
                           batch_size=16, progress=False, device="cpu", steps=1, out_dir=str(tmp_path / "u"))
    with pytest.raises(ValueError, match=r"it holds a DiT \(net 'dit_digits'\); this run trains a U-Net"):
        train(replace(unet_run, init_from=str(run / "checkpoint.safetensors")))
    with pytest.raises(ValueError, match=r"its DiT configuration differs from this run's in depth: 2 -> 1"):
        train(TrainConfig(**{**TINY, "net_options": {**TINY_DIT, "depth": 1}}, steps=1, out_dir=str(tmp_path / "d"),
                          init_from=str(run / "checkpoint.safetensors")))


def test_compiled_network_trains(tmp_path):
    # compile "net" through dynamo (backend "eager": tracing only, as the other CPU compile tests)
    res = train(TrainConfig(**TINY, steps=2, compile="net", compile_backend="eager", out_dir=str(tmp_path)))
    assert res.step == 2 and res.loss == res.loss
    assert not any(k.startswith("_orig_mod") for k in load_checkpoint(tmp_path / "checkpoint.safetensors").net)


def test_bf16_autocast_loss_and_gradients():
    # the trainer's bf16 path (CUDA only) is autocast around the loss; the CPU's bf16 autocast runs the same code
    cfg = TrainConfig(**{**TINY, "device": "auto"}, precision="bf16", conditional=True, learn_variance=True,
                      augment=("xflip",))
    net = DiT(build_net_config(cfg, (1, 8, 8), 10))
    model = scoresde.ScoreModel(net, build_sde(cfg), "eps", c_noise=cfg.c_noise, learned_variance=True)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    loss, _ = compute_loss(cfg, model, x0, y=torch.arange(4), null_label=10, levels=17, history=None,
                           generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())


def test_class_conditional_dit_on_patches_guidance_and_bits_per_dim(tmp_path):
    cfg = TrainConfig(**{**TINY, "net": "dit_patches"}, data="patches", conditional=True, steps=2,
                      out_dir=str(tmp_path))
    train(cfg)
    model = load_model(tmp_path / "checkpoint.safetensors")
    assert model.image_shape == (3, 16, 16) and model.null_label == 2 and model.net.config.num_classes == 2
    res = scoresde.sample(model, y=torch.tensor([0, 1]), guidance_scale=2.0, solver="ddim", steps=5, seed=0)
    assert res.x.shape == (2, 3, 16, 16) and torch.isfinite(res.x).all() and res.nfe == 5
    guidance = res.settings["guidance"]  # one net call per step on the conditional and the null rows
    assert guidance["null_label"] == 2 and guidance["net_calls"] == 5 and guidance["net_rows"] == 2 * 2 * 5
    data = load("patches", split="test")
    x = scoresde.data.to_model_input(data.images[:2], data.levels)
    bpd = scoresde.bits_per_dim(model, x, method="dpm_solver", steps=5, generator=torch.Generator().manual_seed(0))
    assert bpd.bpd.shape == (2,) and torch.isfinite(bpd.bpd).all()


# --- crafted files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fields,match", [
    (dict(hidden_size=16384, depth=256, num_heads=16), r"dit_config implies [\d,]+ parameters \(at most 2,000,000,000\)"),
    (dict(hidden_size=10**9), r"'dit_config'.*hidden_size must be an integer <= 16384"),
    (dict(image_size=2048, patch_size=1), r"'dit_config'.*tokens \(at most 65536\)"),
    (dict(num_classes=10**12), r"'dit_config'.*num_classes"),
])
@pytest.mark.parametrize("kind", ["checkpoint", "exported"])
def test_huge_dit_config_is_refused_within_a_second(run, tmp_path, fields, match, kind):
    src = run / "checkpoint.safetensors"
    if kind == "exported":
        src = export_model(src, tmp_path / "model.safetensors")
    bad = rewrite(src, tmp_path / "bad.safetensors", meta=set_json("dit_config", **fields))
    t0 = time.perf_counter()
    refused(load_model, bad, match)
    assert time.perf_counter() - t0 < 1


@pytest.mark.parametrize("edit,match", [
    (lambda m: {k: v for k, v in m.items() if k != "dit_config"}, "lacks 'dit_config'"),
    (lambda m: {**m, "net_kind": "transformer"}, r"'net_kind' must be one of \['unet', 'dit'\], got 'transformer'"),
    (lambda m: {**m, "net_kind": "unet", "unet_config": m["dit_config"]}, "'unet_config'.*unknown UNetConfig field"),
    (lambda m: {k: v for k, v in m.items() if k != "net_kind"}, "lacks 'unet_config'"),  # read as a U-Net file
    (set_json("config", net="digits", net_options={}), r"'net_kind' is 'dit' but the config's net 'digits' is a 'unet' preset"),
])
def test_malformed_dit_metadata_is_one_value_error(run, tmp_path, edit, match):
    bad = rewrite(run / "checkpoint.safetensors", tmp_path / "bad.safetensors", meta=edit)
    refused(load_checkpoint, bad, match)
    refused(load_model, bad, match)


def test_dit_weights_are_checked_and_the_digest_too(run, tmp_path):
    src = run / "checkpoint.safetensors"
    bad = rewrite(src, tmp_path / "shape.safetensors", tensors=lambda t: {**t, "ema.final.linear.bias": torch.zeros(3)})
    refused(load_model, bad, r"'final.linear.bias' has shape \(3,\), dit_config implies \(4,\)")
    bad = rewrite(src, tmp_path / "extra.safetensors", tensors=lambda t: {**t, "net.pos_embed": torch.zeros(16, 32)})
    refused(load_checkpoint, bad, r"do not match dit_config: missing \[\], unexpected \['pos_embed'\]")
    # a metadata edit under the old digest is refused by the digest; without a digest, by the weights
    tensors, meta = read(src)
    meta["dit_config"] = json.dumps({**json.loads(meta["dit_config"]), "depth": 1})
    save_file(tensors, str(tmp_path / "tampered.safetensors"), metadata=meta)
    refused(load_checkpoint, tmp_path / "tampered.safetensors", "digest does not match")
    bad = rewrite(src, tmp_path / "no_digest.safetensors", meta=set_json("dit_config", depth=1), digest=False)
    refused(load_checkpoint, bad, r"net weights do not match dit_config: missing \[\], unexpected \['blocks.1.")


def test_files_without_net_kind_load_as_u_nets():
    # the shipped models predate the DiT: no "net_kind" entry
    path = ASSETS / DEFAULT_MODELS["vp"]
    assert "net_kind" not in read(path)[1]
    assert isinstance(load_model(path).net, UNet)


# --- natural-image patches as a named data set -----------------------------------------------------

def test_load_patches_by_name():
    train_16, test_32 = load("patches"), load("patches", split="test", image_size=32)
    assert train_16.images.shape == (6552, 3, 16, 16) and train_16.levels == 256 and train_16.num_classes == 2
    assert test_32.images.shape == (350, 3, 32, 32) and torch.equal(test_32.labels.bincount(), torch.tensor([175, 175]))
    assert torch.equal(load("patches", image_size=16).images, train_16.images)
    for size in (8, 0, True, "16"):
        with pytest.raises(ValueError, match=r"data 'patches': image_size must be one of \[16, 32\]"):
            load("patches", image_size=size)


# --- DDP -------------------------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from scoresde.train import TrainConfig, setup_distributed, train
    rank, world = setup_distributed()
    cfg = TrainConfig(net="dit_digits", net_options={"hidden_size": 32, "depth": 2, "num_heads": 2, "embedding_dim": 16},
                      conditional=True, augment=("xflip",), augment_p=0.5, batch_size=16, steps=4, lr=1e-3,
                      warmup_steps=2, ema_decay=0.9, log_every=1, ckpt_every=2, progress=False, device="cpu",
                      out_dir=sys.argv[1])
    res = train(cfg)
    save_file({k: v.contiguous() for k, v in res.net.state_dict().items()}, f"{sys.argv[2]}/rank{rank}.safetensors")
""")


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_identical(tmp_path):
    # torchrun, 2 processes, gloo (about 20 s): a class-conditional DiT with augmentation conditioning
    (tmp_path / "worker.py").write_text(WORKER)
    out, weights = tmp_path / "out", tmp_path / "weights"
    weights.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "worker.py"), str(out), str(weights)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    w0, w1 = load_file(weights / "rank0.safetensors"), load_file(weights / "rank1.safetensors")
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    ckpt = load_checkpoint(out / "checkpoint.safetensors")
    assert ckpt.step == 4 and ckpt.net_kind == "dit" and all(torch.equal(ckpt.net[k], w0[k]) for k in w0)


def test_cli_bpd_on_patches_uses_the_models_patch_size(tmp_path, capsys):
    """`scoresde bpd --data patches` with a 16x16 RGB patch model: the patch size comes from the model."""
    from scoresde.cli import main

    out = tmp_path / "run"
    train(TrainConfig(**{**TINY, "net": "dit_patches"}, data="patches", steps=1, out_dir=str(out)))
    argv = ["bpd", "--model", str(out / "checkpoint.safetensors"), "--data", "patches", "--n", "2",
            "--method", "dpm_solver", "--steps", "2", "--quiet"]
    assert main(argv) == 0
    assert "(standard error over 2 images)" in capsys.readouterr().out
    assert main(["bpd", "--data", "patches", "--data-root", str(tmp_path)]) == 2
    assert "--data-root is for --data cifar10 or folder (data 'patches'" in capsys.readouterr().err
