"""Test bits/dim and sample quality of two backbones of about the same size on the digits: the DiT and the U-Net.

    python benchmarks/backbones.py                                   # the full run: 4,000 steps each, 360 test digits
    python benchmarks/backbones.py --steps 100 --test-n 32 --rtol 1e-3 --fd-n 200   # a smoke run, minutes on one thread
    python benchmarks/backbones.py --device cuda --lr-dit 3e-4        # on a GPU, the DiT at a learning rate of its own

Both networks (`--dit`, default "dit_digits": 1,864,580 parameters; `--unet`, default "digits": 1,901,601)
are trained with one recipe, the first phase of the shipped digits models' (docs/training.md): VP SDE,
eps prediction, c_noise = log(sigma / alpha), the continuous DSM loss with uniform t on dequantized
digits (train split, 1,437 images), Adam at `--lr` after `--warmup` linear warm-up steps, gradient
clipping at 1, batch `--batch`, EMA `--ema` (ramped as the trainer ramps it: min(ema, (1 + k) / (10 + k)) at step k; `--lr-dit` / `--lr-unet` give a backbone a learning rate of its
own; the budget, steps x batch, stays equal). Both draw the same batches, times and noise (one
generator each, seeded alike), so the backbone is the only difference. Then the EMA weights' bits/dim
on the first `--test-n` test digits through the probability-flow ODE (`scoresde.bits_per_dim`:
dopri5 at `--rtol` = atol, or `--bpd-method` such as dpm_solver_6m at `--bpd-steps`; one Rademacher probe,
one dequantization draw, seed 1), mean +- standard error over images, and the NFE; and the classifier
Frechet distance of `--fd-n` samples (DPM-Solver++ at `--fd-steps`, per-sample seeds 0..n-1) to the test
digits (`scoresde.metrics.digits_quality`, beside the floor of the train digits). Each network is
initialized from `--seed`. Prints one markdown table; the machine line says where it ran; seconds are
wall-clock on `--device`, beside the training's CPU minutes of this process. `--only dit|unet` runs one
backbone (two processes can then share the cores), `--save-dir` writes the EMA weights.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import sys
import time

# benchmarks/solvers.py would shadow the `solvers` package: keep this folder off the import path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch  # noqa: E402

import scoresde  # noqa: E402
from scoresde import VPSDE, ScoreModel  # noqa: E402
from scoresde.data import digits, to_model_input  # noqa: E402
from scoresde.files import write_safetensors  # noqa: E402
from scoresde.losses import dsm_loss  # noqa: E402
from scoresde.metrics import digits_floor, digits_quality  # noqa: E402
from scoresde.nn import DiT, UNet, count_parameters, dit_preset, preset  # noqa: E402
from scoresde.train import ema_update  # noqa: E402

LEVELS = 17


def train(net: torch.nn.Module, images: torch.Tensor, lr: float, args) -> tuple[ScoreModel, float, tuple[float, float]]:
    """Train `net` on the digit levels `images` (N, 1, 8, 8) at learning rate `lr`; return the EMA model, the
    mean loss of the last 10 % of the steps and the (wall-clock, CPU) seconds taken."""
    sde = VPSDE()
    net = net.to(args.device)
    model = ScoreModel(net, sde, "eps", c_noise="log_noise")
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator(args.device).manual_seed(args.seed)
    images = images.to(args.device)
    tail, losses = max(1, args.steps // 10), []
    net.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / max(1, args.warmup))
        idx = torch.randint(len(images), (args.batch,), generator=gen, device=args.device)
        x0 = to_model_input(images[idx], LEVELS, dequantize=True, generator=gen)
        loss = dsm_loss(model, x0, generator=gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema_update(ema, net, min(args.ema, (1 + step) / (10 + step)))  # the trainer's EMA warm-up
        if step >= args.steps - tail:
            losses.append(loss.item())
        if args.log_every and (step + 1) % args.log_every == 0:
            print(f"  step {step + 1}: loss {loss.item():.4f}, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    if args.device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return ScoreModel(ema, sde, "eps", c_noise="log_noise"), sum(losses) / len(losses), seconds


def test_bpd(model: ScoreModel, x: torch.Tensor, args) -> tuple[float, float, int, float]:
    """(mean bits/dim, its standard error over images, NFE, seconds) of test digits x in [-1, 1]."""
    start = time.perf_counter()
    x = x.to(args.device)
    if args.bpd_method == "ode":
        options = {"rtol": args.rtol, "atol": args.rtol}
    else:
        options = {"method": args.bpd_method, "steps": args.bpd_steps}
    res = scoresde.bits_per_dim(model, x, levels=LEVELS, generator=torch.Generator(args.device).manual_seed(1), **options)
    bpd = res.bpd.double()
    se = (bpd.std() / math.sqrt(len(bpd))).item() if len(bpd) > 1 else float("nan")
    return bpd.mean().item(), se, int(res.nfe), time.perf_counter() - start


def sample_fd(model: ScoreModel, args) -> tuple[float, float]:
    """(classifier Frechet distance of --fd-n samples to the test digits, seconds)."""
    start = time.perf_counter()
    x = scoresde.sample(model, solver="dpm_solver++", steps=args.fd_steps, shape=(1, 8, 8), n=args.fd_n,
                        seed=0, batch_size=500, device=args.device).x
    fd = digits_quality(x.cpu(), dequantized=True).fd
    return fd, time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dit", default="dit_digits", help="DiT preset (scoresde.nn.DIT_PRESETS)")
    p.add_argument("--unet", default="digits", help="U-Net preset (scoresde.nn.PRESETS)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-dit", type=float, default=None, help="the DiT's learning rate (default --lr)")
    p.add_argument("--lr-unet", type=float, default=None, help="the U-Net's learning rate (default --lr)")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-n", type=int, default=360, help="first N of the 360 test digits")
    p.add_argument("--rtol", type=float, default=1e-5, help="ODE rtol = atol of the bits/dim")
    p.add_argument("--bpd-method", default="ode",
                   help="ode (dopri5 at --rtol) or a fixed-budget method of scoresde.bits_per_dim, e.g. dpm_solver_6m")
    p.add_argument("--bpd-steps", type=int, default=30, help="steps of a fixed-budget --bpd-method (default 30)")
    p.add_argument("--fd-n", type=int, default=2000, help="samples for the Frechet distance (0: none; default 2000)")
    p.add_argument("--fd-steps", type=int, default=20, help="DPM-Solver++ steps of those samples (default 20)")
    p.add_argument("--only", choices=["dit", "unet"], default=None,
                   help="run one backbone (two processes can then share the cores; default both)")
    p.add_argument("--log-every", type=int, default=0, help="print the loss to stderr every N steps (default never)")
    p.add_argument("--save-dir", default=None,
                   help="write each backbone's EMA weights there as dit / unet.safetensors (float32; default: not saved)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    train_images = digits("train").images
    x_test = to_model_input(digits("test").images[: args.test_n], LEVELS)
    nets = {  # --only key -> (row name, network builder, learning rate); each network is initialized from --seed
        "dit": (f"DiT ({args.dit})", lambda: DiT(dit_preset(args.dit, image_size=8, in_channels=1)), args.lr_dit or args.lr),
        "unet": (f"U-Net ({args.unet})", lambda: UNet(preset(args.unet, image_size=8, in_channels=1)),
                 args.lr_unet or args.lr),
    }
    if args.only:
        nets = {args.only: nets[args.only]}
    device = args.device if args.device == "cpu" else torch.cuda.get_device_name(torch.device(args.device))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch thread(s); device {device}; torch {torch.__version__}")
    how = f"dopri5 rtol = atol = {args.rtol}" if args.bpd_method == "ode" else f"{args.bpd_method}, {args.bpd_steps} steps"
    print(f"recipe: {args.steps} steps, batch {args.batch}, warm-up {args.warmup}, EMA {args.ema}, seed {args.seed}; "
          f"bits/dim of {len(x_test)} test digits, {how}; FD of {args.fd_n} samples (dpm_solver++, {args.fd_steps} "
          f"steps) to the test digits, floor {digits_floor():.2f}\n")
    print("| backbone | parameters | lr | train min | train CPU min | loss (last 10 %) | test bits/dim | NFE | bits/dim s "
          "| FD | FD s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key, (name, build, lr) in nets.items():
        torch.manual_seed(args.seed)  # the initialization and the dropout draws
        net = build()
        model, loss, seconds = train(net, train_images, lr, args)
        if args.save_dir:  # atomically, with a digest (scoresde.files)
            os.makedirs(args.save_dir, exist_ok=True)
            write_safetensors(os.path.join(args.save_dir, f"{key}.safetensors"),
                              {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}, {})
        bpd, se, nfe, bpd_seconds = test_bpd(model, x_test, args)
        fd, fd_seconds = sample_fd(model, args) if args.fd_n else (float("nan"), 0.0)
        print(f"| {name} | {count_parameters(net):,} | {lr:g} | {seconds[0] / 60:.1f} | {seconds[1] / 60:.1f} | {loss:.4f} | "
              f"{bpd:.3f} +- {se:.3f} | "
              f"{nfe} | {bpd_seconds:.0f} | {fd:.2f} | {fd_seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
