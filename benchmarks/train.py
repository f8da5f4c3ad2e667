"""Images/s of one training step of the ddpmpp_cifar10 U-Net: fp32 vs bf16 autocast + channels_last.

A step is what `scoresde.train` does per batch: the continuous DSM loss (VP, eps prediction,
c_noise = 999 t) on random 32x32 images, backward, gradient clipping, Adam and the EMA update.
Each mode runs `--warmup` untimed steps, then `--steps` timed ones (synchronized on CUDA).
Prints one table; the device line names the card (or the CPU and its thread count).

    python benchmarks/train.py                        # batch 128 (a GPU run)
    python benchmarks/train.py --batch 8 --steps 3    # a CPU-sized run
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time

# benchmarks/solvers.py would shadow the `solvers` package: keep this folder off the import path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch  # noqa: E402

from scoresde import VPSDE, ScoreModel  # noqa: E402
from scoresde.losses import dsm_loss  # noqa: E402
from scoresde.nn import UNet, count_parameters, ddpmpp_cifar10  # noqa: E402
from scoresde.train import ema_update  # noqa: E402


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def time_mode(*, bf16: bool, channels_last: bool, batch: int, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per training step in one mode."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = UNet(ddpmpp_cifar10()).to(device, memory_format=fmt)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    model = ScoreModel(net, VPSDE(), "eps", c_noise="999t")
    gen = torch.Generator(device).manual_seed(0)
    x0 = (torch.rand(batch, 3, 32, 32, generator=gen, device=device) * 2 - 1).contiguous(memory_format=fmt)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = dsm_loss(model, x0, generator=gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema_update(ema, net, 0.9999)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128, help="images per step (default 128)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per mode")
    p.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda[:i]'")
    p.add_argument("--no-tf32", action="store_true", help="keep fp32 matmuls exact on CUDA")
    args = p.parse_args(argv)
    for name in ("batch", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not args.no_tf32
    with torch.device("meta"):
        n_params = count_parameters(UNet(ddpmpp_cifar10()))
    print(f"ddpmpp_cifar10 ({n_params / 1e6:.2f} M parameters), batch {args.batch}, {args.steps} timed steps")
    print(f"device: {device_name(device)}; torch {torch.__version__}"
          + (f"; TF32 {'off' if args.no_tf32 else 'on'} for fp32" if device.type == "cuda" else ""))
    rows = []
    for label, bf16, cl in (("fp32", False, False), ("bf16 autocast + channels_last", True, True)):
        s = time_mode(bf16=bf16, channels_last=cl, batch=args.batch, steps=args.steps, warmup=args.warmup, device=device)
        rows.append((label, s, args.batch / s))
    print(f"\n{'mode':<32}{'s/step':>10}{'images/s':>12}{'speed-up':>10}")
    for label, s, ips in rows:
        print(f"{label:<32}{s:>10.3f}{ips:>12.1f}{ips / rows[0][2]:>9.2f}x")


if __name__ == "__main__":
    main()
