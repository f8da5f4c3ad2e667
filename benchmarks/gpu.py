"""Speed of a U-Net preset on one device: forward, training step, sampler and likelihood evaluations.

    python benchmarks/gpu.py                                         # ddpmpp_cifar10, batch 128, CUDA
    python benchmarks/gpu.py --device cpu --preset digits --batch 8 --repeats 3 --threads 1   # smoke run
    python benchmarks/gpu.py --loss-curve 200                        # also the fp32 vs optimized loss curves

Two modes, each timed the same way:

- fp32: the library's defaults: eager network in float32 (TF32 convolutions and matmuls on CUDA,
  as TrainConfig's tf32 default), contiguous layout, the optimizer TrainConfig picks ("auto").
- optimized: bf16 autocast (CUDA only; fp32 elsewhere), channels_last and torch.compile: for
  training TrainConfig(compile=--compile), for sampling and likelihood `scoresde.speed.optimize`
  (mode --compile-mode, e.g. "reduce-overhead" for CUDA graphs; --compile none: no compiling
  anywhere). The likelihood runs in float32 with the compiled network unless --likelihood-bf16.

Rows: the network's forward pass alone; one training step (DSM loss, backward, clipping, Adam,
EMA; learning rate changing every step as in warm-up), and the EMA update alone; one model evaluation of each sampler in
--solvers (a whole `scoresde.sample` run of --steps steps divided by its NFE), reported also as
a multiple of the same mode's forward pass (the solver's overhead); one ODE evaluation of the
likelihood with one Hutchinson probe (a whole `log_likelihood` run with method "dpm_solver",
--steps steps, divided by its NFE), also as a multiple of the forward pass. Each figure is the
median of --repeats timed calls after --warmup untimed ones (the compiling ones among them): CUDA
events on a GPU, perf_counter on a CPU. On CUDA the table also counts the host synchronizations
one call makes (torch.cuda.set_sync_debug_mode).

--loss-curve N trains N steps on the digits images resized to the preset's shape: fp32 with seeds
0 and 1, and optimized with seed 0; it prints the mean absolute difference between the smoothed
(moving average over --smooth steps) loss curves of optimized and fp32 (seed 0), beside that
between the two fp32 seeds (run-to-run noise). Needs scikit-learn.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import replace

# benchmarks/solvers.py would shadow the `solvers` package: keep this folder off the import path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from scoresde import VPSDE, ScoreModel, log_likelihood, sample, speed  # noqa: E402
from scoresde import data as datasets  # noqa: E402
from scoresde.nn import PRESETS, UNet, count_parameters, preset  # noqa: E402
from scoresde.train import (  # noqa: E402
    COMPILE, ParameterUpdate, TrainConfig, compute_loss, ema_update, make_optimizer, optimizer_impl,
)

MODES = ("fp32", "optimized")


# --- timing --------------------------------------------------------------------------------------

def device_name(device: torch.device) -> str:
    """The card's name, or the CPU's model name and the intra-op thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"CPU {name}, {torch.get_num_threads()} threads"


