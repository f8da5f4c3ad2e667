"""Test bits/dim of two backbones of about the same size on the digits: the DiT and the DDPM++ U-Net.

    python benchmarks/backbones.py                                   # the full run: 4,000 steps each, 360 test digits
    python benchmarks/backbones.py --steps 100 --test-n 32 --rtol 1e-3   # a smoke run: a few minutes on one CPU thread

Both networks (`--dit`, default "dit_digits": 1,864,580 parameters; `--unet`, default "digits": 1,901,601)
are trained with one recipe, the first phase of the shipped digits models' (docs/training.md): VP SDE,
eps prediction, c_noise = log(sigma / alpha), the continuous DSM loss with uniform t on dequantized
digits (train split, 1,437 images), Adam at `--lr` after `--warmup` linear warm-up steps, gradient
clipping at 1, batch `--batch`, EMA `--ema`. Both draw the same batches, times and noise (one
generator each, seeded alike), so the backbone is the only difference. Then the EMA weights' bits/dim
on the first `--test-n` test digits through the probability-flow ODE (`scoresde.bits_per_dim`:
dopri5 at `--rtol` = atol, one Rademacher probe, one dequantization draw, seed 1), mean +- standard
error over images, and the NFE. Prints one markdown table; the machine line says where it ran.
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
from scoresde.losses import dsm_loss  # noqa: E402
from scoresde.nn import DiT, UNet, count_parameters, dit_preset, preset  # noqa: E402
from scoresde.train import ema_update  # noqa: E402

LEVELS = 17


def train(net: torch.nn.Module, images: torch.Tensor, args) -> tuple[ScoreModel, float, float]:
    """Train `net` on the digit levels `images` (N, 1, 8, 8); return the EMA model, the mean loss of the
    last 10 % of the steps and the seconds taken."""
    sde = VPSDE()
    model = ScoreModel(net, sde, "eps", c_noise="log_noise")
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    tail, losses = max(1, args.steps // 10), []
    net.train()
    start = time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
        idx = torch.randint(len(images), (args.batch,), generator=gen)
        x0 = to_model_input(images[idx], LEVELS, dequantize=True, generator=gen)
        loss = dsm_loss(model, x0, generator=gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema_update(ema, net, args.ema)
        if step >= args.steps - tail:
            losses.append(loss.item())
    seconds = time.perf_counter() - start
    return ScoreModel(ema, sde, "eps", c_noise="log_noise"), sum(losses) / len(losses), seconds


def test_bpd(model: ScoreModel, x: torch.Tensor, args) -> tuple[float, float, int, float]:
    """(mean bits/dim, its standard error over images, NFE, seconds) of test digits x in [-1, 1]."""
    start = time.perf_counter()
    res = scoresde.bits_per_dim(model, x, levels=LEVELS, rtol=args.rtol, atol=args.rtol,
                                generator=torch.Generator().manual_seed(1))
    bpd = res.bpd.double()
    se = (bpd.std() / math.sqrt(len(bpd))).item() if len(bpd) > 1 else float("nan")
    return bpd.mean().item(), se, int(res.nfe), time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dit", default="dit_digits", help="DiT preset (scoresde.nn.DIT_PRESETS)")
    p.add_argument("--unet", default="digits", help="U-Net preset (scoresde.nn.PRESETS)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-n", type=int, default=360, help="first N of the 360 test digits")
    p.add_argument("--rtol", type=float, default=1e-5, help="ODE rtol = atol of the bits/dim")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    train_images = digits("train").images
    x_test = to_model_input(digits("test").images[: args.test_n], LEVELS)
    nets = {
        f"DiT ({args.dit})": DiT(dit_preset(args.dit, image_size=8, in_channels=1)),
        f"U-Net ({args.unet})": UNet(preset(args.unet, image_size=8, in_channels=1)),
    }
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch thread(s); torch {torch.__version__}")
    print(f"recipe: {args.steps} steps, batch {args.batch}, lr {args.lr} (warm-up {args.warmup}), EMA {args.ema}, "
          f"seed {args.seed}; bits/dim of {len(x_test)} test digits, dopri5 rtol = atol = {args.rtol}\n")
    print("| backbone | parameters | train s | loss (last 10 %) | test bits/dim | NFE | bits/dim s |")
    print("|---|---|---|---|---|---|---|")
    for name, net in nets.items():
        torch.manual_seed(args.seed)  # dropout draws
        model, loss, seconds = train(net, train_images, args)
        bpd, se, nfe, bpd_seconds = test_bpd(model, x_test, args)
        print(f"| {name} | {count_parameters(net):,} | {seconds:.0f} | {loss:.4f} | {bpd:.3f} +- {se:.3f} | {nfe} "
              f"| {bpd_seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
