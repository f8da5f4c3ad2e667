"""Speed options on CPU: scoresde.speed.optimize, TrainConfig.compile / optimizer_impl, benchmarks/gpu.py.

Fast tests trace with the "eager" and "aot_eager" backends (dynamo capture, no code generation);
tests compiling with inductor (C++ code generation, minutes on a small CPU) are marked slow.
"""

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from scoresde import VPSDE, ScoreModel, log_likelihood, sample, speed
from scoresde import sde as sde_module
from scoresde.nn import UNet, preset
from scoresde.train import TrainConfig, load_checkpoint, make_optimizer, optimizer_impl, train

from .helpers import logged_losses

TINY = {"ch": 8, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (4,), "dropout": 0.0}
ROOT = Path(__file__).resolve().parents[2]


def tiny_model(name: str = "digits", **overrides) -> ScoreModel:
    torch.manual_seed(0)
    net = UNet(preset(name, **{**TINY, **overrides})).eval()
    model = ScoreModel(net, VPSDE(), "eps", c_noise="log_noise")
    model.image_shape = (1, 8, 8)
    return model


def inputs(B: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(B, 1, 8, 8, generator=gen), torch.rand(B, generator=gen) * 0.9 + 0.05


# --- inference: speed.optimize -------------------------------------------------------------------

def test_fastnet_channels_last_matches_eager():
    model = tiny_model()
    x, t = inputs()
    c = model.noise_input(t)
    with torch.no_grad():
        ref = model.net(x, c)
        fast = speed.optimize(model, compile=False, channels_last=True)
        out = fast.net(x, c)
    assert out.is_contiguous() and out.dtype == x.dtype
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    assert all(not p.requires_grad for p in model.net.parameters())  # frozen in place
    torch.testing.assert_close(model.eps(x, t), fast.eps(x, t), atol=1e-6, rtol=1e-5)  # the original still works
    assert fast.image_shape == (1, 8, 8) and fast.sde is model.sde and fast.c_noise == model.c_noise


def test_fastnet_bf16_autocast_returns_input_dtype():
    model = tiny_model()
    x, t = inputs()
    with torch.no_grad():
        ref = model.eps(x, t)
        out = speed.optimize(model, compile=False, precision="bf16").eps(x, t)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max() + 1e-3  # bf16 keeps about 3 digits


def test_optimize_traced_sampling_matches_eager():
    model = tiny_model()
    x, t = inputs()
    fast = speed.optimize(model, backend="eager", channels_last=True)
    with torch.no_grad():
        torch.testing.assert_close(fast.net(x, model.noise_input(t)), model.net(x, model.noise_input(t)),
                                   atol=1e-6, rtol=1e-5)
    a = sample(model, solver="dpm_solver++", steps=3, n=4, seed=0)
    b = sample(fast, solver="dpm_solver++", steps=3, n=4, seed=0)
    assert a.nfe == b.nfe
    torch.testing.assert_close(b.x, a.x, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # about 20 s each: the default run stays under 10 minutes
def test_optimize_traced_likelihood_matches_eager():
    model = tiny_model()
    x, _ = inputs(2)
    x = x.clamp(-1, 1)
    fast = speed.optimize(model, backend="aot_eager")  # AOTAutograd: the compiled backward of the divergence
    kw = {"method": "dpm_solver", "steps": 2, "n_probes": 1}
    a = log_likelihood(model, x, generator=torch.Generator().manual_seed(0), **kw)
    b = log_likelihood(fast, x, generator=torch.Generator().manual_seed(0), **kw)
    assert a.nfe == b.nfe == 3
    torch.testing.assert_close(b.logp, a.logp, atol=1e-3, rtol=1e-5)


def test_optimize_validates_its_options():
    model = tiny_model()
    with pytest.raises(ValueError, match="needs a ScoreModel"):
        speed.optimize(model.net)
    with pytest.raises(ValueError, match="choose one of"):
        speed.optimize(model, precision="fp16")
    with pytest.raises(ValueError, match="choose one of"):
        speed.optimize(model, mode="fastest")
    with pytest.raises(ValueError, match="choose one of"):
        speed.optimize(model, backend="tvm")
    with pytest.raises(ValueError, match="CUDA graphs.*choose one of"):
        speed.optimize(model, mode="reduce-overhead")
    with pytest.raises(ValueError, match="compile=True only"):
        speed.optimize(model, compile=False, backend="eager")
    with pytest.raises(ValueError, match="inductor mode"):
        speed.optimize(model, backend="eager", mode="max-autotune")
    with pytest.raises(ValueError, match="True or False"):
        speed.optimize(model, channels_last="yes")


@pytest.mark.slow
def test_optimize_inductor_matches_eager_on_digits_preset():
    """torch.compile with inductor (C++ code generation on CPU): the digits preset, forward and x-gradient."""
    torch.manual_seed(0)
    model = ScoreModel(UNet(preset("digits")).eval(), VPSDE(), "eps", c_noise="log_noise")
    x, t = inputs(4)
    c = model.noise_input(t)
    with torch.no_grad():
        ref = model.net(x, c)
    fast = speed.optimize(model)
    with torch.no_grad():
        torch.testing.assert_close(fast.net(x, c), ref, atol=1e-5, rtol=1e-5)
    x_eager, x_fast = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    v = torch.randn_like(x)
    (g_ref,) = torch.autograd.grad(model.net(x_eager, c), x_eager, grad_outputs=v)
    (g_fast,) = torch.autograd.grad(fast.net(x_fast, c), x_fast, grad_outputs=v)
    torch.testing.assert_close(g_fast, g_ref, atol=1e-5, rtol=1e-4)


# --- host synchronizations, seen on a CPU ----------------------------------------------------------

class SyncingOps(TorchDispatchMode):
    """Counts the aten ops that read a device value back to the host on CUDA (a synchronization there):
    a tensor's Python value (item, float, bool, int), nonzero, and linalg's error checks."""

    SYNCING = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.nonzero", "aten._linalg_check_errors")

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.SYNCING):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


FIXED_STEP = ["euler_maruyama", "reverse_diffusion", "ancestral", "ddim", "pc", "dpm_solver", "dpm_solver++",
              "sde_dpm_solver++", "unipc", "heun"]


@pytest.mark.parametrize("solver", FIXED_STEP)
def test_fixed_step_samplers_read_nothing_back_per_step(solver, monkeypatch):
    """docs/gpu.md: no host synchronization per step. Ops that would synchronize on CUDA are counted on
    the CPU; a call may make a few (checking the grid), but 10 steps must make as many as 5."""
    # the SDEs read the values of t in their checks on CPU tensors only, not on accelerators: do as on CUDA
    monkeypatch.setattr(sde_module, "values_checked", lambda t: False)
    model = tiny_model()
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    counts = {}
    for steps in (5, 10):
        with SyncingOps() as ops:
            sample(model, solver=solver, steps=steps, x_T=x_T, seed=0)
        counts[steps] = ops.seen
    assert len(counts[10]) == len(counts[5]), counts


def test_fixed_budget_likelihood_reads_nothing_back_per_step(monkeypatch):
    monkeypatch.setattr(sde_module, "values_checked", lambda t: False)
    model = tiny_model()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    counts = {}
    for steps in (5, 10):
        with SyncingOps() as ops:
            log_likelihood(model, x, method="dpm_solver", steps=steps, generator=torch.Generator().manual_seed(0))
        counts[steps] = ops.seen
    assert len(counts[10]) == len(counts[5]), counts


# --- training: TrainConfig.compile, optimizer_impl -----------------------------------------------

def base_config(tmp_path: Path, name: str, **kw) -> TrainConfig:
    return TrainConfig(data="digits", net="digits", net_options=TINY, batch_size=8, steps=3, lr=1e-3, warmup_steps=2,
                       ema_decay=0.9, log_every=1, ckpt_every=2, progress=False, device="cpu",
                       out_dir=str(tmp_path / name), **kw)


def losses(cfg: TrainConfig) -> list[float]:
    return logged_losses(cfg.out_dir)


def test_train_speed_options_are_validated():
    for name, bad in (("compile", "all"), ("compile_backend", "tvm"), ("optimizer_impl", "apex")):
        with pytest.raises(ValueError, match=f"unknown {name} .*choose one of"):
            TrainConfig(**{name: bad})
    with pytest.raises(ValueError, match="compile_backend 'eager' applies when compiling"):
        TrainConfig(compile_backend="eager")
    cfg = TrainConfig(compile="step", compile_backend="aot_eager", optimizer_impl="for_loop")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_optimizer_impl_auto_is_fused_on_cuda_foreach_elsewhere():
    cfg = TrainConfig()
    assert optimizer_impl(cfg, torch.device("cuda", 0)) == "fused"
    assert optimizer_impl(cfg, torch.device("cpu")) == "foreach"
    assert optimizer_impl(replace(cfg, optimizer_impl="for_loop"), torch.device("cuda", 0)) == "for_loop"
    assert optimizer_impl(replace(cfg, compile="step"), torch.device("cuda", 0)) == "foreach"
    net = torch.nn.Linear(3, 2)
    cpu = torch.device("cpu")
    assert make_optimizer(cfg, net, cpu).defaults["foreach"] is True
    assert make_optimizer(replace(cfg, optimizer_impl="for_loop"), net, cpu).defaults["foreach"] is False
    assert make_optimizer(replace(cfg, optimizer_impl="fused"), net, cpu).defaults["fused"] is True
    assert isinstance(make_optimizer(cfg, net, cpu).param_groups[0]["lr"], float)
    stepped = make_optimizer(replace(cfg, compile="step"), net, cpu)  # the compiled update reads a tensor lr
    assert isinstance(stepped.param_groups[0]["lr"], torch.Tensor) and stepped.defaults["capturable"] is True
    # resuming into a compiled update: the state of an eager optimizer loads as train() loads it
    eager = make_optimizer(cfg, net, cpu)
    net(torch.randn(4, 3)).square().sum().backward()
    eager.step()
    state = stepped.state_dict()
    state["state"] = eager.state_dict()["state"]
    stepped.load_state_dict(state)
    assert isinstance(stepped.param_groups[0]["lr"], torch.Tensor)
    assert stepped.state_dict()["state"][0]["step"].item() == 1.0


@pytest.mark.slow  # about 20 s each: the default run stays under 10 minutes
def test_compiled_step_matches_eager_and_resumes_uncompiled(tmp_path):
    """compile="step" (network and update traced) gives the eager losses; its checkpoint resumes uncompiled."""
    ref = base_config(tmp_path, "ref")
    train(ref)
    run = base_config(tmp_path, "run", compile="step", compile_backend="eager")
    train(replace(run, steps=2))
    ckpt = load_checkpoint(Path(run.out_dir) / "checkpoint.safetensors")
    assert ckpt.step == 2 and not any("_orig_mod" in k for k in (*ckpt.net, *ckpt.ema))
    res = train(replace(run, compile="none", compile_backend="inductor"))  # resumes at step 2, eagerly
    assert res.step == 3
    torch.testing.assert_close(torch.tensor(losses(run)), torch.tensor(losses(ref)), atol=1e-6, rtol=1e-5)
    a, b = (load_checkpoint(Path(c.out_dir) / "checkpoint.safetensors") for c in (run, ref))
    # float32 round-off of a reordered update: with the 64-bit per-step seeds (issue 17) one of 2,304
    # EMA weights of this net differs by 1.1e-6 (2e-3 relative of a 5.6e-4 weight); atol 2e-6
    for k in b.ema:
        torch.testing.assert_close(a.ema[k], b.ema[k], atol=2e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["net", "step"])
def test_inductor_training_matches_eager(tmp_path, mode):
    ref = base_config(tmp_path, "ref")
    train(ref)
    run = base_config(tmp_path, mode, compile=mode)
    train(run)
    torch.testing.assert_close(torch.tensor(losses(run)), torch.tensor(losses(ref)), atol=1e-5, rtol=1e-4)


# --- benchmarks/gpu.py ---------------------------------------------------------------------------

def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_gpu", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_smoke_run(capsys):
    bench = load_benchmark()
    bench.main(["--device", "cpu", "--preset", "digits", "--batch", "2", "--repeats", "1", "--warmup", "0",
                "--steps", "2", "--solvers", "euler_maruyama,dpm_solver++", "--compile", "none",
                "--loss-curve", "3", "--smooth", "2"])
    out = capsys.readouterr().out
    assert "| measurement | fp32 ms | optimized ms |" in out and "device: CPU" in out
    for row in ("| forward |", "| train step", "| euler_maruyama, per evaluation", "| dpm_solver++, per evaluation",
                "| likelihood, per ODE evaluation"):
        assert row in out
    assert "run-to-run noise" in out
    assert "       fp32: forward: " in out and "  optimized: train step: " in out  # streamed as measured
    with pytest.raises(SystemExit):
        bench.main(["--parts", "everything"])
    with pytest.raises(SystemExit):
        bench.main(["--time-limit", "0"])


def test_gpu_benchmark_time_limit_skips_what_is_left(capsys):
    # a limit already spent before the first measurement: everything is skipped, the table still prints
    load_benchmark().main(["--device", "cpu", "--preset", "digits", "--batch", "2", "--repeats", "1", "--warmup", "0",
                           "--compile", "none", "--parts", "forward,train", "--loss-curve", "3",
                           "--time-limit", "1e-9"])
    out = capsys.readouterr().out
    for what in ("forward [fp32]", "forward [optimized]", "train step [fp32]", "train step [optimized]", "loss curves"):
        assert f"skipped: {what} (--time-limit" in out
    assert "| measurement | fp32 ms |" in out and "| forward |" not in out and "| train step" not in out


@pytest.mark.slow
def test_gpu_benchmark_smoke_run_inductor(capsys):
    load_benchmark().main(["--device", "cpu", "--preset", "digits", "--batch", "2", "--repeats", "1", "--warmup", "1",
                           "--steps", "2", "--solvers", "dpm_solver++", "--compile", "step"])
    assert "| train step" in capsys.readouterr().out