def median_seconds(fn, *, repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of fn() over `repeats` calls after `warmup` untimed ones.

    CUDA: one pair of events around each call, read after a single synchronization at the end, so
    that timing adds no host sync between calls. Elsewhere: perf_counter around each call.
    """
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return statistics.median(start.elapsed_time(end) / 1e3 for start, end in events)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count_syncs(fn, device: torch.device) -> int | None:
    """Host synchronizations one call of fn makes (CUDA only; None elsewhere)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


# --- what is timed -------------------------------------------------------------------------------

def build_net(name: str, device: torch.device, *, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(preset(name)).to(device)


def inference_model(args, mode: str, device: torch.device, *, bf16: bool) -> ScoreModel:
    """A ScoreModel (VP, eps, c_noise 999 t) over a fresh preset network in eval mode, sped up in `mode`."""
    model = ScoreModel(build_net(args.preset, device).eval().requires_grad_(False), VPSDE(), "eps", c_noise="999t")
    if mode == "fp32":
        return model
    if args.compile == "none":
        return speed.optimize(model, compile=False, precision="bf16" if bf16 else "fp32", channels_last=True)
    return speed.optimize(model, mode=args.compile_mode, backend=args.compile_backend,
                          precision="bf16" if bf16 else "fp32", channels_last=True)


def train_config(args, mode: str, device: torch.device, seed: int = 0) -> TrainConfig:
    """The TrainConfig of a mode (fp32: the defaults on this device)."""
    cfg = TrainConfig(net=args.preset, device=str(device), batch_size=args.batch, seed=seed, progress=False)
    if mode == "fp32":
        return cfg
    return replace(cfg, precision="bf16" if device.type == "cuda" else "fp32", channels_last=True,
                   compile=args.compile, compile_backend=args.compile_backend if args.compile != "none" else "inductor")


class TrainStep:
    """One training step as `scoresde.train.train` takes it, on batches drawn from `images` (N, C, H, W).

    Calling it draws a batch (with the step's generator), computes the loss, back-propagates and
    updates the weights and EMA; it returns the loss (a 0-d device tensor, not read back).
    """

    def __init__(self, cfg: TrainConfig, images: torch.Tensor, device: torch.device):
        self.cfg, self.images, self.device = cfg, images, device
        torch.manual_seed(cfg.seed)
        self.net = UNet(preset(cfg.net, **{**cfg.net_options, "image_size": images.shape[-1],
                                           "in_channels": images.shape[1]}))
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.net.to(device, memory_format=fmt).train()
        self.ema.to(device, memory_format=fmt).eval()
        self.opt = make_optimizer(cfg, self.net, device)
        # as train() does: compile the network module, keep `net` for the update and checkpoints
        module = self.net if cfg.compile == "none" else torch.compile(self.net, backend=cfg.compile_backend)
        self.update = ParameterUpdate(self.net, self.ema, self.opt, grad_clip=cfg.grad_clip,
                                      compiled=cfg.compile == "step", backend=cfg.compile_backend)
        self.model = ScoreModel(module, VPSDE(), "eps", c_noise="999t")
        self.gen = torch.Generator(device).manual_seed(cfg.seed)
        self.step = 0

    def __call__(self) -> torch.Tensor:
        cfg = self.cfg
        idx = torch.randint(len(self.images), (cfg.batch_size,), generator=self.gen, device=self.device)
        x0 = self.images[idx]
        if cfg.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        lr = cfg.lr * min(1.0, (self.step + 1) / cfg.warmup_steps)
        loss, _ = compute_loss(cfg, self.model, x0, y=None, null_label=None, levels=256, history=None,
                               generator=self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.update(lr, min(cfg.ema_decay, (1 + self.step) / (10 + self.step)))
        self.step += 1
        return loss.detach()


def likelihood_run(model: ScoreModel, x: torch.Tensor, *, steps: int):
    """One fixed-budget likelihood of x with one Rademacher probe (steps + 1 ODE evaluations)."""
    return log_likelihood(model, x, method="dpm_solver", steps=steps, n_probes=1,
                          generator=torch.Generator(x.device).manual_seed(0))


def ema_runner(args, mode: str, device: torch.device):
    """The EMA update alone, as a call: eager foreach lerp, or compiled (decay in a device tensor) with --compile step."""
    net = build_net(args.preset, device)
    ema = copy.deepcopy(net).requires_grad_(False)
    if mode == "optimized" and args.compile == "step":
        decay = torch.tensor(0.999, device=device)
        compiled = torch.compile(ema_update, backend=args.compile_backend)
        return lambda: compiled(ema, net, decay)
    return lambda: ema_update(ema, net, 0.999)


class Budget:
    """Wall time since construction against an optional limit in seconds (None: no limit)."""

    def __init__(self, limit: float | None):
        self.limit, self.t0 = limit, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def spent(self, what: str) -> bool:
        """True (and says that `what` is skipped) once the limit has passed."""
        if self.limit is None or self.elapsed() < self.limit:
            return False
        print(f"  skipped: {what} (--time-limit {self.limit:g} s passed at {self.elapsed():.0f} s)", flush=True)
        return True


def digits_like(shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """The scikit-learn digits training images in [-1, 1], resized (bilinear) to shape (C, H, W)."""
    d = datasets.load("digits")
    x = datasets.to_model_input(d.images, d.levels)
    C, H, W = shape
    x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x.expand(-1, C, -1, -1).contiguous().to(device)


def smoothed(values: list[float], k: int) -> list[float]:
    """Trailing moving average over k values (fewer at the start)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - k] if i >= k else 0.0)
        out.append(acc / min(i + 1, k))
    return out


def loss_curve(args, cfg: TrainConfig, images: torch.Tensor, device: torch.device) -> list[float]:
    step = TrainStep(cfg, images, device)
    losses = torch.stack([step() for _ in range(args.loss_curve)])
    return losses.float().cpu().tolist()  # one host sync, at the end


# --- main ----------------------------------------------------------------------------------------

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu' or 'cuda[:i]'")
    p.add_argument("--preset", default="ddpmpp_cifar10", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=128, help="images per call (default 128)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per figure; the median is shown")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (compilation happens here)")
    p.add_argument("--steps", type=int, default=10, help="sampler steps, and likelihood grid steps, per timed run")
    p.add_argument("--solvers", default="euler_maruyama,dpm_solver,dpm_solver++", help="comma-separated names")
    p.add_argument("--parts", default="forward,train,sample,likelihood", help="comma-separated subset to time")
    p.add_argument("--compile", default="step", choices=COMPILE,
                   help="TrainConfig.compile in optimized mode ('none': compile nothing, inference included)")
    p.add_argument("--compile-mode", default="default", choices=speed.COMPILE_MODES,
                   help="torch.compile mode for sampling and likelihood in optimized mode")
    p.add_argument("--compile-backend", default="inductor", choices=speed.COMPILE_BACKENDS)
    p.add_argument("--likelihood-bf16", action="store_true", help="optimized likelihood under bf16 autocast too")
    p.add_argument("--loss-curve", type=int, default=0, metavar="N", help="also compare N-step loss curves (0: no)")
    p.add_argument("--smooth", type=int, default=20, help="moving-average window of the loss curves")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="start no new measurement after this many seconds (compiling included); the table "
                        "shows what was measured (default: no limit)")
    args = p.parse_args(argv)
    for name in ("batch", "repeats", "steps", "smooth"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.time_limit is not None and args.time_limit <= 0:
        p.error(f"--time-limit must be > 0, got {args.time_limit}")
    for name in ("warmup", "loss_curve"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    parts = [s for s in args.parts.split(",") if s]
    bad = sorted(set(parts) - {"forward", "train", "sample", "likelihood"})
    if bad:
        p.error(f"unknown --parts {bad}; choose from forward, train, sample, likelihood")
    solver_names = [s for s in args.solvers.split(",") if s]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # TrainConfig's tf32 default

    cfg = preset(args.preset)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    with torch.device("meta"):
        n_params = count_parameters(UNet(cfg))
    print(f"{args.preset} ({n_params / 1e6:.2f} M parameters), batch {args.batch}, median of {args.repeats} "
          f"after {args.warmup} warm-up calls")
    cuda_versions = f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}" if cuda else ""
    print(f"device: {device_name(device)}; Python {platform.python_version()}, torch {torch.__version__}{cuda_versions}")
    compiled = "no torch.compile" if args.compile == "none" else (
        f"torch.compile (train {args.compile!r}, inference mode {args.compile_mode!r}, "
        f"backend {args.compile_backend!r})")
    print(f"optimized: {'bf16 autocast, ' if cuda else ''}channels_last, {compiled}, "
          f"optimizer {optimizer_impl(train_config(args, 'optimized', device), device)!r} "
          f"(fp32: {optimizer_impl(train_config(args, 'fp32', device), device)!r})")

    timed = {"repeats": args.repeats, "warmup": args.warmup, "device": device}
    rows: list[tuple[str, dict, dict, str]] = []  # (what, {mode: seconds}, {mode: syncs}, unit note)
    forward: dict[str, float] = {}
    gen = torch.Generator(device).manual_seed(0)
    x = torch.rand(args.batch, *shape, generator=gen, device=device) * 2 - 1
    t = torch.rand(args.batch, generator=gen, device=device) * (1 - 1e-3) + 1e-3
    clock = Budget(args.time_limit)

    def measure(what: str, mode: str, unit: str, fn, *, per: int = 1) -> None:
        """Time fn (divided by `per` calls of the network), count its syncs, add a row, print it at once."""
        secs = median_seconds(fn, **timed) / per
        syncs = count_syncs(fn, device)
        rows.append((what, {mode: secs}, {mode: syncs}, unit))
        if unit == "forward":
            forward[mode] = secs
        note = "" if syncs is None else f", {syncs} host syncs"
        print(f"  {mode:>9}: {what}: {1e3 * secs:.2f} ms{note} [{clock.elapsed():.0f} s]", flush=True)

    # in order of what the targets need: the forward pass (the denominator of every ratio), the training
    # step, the samplers, the likelihood, the loss curves; --time-limit skips what is left once spent
    print("\nmeasuring (each line as it is done):", flush=True)
    models = {}
    if {"forward", "sample", "likelihood"} & set(parts):
        for mode in MODES:
            if clock.spent(f"forward [{mode}]"):
                continue
            models[mode] = model = inference_model(args, mode, device, bf16=cuda)
            with torch.no_grad():
                measure("forward", mode, "forward", functools.partial(model.net, x, model.noise_input(t)))

    if "train" in parts:
        for mode in MODES:
            if clock.spent(f"train step [{mode}]"):
                continue
            step = TrainStep(train_config(args, mode, device), x, device)
            measure("train step", mode, "train", step)
            del step
            if not clock.spent(f"EMA update [{mode}]"):
                measure("EMA update alone (in the train step)", mode, "ema", ema_runner(args, mode, device))

    if "sample" in parts:
        for mode, model in models.items():
            for name in solver_names:
                if clock.spent(f"{name} [{mode}]"):
                    continue
                run = functools.partial(sample, model, solver=name, steps=args.steps, x_T=x, seed=0)
                nfe = run().nfe
                measure(f"{name}, per evaluation ({args.steps} steps, NFE {nfe})", mode, "eval", run, per=nfe)

    if "likelihood" in parts:
        for mode, model in models.items():
            if clock.spent(f"likelihood [{mode}]"):
                continue
            separate = mode == "optimized" and cuda and not args.likelihood_bf16  # fp32 likelihood
            lmodel = inference_model(args, mode, device, bf16=False) if separate else model
            run = functools.partial(likelihood_run, lmodel, x, steps=args.steps)
            nfe = run().nfe
            measure(f"likelihood, per ODE evaluation (1 probe, NFE {nfe})", mode, "eval", run, per=nfe)
    models.clear()
    if "forward" not in parts:
        rows[:] = [row for row in rows if row[3] != "forward"]

    merged: dict[str, tuple[dict, dict, str]] = {}
    for what, secs, syncs, unit in rows:
        s0, y0, _ = merged.setdefault(what, ({}, {}, unit))
        s0.update(secs)
        y0.update(syncs)
    print("\n| measurement | fp32 ms | optimized ms | speed-up | fp32 / forward | optimized / forward "
          "| host syncs per call (fp32 / optimized) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for what, (secs, syncs, unit) in merged.items():
        a, b = secs.get("fp32"), secs.get("optimized")
        cells = [f"{1e3 * a:.2f}" if a else "—", f"{1e3 * b:.2f}" if b else "—",
                 f"{a / b:.2f}x" if a and b else "—"]
        for mode, v in (("fp32", a), ("optimized", b)):
            cells.append(f"{v / forward[mode]:.2f}" if v and unit == "eval" and mode in forward else "—")
        sync = "—" if not cuda else " / ".join(str(syncs.get(m, "—")) for m in MODES)
        if unit == "train":
            what = f"train step ({args.batch / a:.0f} / {args.batch / b:.0f} img/s)" if a and b else what
        print(f"| {what} | " + " | ".join(cells) + f" | {sync} |")

    if args.loss_curve and not clock.spent("loss curves"):
        images = digits_like(shape, device)
        curves = {
            "fp32 seed 0": loss_curve(args, train_config(args, "fp32", device, 0), images, device),
            "fp32 seed 1": loss_curve(args, train_config(args, "fp32", device, 1), images, device),
            "optimized seed 0": loss_curve(args, train_config(args, "optimized", device, 0), images, device),
        }
        sm = {k: smoothed(v, args.smooth) for k, v in curves.items()}

        def gap(a: str, b: str) -> float:
            return statistics.fmean(abs(u - v) for u, v in zip(sm[a], sm[b]))

        noise, diff = gap("fp32 seed 0", "fp32 seed 1"), gap("optimized seed 0", "fp32 seed 0")
        print(f"\nloss curves over {args.loss_curve} steps (digits resized to {shape}, "
              f"moving average over {args.smooth}):")
        for k, v in curves.items():
            print(f"  {k}: first {v[0]:.4f}, last {args.smooth} mean {statistics.fmean(v[-args.smooth:]):.4f}")
        print(f"  mean |optimized - fp32| (seed 0) = {diff:.4f}; run-to-run noise mean |fp32 seed 0 - seed 1| = "
              f"{noise:.4f}: {'within' if diff <= noise else 'OUTSIDE'} noise")


if __name__ == "__main__":
    main()
