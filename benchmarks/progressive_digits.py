"""Progressive distillation of the shipped VP digits model: classifier Fréchet distance after each halving.

    python benchmarks/progressive_digits.py                        # 32 -> 16 -> 8 -> 4 -> 2 -> 1 DDIM steps
    python benchmarks/progressive_digits.py --iterations 50 --n 200  # a quick look

The teacher is the shipped VP model (eps prediction) sampled with DDIM on the `--grid` grid of `--steps` steps;
round 0's student is a copy of its network read as v-prediction (Salimans & Ho 2022, arXiv:2202.00512, Sec. 4:
eps-prediction breaks down at one step; the weights are the same network, so at low noise, where v ~ eps, the
student starts as the teacher) with dropout off, and each round trains `scoresde.fewstep.progressive.distill_round`
for --iterations Adam steps of batch --batch-size (learning rate --lr decayed linearly to 0, as the paper does)
on the 1,437 train digits, dequantized afresh in each of --copies copies (the teacher learned dequantized data).
Each row scores --n samples (per-sample seeds 0..n-1) of the round's student with DDIM on its own grid, beside
the teacher's DDIM on the same grid, as benchmarks/few_step_digits.py scores them (17 levels, distance to the
test digits in the shipped classifier's features, floor: train digits against test digits).
--grid-dir writes each student's 64-sample grid. One CPU thread unless --threads.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch  # noqa: E402
from torch import nn  # noqa: E402

import scoresde  # noqa: E402
from scoresde import ScoreModel  # noqa: E402
from scoresde import data as datasets  # noqa: E402
from scoresde.fewstep.progressive import copy_model, distill_round  # noqa: E402
from scoresde.metrics import digits_floor, digits_quality  # noqa: E402
from scoresde.pretrained import default_model  # noqa: E402
from scoresde.train import save_image_grid  # noqa: E402
from solvers import grids  # noqa: E402

LEVELS = 17


def score(model, ts, n: int) -> tuple[float, float, torch.Tensor]:
    """(FD to the test digits, class entropy, first 64 samples) of n DDIM samples of `model` on the grid `ts`."""
    s = scoresde.sample(model, solver="ddim", grid=ts, n=n, shape=(1, 8, 8), seed=0, batch_size=500)
    q = digits_quality(s.x.float(), "test", dequantized=True)
    return q.fd, q.entropy, s.x[:64]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=32, help="the teacher's DDIM steps (default 32)")
    p.add_argument("--rounds", type=int, default=5, help="halvings (default 5: down to one step)")
    p.add_argument("--grid", default="quadratic_t", help=f"one of {sorted(grids.GRIDS)} (default quadratic_t)")
    p.add_argument("--iterations", type=int, default=400, help="Adam steps per round (default 400)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--copies", type=int, default=8, help="dequantized copies of the train digits (default 8)")
    p.add_argument("--n", type=int, default=2000, help="samples per row (default 2000)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--grid-dir", default=None, help="write each student's 64-sample grid here")
    args = p.parse_args(argv)
    if args.steps % 2**args.rounds:
        p.error(f"--steps {args.steps} must be divisible by 2**rounds = {2**args.rounds}")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    images = datasets.digits("train").images
    data = torch.cat([datasets.to_model_input(images, LEVELS, dequantize=True, generator=gen)
                      for _ in range(args.copies)])
    floor = digits_floor("test")

    shipped = teacher = default_model("vp")
    student = ScoreModel(copy.deepcopy(teacher.net).requires_grad_(True), teacher.sde, "v", c_noise=teacher.c_noise)
    for m in student.net.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # a distillation target is deterministic: dropout would only add noise
    ts = grids.make(args.grid, teacher.sde, args.steps)
    rows = [("teacher", args.steps, *score(teacher, ts, args.n)[:2], 0.0, None)]
    total_cpu = 0.0
    for r in range(args.rounds):
        start = time.process_time()
        res = distill_round(teacher, student, ts, data, iterations=args.iterations, batch_size=args.batch_size,
                            lr=args.lr, seed=r)
        total_cpu += time.process_time() - start
        fd, ent, first = score(res.student, res.ts, args.n)
        fd_t = score(shipped, res.ts, args.n)[0]
        rows.append((f"student {r + 1}", res.steps, fd, ent, total_cpu, (fd_t, res.loss_first, res.loss_last)))
        print(f"  round {r + 1}: {res.steps} steps FD {fd:.2f} (teacher DDIM on that grid {fd_t:.2f}), "
              f"loss {res.loss_first:.4f} -> {res.loss_last:.4f}, {total_cpu:.0f} CPU s so far", file=sys.stderr,
              flush=True)
        if args.grid_dir:
            os.makedirs(args.grid_dir, exist_ok=True)
            save_image_grid(first, os.path.join(args.grid_dir, f"progressive_digits_nfe{res.steps}.png"), nrow=8,
                            scale=4)
        teacher, student, ts = res.student, copy_model(res.student), res.ts
    print(f"\n{args.n} samples per row (seeds 0..{args.n - 1}); floor (1,437 train vs test digits) {floor:.2f}; "
          f"grid {args.grid}; {args.iterations} iterations of batch {args.batch_size} per round, lr {args.lr}; "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| model | DDIM steps (NFE) | FD | FD / floor | class entropy | shipped VP model, DDIM on that grid "
          "| loss first -> last | training CPU s (cumulative) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, steps, fd, ent, cpu, extra in rows:
        if extra is None:
            print(f"| {name} (shipped VP) | {steps} | {fd:.2f} | {fd / floor:.2f} | {ent:.3f} | {fd:.2f} | - | - |")
        else:
            print(f"| {name} | {steps} | {fd:.2f} | {fd / floor:.2f} | {ent:.3f} | {extra[0]:.2f} "
                  f"| {extra[1]:.4f} -> {extra[2]:.4f} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
