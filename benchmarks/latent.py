"""Train the patch VAE (scoresde.latent) on 32 x 32 natural-image patches and report its test PSNR.

    nice -n 10 python benchmarks/latent.py                          # 600 steps, one CPU thread
    python benchmarks/latent.py --steps 20 --save-every 10 --out runs/latent/smoke.safetensors   # a smoke run
    python benchmarks/latent.py --eval-only          # the table for the file at --out as it stands

Data: `scoresde.data.patches(split, 32, flips=True)` scaled to [-1, 1] (1,550 train patches, 3,100 with
flips; 350 test, no flips). The VAE (`--ch`, `--ch-mult`, `--latent-channels`) is trained by
`scoresde.latent.vae_train.train_vae` (MSE + `--kl-weight` KL, Adam at `--lr`, halved every `--lr-halve-every`
steps if given, batch `--batch`), saved
to `--out` every `--save-every` steps; running the command again with the same flags resumes there.
Then the reconstruction PSNR (10 log10(4 / MSE) per patch, posterior-mean encoding) on the test and
train patches, mean +- standard error over patches, beside a baseline with the same number of numbers
per patch or more: f x f average pooling then bilinear upsampling. CPU minutes are this process's
(time.process_time, one thread). Prints one markdown table and the machine line.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from scoresde.data import patches, to_model_input  # noqa: E402
from scoresde.latent.vae import VAEConfig, psnr  # noqa: E402
from scoresde.latent.vae_files import read_vae_file  # noqa: E402
from scoresde.latent.vae_train import VAETrainConfig, train_vae  # noqa: E402


def mean_se(v: torch.Tensor) -> str:
    return f"{float(v.mean()):.2f} +- {float(v.std() / v.numel() ** 0.5):.2f}"


@torch.no_grad()
def reconstruction_psnr(vae, images: torch.Tensor) -> torch.Tensor:
    out = torch.cat([vae.decode(vae.encode(images[i:i + 128])) for i in range(0, len(images), 128)])
    return psnr(out.clamp(-1, 1), images)


def pool_baseline(images: torch.Tensor, f: int) -> torch.Tensor:
    low = F.avg_pool2d(images, f)
    return psnr(F.interpolate(low, scale_factor=f, mode="bilinear", align_corners=False).clamp(-1, 1), images)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--kl-weight", type=float, default=1e-3)
    p.add_argument("--lr-halve-every", type=int, default=0, help="halve the learning rate every K steps (0: constant)")
    p.add_argument("--ch", type=int, default=16)
    p.add_argument("--ch-mult", type=int, nargs="+", default=[1, 2, 2])
    p.add_argument("--latent-channels", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--out", default="runs/latent/vae_patches32.safetensors")
    p.add_argument("--eval-only", action="store_true", help="evaluate the file at --out as it is (no training)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    train = to_model_input(patches("train", 32, flips=True).images, 256)
    test = to_model_input(patches("test", 32).images, 256)
    vae_config = VAEConfig(image_size=32, in_channels=3, latent_channels=args.latent_channels, ch=args.ch,
                           ch_mult=tuple(args.ch_mult), num_res_blocks=1)
    config = VAETrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, kl_weight=args.kl_weight,
                            seed=args.seed, save_every=args.save_every, lr_halve_every=args.lr_halve_every)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    start_step = read_vae_file(args.out).step if os.path.exists(args.out) and not args.eval_only else 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if args.eval_only:
        saved = read_vae_file(args.out)
        vae, args.steps, vae_config = saved.vae, saved.step, saved.vae.config
    else:
        vae = train_vae(train, vae_config, config, args.out,
                        log=lambda r: print(f"step {r['step']}: loss {r['loss']:.5f} mse {r['mse']:.5f} kl {r['kl']:.3f} "
                                            f"({(time.process_time() - cpu0) / 60:.1f} CPU min)", flush=True))
    cpu_min, wall_min = (time.process_time() - cpu0) / 60, (time.perf_counter() - wall0) / 60
    f, latent = vae_config.factor, vae.latent_shape
    params = sum(p.numel() for p in vae.parameters())
    numbers = latent[0] * latent[1] * latent[2]
    scale = "not computed (an unfinished save)" if vae.scale_factor is None else f"{vae.scale_factor:.4f}"
    print(f"\nVAE on 32x32 patches: f = {f}, latent {latent} ({numbers} numbers per patch of 3072), {params:,} parameters, "
          f"scale factor {scale}; steps {start_step}..{args.steps} in this call\n")
    print("| reconstruction | numbers per patch | test PSNR (dB) | train PSNR (dB) | CPU minutes (this call) |")
    print("|---|---|---|---|---|")
    halve = f", lr {args.lr:g} halved every {args.lr_halve_every}" if args.lr_halve_every else f", lr {args.lr:g}"
    print(f"| VAE ch {vae_config.ch}, {args.steps} steps, batch {args.batch}, kl {args.kl_weight:g}{halve} | {numbers} | "
          f"{mean_se(reconstruction_psnr(vae, test))} | {mean_se(reconstruction_psnr(vae, train[::2]))} | "
          f"{cpu_min:.1f} (wall {wall_min:.1f}) |")
    for pool in (f, f * 2):
        print(f"| {pool}x{pool} average pool + bilinear upsampling | {3 * (32 // pool) ** 2} | "
              f"{mean_se(pool_baseline(test, pool))} | {mean_se(pool_baseline(train[::2], pool))} | 0 |")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread")


if __name__ == "__main__":
    main()
