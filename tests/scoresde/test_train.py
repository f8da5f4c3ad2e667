"""The trainer: configuration checks, EMA, atomic checkpoints, exact resume, smoke training, DDP on gloo."""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from scoresde import train as train_mod
from scoresde.param import ScoreModel
from scoresde.train import TrainConfig, load_checkpoint, load_model, save_image_grid, train

from .helpers import logged_losses as losses
from .helpers import resumed_equals_uninterrupted

TINY = dict(net_options={"ch": 8, "num_res_blocks": 1, "ch_mult": (1, 2), "attn_resolutions": (4,)},
            batch_size=16, lr=1e-3, warmup_steps=3, ema_decay=0.9, log_every=1, progress=False, device="cpu")


@pytest.mark.parametrize("kw,match", [
    (dict(sde="ddim"), "unknown sde 'ddim'; choose one of"),
    (dict(optimizer="sgd"), "choose one of"),
    (dict(lr=0.0), "lr must be"),
    (dict(ema_decay=1.0), "ema_decay"),
    (dict(batch_size=0), "batch_size"),
    (dict(data="cifar10"), "needs data_root"),
    (dict(data="folder", data_root="x"), "needs image_size"),
    (dict(time_sampling="discrete"), "needs sde 'ddpm'"),
    (dict(c_noise="timestep"), "needs sde 'ddpm'"),
    (dict(net_options={"image_size": 16}), "taken from the data"),
    (dict(net_options={"width": 16}), "unknown"),
    (dict(precision="bf16", device="cpu"), "CUDA only"),
    (dict(flip=1), "True or False"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_config_round_trip():
    cfg = TrainConfig(**TINY)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"epochs": 3})


def test_ema_update():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = [p.detach().clone() for p in a.parameters()]
    train_mod.ema_update(a, b, 0.75)
    for pa, p0, pb in zip(a.parameters(), before, b.parameters()):
        torch.testing.assert_close(pa, 0.75 * p0 + 0.25 * pb)


def test_smoke_training_on_digits_loss_falls(tmp_path):
    # 50 steps of a 16-channel digits U-Net, batch 64: the eps loss starts at 1 (zero output layer)
    # and the mean of the last 10 steps is at most a third of the mean of the first 5
    cfg = TrainConfig(net_options={"ch": 16, "num_res_blocks": 1}, batch_size=64, steps=50, lr=2e-3, warmup_steps=10,
                      ema_decay=0.99, out_dir=str(tmp_path), log_every=1, ckpt_every=1000, progress=False, device="cpu")
    res = train(cfg)
    L = losses(tmp_path)
    assert len(L) == 50 and abs(L[0] - 1.0) < 0.1
    first, last = sum(L[:5]) / 5, sum(L[-10:]) / 10
    assert last < first / 3, (first, last)
    assert isinstance(res.model, ScoreModel) and res.step == 50


def test_exact_resume_after_kill(tmp_path, monkeypatch):
    base = TrainConfig(**TINY, steps=6, ckpt_every=3, seed=1)
    _, _, out = resumed_equals_uninterrupted(monkeypatch, base, tmp_path)
    ca, cb = load_checkpoint(out / "checkpoint.safetensors"), load_checkpoint(tmp_path / "ref" / "checkpoint.safetensors")
    assert ca.step == cb.step == 6
    assert all(torch.equal(ca.opt[i][k], cb.opt[i][k]) for i in cb.opt for k in cb.opt[i])


def test_resume_refuses_a_changed_configuration(tmp_path):
    cfg = TrainConfig(**TINY, steps=1, out_dir=str(tmp_path))
    train(cfg)
    with pytest.raises(ValueError, match=r"configuration differs in ema_decay: 0.9 -> 0.99"):
        train(replace(cfg, ema_decay=0.99, steps=2))
    assert train(replace(cfg, steps=2, log_every=5)).step == 2  # run length and logging may change
    # a second phase: the same run continues with likelihood weighting at a lower learning rate
    res = train(replace(cfg, steps=3, lr=5e-4, time_sampling="likelihood"))
    assert res.step == 3
    assert load_checkpoint(tmp_path / "checkpoint.safetensors").config.time_sampling == "likelihood"


def test_init_from_starts_a_new_run_from_a_checkpoints_weights(tmp_path):
    first = train(TrainConfig(**TINY, steps=3, out_dir=str(tmp_path / "a")))
    src = tmp_path / "a" / "checkpoint.safetensors"
    # fine-tune with another objective; an lr of 1e-12 leaves the weights where they started
    cfg = TrainConfig(**{**TINY, "lr": 1e-12}, steps=1, time_sampling="likelihood", init_from=str(src),
                      out_dir=str(tmp_path / "b"))
    res = train(cfg)
    assert res.step == 1  # a new run: its own step count
    for k, v in first.net.state_dict().items():
        torch.testing.assert_close(res.net.state_dict()[k], v, rtol=0, atol=1e-9)
    fresh = train(replace(cfg, init_from=None, out_dir=str(tmp_path / "c")))
    assert any(not torch.allclose(fresh.net.state_dict()[k], v) for k, v in first.net.state_dict().items())
    assert load_checkpoint(tmp_path / "b" / "checkpoint.safetensors").config.init_from == str(src)
    with pytest.raises(ValueError, match=r"U-Net configuration differs from this run's in ch: 8 -> 16"):
        train(replace(cfg, net_options={**TINY["net_options"], "ch": 16}, out_dir=str(tmp_path / "d")))
    with pytest.raises(FileNotFoundError, match="init_from: no checkpoint at"):
        train(replace(cfg, init_from=str(tmp_path / "nope.safetensors"), out_dir=str(tmp_path / "e")))
    with pytest.raises(ValueError, match="init_from must be None or a checkpoint path"):
        TrainConfig(init_from="")


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = TrainConfig(**TINY, steps=2, ckpt_every=1, out_dir=str(tmp_path))
    train(replace(cfg, steps=1))
    path = tmp_path / "checkpoint.safetensors"
    good = path.read_bytes()
    import safetensors.torch

    def half_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 100)  # a truncated file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert path.read_bytes() == good and load_checkpoint(path).step == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_checkpoint_is_safetensors_with_json_config(tmp_path):
    cfg = TrainConfig(**TINY, steps=2, ckpt_every=1, out_dir=str(tmp_path), sample_every=2, sample_n=4, sample_steps=3)
    train(cfg)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "checkpoint.safetensors"), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["step"] == "2" and json.loads(meta["config"]) == cfg.to_dict()
    assert any(k.startswith("opt.0.exp_avg") for k in keys) and any(k.startswith("ema.") for k in keys)
    assert json.loads((tmp_path / "config.json").read_text())["config"] == cfg.to_dict()
    model = load_model(tmp_path / "checkpoint.safetensors")
    assert model.image_shape == (1, 8, 8)
    t = torch.full((2,), 0.5)
    assert model.eps(torch.randn(2, 1, 8, 8), t).shape == (2, 1, 8, 8)
    png = Image.open(tmp_path / "samples" / "step_0000002.png")
    assert png.size == (2 * 8 * 4 + 3 * 4, 2 * 8 * 4 + 3 * 4)  # 2 x 2 grid, 1 px borders, upscaled 4x
    (tmp_path / "checkpoint.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="checkpoint.safetensors: not a readable safetensors checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.safetensors")


@pytest.mark.parametrize("kw", [dict(sde="ve", c_noise="log_noise"), dict(sde="subvp", time_sampling="likelihood"),
                                dict(sde="ddpm", c_noise="timestep", time_sampling="discrete", prediction="v"),
                                dict(conditional=True, flip=True, dequantize=True, optimizer="adamw", weight_decay=0.01,
                                     sample_every=2, sample_n=4, sample_steps=2)])
def test_variants_run(tmp_path, kw):
    res = train(TrainConfig(**{**TINY, **kw}, steps=2, out_dir=str(tmp_path)))
    assert res.step == 2 and res.loss is not None and res.loss == res.loss
    if kw.get("conditional"):
        assert res.net.config.num_classes == 10
        assert (tmp_path / "samples" / "step_0000002.png").is_file()  # one label per grid cell


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_bf16_is_refused_on_cpu(tmp_path):
    with pytest.raises(ValueError, match="CUDA only"):
        train(TrainConfig(**{**TINY, "device": "auto"}, precision="bf16", steps=1, out_dir=str(tmp_path)))


def test_save_image_grid(tmp_path):
    x = torch.linspace(-1, 1, 5 * 3 * 2 * 2).reshape(5, 3, 2, 2)
    save_image_grid(x, tmp_path / "g.png", nrow=3)
    im = Image.open(tmp_path / "g.png")
    assert im.mode == "RGB" and im.size == (3 * 3 + 1, 2 * 3 + 1)


WORKER = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from scoresde.train import TrainConfig, setup_distributed, train
    rank, world = setup_distributed()
    cfg = TrainConfig(net_options={"ch": 8, "num_res_blocks": 1, "ch_mult": (1, 2), "attn_resolutions": (4,)},
                      batch_size=16, steps=4, lr=1e-3, warmup_steps=2, ema_decay=0.9, log_every=1, ckpt_every=2,
                      progress=False, device="cpu", out_dir=sys.argv[1])
    res = train(cfg)
    save_file({k: v.contiguous() for k, v in res.net.state_dict().items()}, f"{sys.argv[2]}/rank{rank}.safetensors",
              metadata={"world": str(world)})
""")


def test_ddp_two_cpu_processes_end_identical(tmp_path):
    # torchrun, 2 processes, gloo: the data are sharded, gradients averaged, only rank 0 writes
    (tmp_path / "worker.py").write_text(WORKER)
    out, weights = tmp_path / "out", tmp_path / "weights"
    weights.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "worker.py"), str(out), str(weights)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors import safe_open
    from safetensors.torch import load_file

    w0, w1 = load_file(weights / "rank0.safetensors"), load_file(weights / "rank1.safetensors")
    with safe_open(str(weights / "rank1.safetensors"), "pt") as f:
        assert f.metadata()["world"] == "2"
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    # one writer: one line per step, a checkpoint whose net matches the ranks' weights
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    ckpt = load_checkpoint(out / "checkpoint.safetensors")
    assert ckpt.step == 4 and all(torch.equal(ckpt.net[k], w0[k]) for k in w0)
    # the two ranks saw different data: a single-process run with the same seed ends elsewhere
    single = train(TrainConfig(**{**TINY, "warmup_steps": 2}, steps=4, ckpt_every=2, out_dir=str(tmp_path / "single")))
    assert not all(torch.equal(single.net.state_dict()[k], w0[k]) for k in w0)
