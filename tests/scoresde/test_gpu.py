"""The speed options on a CUDA device, checked against the float32 eager paths on the same device.

    python -m pytest -m gpu tests/scoresde/test_gpu.py      # on a machine with a GPU (benchmarks/gpu_device.sh runs it)

Deselected by default (the `gpu` marker, pyproject's addopts) and skipped without CUDA. What they
check: bf16 autocast + channels_last + torch.compile (inductor) + CUDA graphs give the eager samples
within bf16 rounding and keep earlier outputs intact; the compiled float32 likelihood gives the
eager one; the fixed-step samplers and the training step make no host synchronization per step;
the fused Adam gives the foreach one's weights; a bf16, channels_last, compiled training run
starts from the eager run's loss and writes a checkpoint that loads and samples.

SCORESDE_GPU_TEST_DEVICE=cpu runs the same checks on a CPU (CUDA graphs, bf16 training and the
synchronization counts are then left out): a dry run of the checks themselves, minutes on a small CPU.
"""

import functools
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from scoresde import VPSDE, ScoreModel, load_model, log_likelihood, sample, speed
from scoresde.nn import UNet, preset
from scoresde.train import TrainConfig, load_checkpoint, train

from .test_speed import load_benchmark, losses

DEVICE = torch.device(os.environ.get("SCORESDE_GPU_TEST_DEVICE", "cuda"))
CUDA = DEVICE.type == "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA and not torch.cuda.is_available(), reason="needs a CUDA device"),
]
TINY = {"ch": 16, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (4,), "dropout": 0.0}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def tiny_model() -> ScoreModel:
    """A small digits U-Net (same weights every call) in a VP eps ScoreModel on DEVICE."""
    torch.manual_seed(0)
    net = UNet(preset("digits", **TINY)).eval()
    with torch.no_grad():  # the output layer starts at zero: give every weight a random part, never test on zeros
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net.to(DEVICE)
    model = ScoreModel(net, VPSDE(), "eps", c_noise="999t")
    model.image_shape = (1, 8, 8)
    return model


def noise(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator(DEVICE).manual_seed(seed), device=DEVICE)


def test_fast_sampling_matches_eager_and_keeps_earlier_outputs():
    model = tiny_model()
    x_T = noise()
    ref = sample(model, solver="dpm_solver++", steps=10, x_T=x_T, seed=0).x
    mode = "reduce-overhead" if CUDA else "default"  # CUDA graphs where there are any
    fast = speed.optimize(model, mode=mode, precision="bf16", channels_last=True)
    for _ in range(2):  # the second run replays what the first compiled (and captured)
        out = sample(fast, solver="dpm_solver++", steps=10, x_T=x_T, seed=0).x
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert ref.std() > 0.1 and rel_err(out, ref) < 3e-2  # bf16 keeps about three digits per evaluation
    # a CUDA graph's replay reuses its output memory: FastNet returns copies, so outputs stay as they were
    c = model.noise_input(torch.full((16,), 0.5, device=DEVICE))
    with torch.no_grad():
        first = fast.net(x_T, c)
        kept = first.clone()
        second = fast.net(noise(seed=2), c)
    assert torch.equal(first, kept) and not torch.equal(first, second)

    exact = speed.optimize(tiny_model())  # float32, compiled, default mode
    assert rel_err(sample(exact, solver="dpm_solver++", steps=10, x_T=x_T, seed=0).x, ref) < 1e-3


def test_compiled_float32_likelihood_matches_eager():
    model = tiny_model()
    x = noise(seed=3).clamp(-1, 1)

    def bpd(m):
        res = log_likelihood(m, x, method="dpm_solver", steps=20, n_probes=1,
                             generator=torch.Generator(DEVICE).manual_seed(0))
        return res.bpd

    ref = bpd(model)
    out = bpd(speed.optimize(tiny_model()))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not CUDA, reason="counts CUDA host synchronizations")
@pytest.mark.parametrize("solver", ["euler_maruyama", "dpm_solver++", "unipc", "heun"])
def test_fixed_step_samplers_make_no_host_sync_per_step(solver):
    model = tiny_model()
    x_T = noise()
    counts = {}
    for steps in (5, 10):
        run = functools.partial(sample, model, solver=solver, steps=steps, x_T=x_T, seed=0)
        run()  # warm-up: first-call work (cuDNN plans, grids) is not per step
        counts[steps] = load_benchmark().count_syncs(run, DEVICE)
    assert counts[10] == counts[5], counts  # a per-step sync would add 5


def train_config(tmp_path: Path, name: str, **kw) -> TrainConfig:
    return TrainConfig(data="digits", net="digits", net_options=TINY, batch_size=32, steps=6, lr=1e-3,
                       warmup_steps=2, ema_decay=0.9, log_every=1, ckpt_every=6, progress=False,
                       device=str(DEVICE), out_dir=str(tmp_path / name), **kw)


def test_fused_adam_matches_foreach(tmp_path):
    runs = [train_config(tmp_path, impl, optimizer_impl=impl) for impl in ("foreach", "fused")]
    for cfg in runs:
        train(cfg)
    a, b = (load_checkpoint(Path(cfg.out_dir) / "checkpoint.safetensors") for cfg in runs)
    for k in a.net:
        torch.testing.assert_close(b.net[k], a.net[k], atol=1e-5, rtol=1e-4)


def test_fast_training_starts_like_eager_and_its_checkpoint_samples(tmp_path):
    ref = train_config(tmp_path, "ref")
    train(ref)
    fast = replace(ref, out_dir=str(tmp_path / "fast"), precision="bf16" if CUDA else "fp32", channels_last=True,
                   compile="step")
    train(fast)
    a, b = losses(fast), losses(ref)
    assert all(math.isfinite(v) and v < 10 for v in a), a
    assert abs(a[0] - b[0]) < 0.05 * b[0], (a[0], b[0])  # same weights and draws at step 1: bf16 rounding only
    model = load_model(Path(fast.out_dir) / "checkpoint.safetensors", device=DEVICE)
    x = sample(model, solver="dpm_solver++", steps=5, n=4, seed=0).x
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()


@pytest.mark.skipif(not CUDA, reason="counts CUDA host synchronizations")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_step_makes_no_host_sync(precision):
    bench = load_benchmark()
    cfg = TrainConfig(net="digits", net_options=TINY, batch_size=32, device="cuda", precision=precision,
                      channels_last=True, progress=False)
    step = bench.TrainStep(cfg, noise(64).clamp(-1, 1), DEVICE)
    for _ in range(3):
        step()
    assert bench.count_syncs(step, DEVICE) == 0
