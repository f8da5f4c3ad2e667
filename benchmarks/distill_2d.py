"""Progressive distillation and rectified-flow reflow on a 2-D Gaussian mixture (docs/distillation.md).

    python benchmarks/distill_2d.py                        # the full run: a few CPU minutes on one thread
    python benchmarks/distill_2d.py --iterations 200 --teacher-iterations 300   # a smoke run

Data: an equal mixture of four Gaussians in 2-D (means (+-1.5, +-1.5), std 0.25); `--train-n` samples.

Progressive distillation (VP SDE, v-prediction): a small MLP teacher is trained with the project's DSM loss
(`--teacher-iterations` Adam steps), then distilled from `--steps` DDIM steps down to one, `--iterations`
Adam steps per round (batch 256). Per round: the student's N-step DDIM against the teacher's 2N-step DDIM
(RMS over 2,000 held-out starts), and the errors against the original teacher's 200-step Heun endpoint
of its probability-flow ODE: the original teacher's DDIM at N steps, the student at N steps.

Reflow (FlowSDE, flow prediction): an MLP trained with `losses.flow_matching_loss` (the 1-rectified flow),
then `--reflow-rounds` reflow rounds on `--pairs` (noise, sample) pairs from 50 Heun steps. Per round:
straightness S (Liu et al.; 100 Heun steps, trapezoid) and the one-step (Euler, NFE 1) RMS error against
the 1-rectified flow's 100-step Heun endpoint, on 2,000 held-out noises.

CPU seconds are time.process_time of each row's training (pair generation included for reflow).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

# benchmarks/solvers.py would shadow the `solvers` package: keep this folder off the import path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch  # noqa: E402
from torch import nn  # noqa: E402

import solvers  # noqa: E402
from scoresde import VPSDE, FlowSDE, GaussianMixture, ScoreModel  # noqa: E402
from scoresde.fewstep.fit import fit  # noqa: E402
from scoresde.fewstep.progressive import endpoint_gap, progressive_distillation  # noqa: E402
from scoresde.fewstep.reflow import one_step, rectify, straightness  # noqa: E402
from scoresde.losses import dsm_loss, flow_matching_loss  # noqa: E402
from solvers import grids  # noqa: E402
from solvers.ddim import DDIM  # noqa: E402


class MLP(nn.Module):
    """net(x, c): a 3-layer SiLU MLP on (x, c) for 2-D data."""

    def __init__(self, width: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(3, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 2))
        with torch.no_grad():
            for p in self.net.parameters():
                p.uniform_(-1.0, 1.0, generator=gen).mul_(p.shape[-1] ** -0.5 if p.ndim == 2 else 0.1)

    def forward(self, x, c):
        return self.net(torch.cat([x, c[:, None]], 1))


def mixture() -> GaussianMixture:
    means = torch.tensor([[1.5, 1.5], [1.5, -1.5], [-1.5, 1.5], [-1.5, -1.5]])
    return GaussianMixture(torch.ones(4), means, torch.full((4,), 0.25))


def train_teacher(model: ScoreModel, data: torch.Tensor, loss_fn, iterations: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)

    def batch_loss():
        idx = torch.randint(0, data.shape[0], (256,), generator=gen)
        return loss_fn(model, data[idx], generator=gen).mean()

    return fit(model.net.parameters(), batch_loss, iterations=iterations, lr=2e-3).cpu_seconds


def rms(a, b) -> float:
    return float((a - b).square().mean().sqrt())


def distillation_table(args, data, x_T) -> None:
    sde = VPSDE()
    teacher = ScoreModel(MLP(args.width, args.seed), sde, "v", c_noise="t")
    seconds = train_teacher(teacher, data, dsm_loss, args.teacher_iterations, args.seed)
    with torch.no_grad():
        reference = solvers.get("heun")(teacher, x_T, grids.uniform_t(sde, 200)).x
    ts = grids.uniform_t(sde, args.steps)
    student = ScoreModel(MLP(args.width, args.seed), sde, "v", c_noise="t")
    student.net.load_state_dict(teacher.net.state_dict())  # the paper: the student starts as the teacher
    rounds = progressive_distillation(teacher, student, data, steps=args.steps, rounds=args.rounds,
                                      iterations=args.iterations, batch_size=256, lr=args.lr, seed=args.seed)
    print(f"\nProgressive distillation, VP, v-prediction MLP (teacher: DSM, {args.teacher_iterations} steps, "
          f"{seconds:.0f} CPU s); RMS errors against the teacher's 200-step Heun endpoint\n")
    print("| student N | student N vs its teacher 2N | teacher DDIM N | teacher DDIM 2N | student N | loss first -> last | CPU s |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(rounds):
        with torch.no_grad():
            round_teacher = teacher if i == 0 else rounds[i - 1].student
            gap, _ = endpoint_gap(round_teacher, r.student, r.teacher_ts, x_T)
            orig_n = rms(DDIM()(teacher, x_T, ts[:: args.steps // r.steps]).x, reference)
            orig_2n = rms(DDIM()(teacher, x_T, ts[:: args.steps // (2 * r.steps)]).x, reference)
            student_n = rms(DDIM()(r.student, x_T, r.ts).x, reference)
        print(f"| {r.steps} | {gap:.4f} | {orig_n:.4f} | {orig_2n:.4f} | {student_n:.4f} | "
              f"{r.loss_first:.4f} -> {r.loss_last:.4f} | {r.cpu_seconds:.1f} |")


def reflow_table(args, data, x_T) -> None:
    sde = FlowSDE()
    flow = ScoreModel(MLP(args.width, args.seed), sde, "flow", c_noise="t")
    seconds = train_teacher(flow, data, flow_matching_loss, args.teacher_iterations, args.seed)
    s0 = straightness(flow, x_T, steps=100)
    noise = sde.prior_sample((args.pairs, 2), generator=torch.Generator().manual_seed(args.seed + 1))
    student = ScoreModel(MLP(args.width, args.seed), sde, "flow", c_noise="t")
    student.net.load_state_dict(flow.net.state_dict())  # Liu et al.: reflow starts from the previous flow
    rounds = rectify(flow, student, noise, rounds=args.reflow_rounds, eval_x_T=x_T, eval_steps=100,
                     iterations=args.iterations, batch_size=256, lr=args.lr, seed=args.seed, pair_steps=50)
    print(f"\nReflow, FlowSDE, flow-prediction MLP; {args.pairs} pairs from 50 Heun steps; one-step RMS against the "
          "1-rectified flow's 100-step Heun endpoint\n")
    print("| flow | straightness S | one-step (NFE 1) RMS | loss first -> last | CPU s |")
    print("|---|---|---|---|---|")
    print(f"| 1-rectified (flow matching) | {s0.value:.4f} | {rms(one_step(flow, x_T), s0.x):.4f} | - | {seconds:.1f} |")
    for k, r in enumerate(rounds):
        print(f"| {k + 2}-rectified | {r.straightness:.4f} | {r.one_step_rms:.4f} | {r.loss_first:.4f} -> "
              f"{r.loss_last:.4f} | {r.pair_seconds + r.train_seconds:.1f} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=16, help="the first teacher's DDIM steps (default 16)")
    p.add_argument("--rounds", type=int, default=4, help="halvings (default 4: 16 -> 1)")
    p.add_argument("--reflow-rounds", type=int, default=2)
    p.add_argument("--iterations", type=int, default=1500, help="Adam steps per distillation / reflow round")
    p.add_argument("--teacher-iterations", type=int, default=3000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--train-n", type=int, default=20000)
    p.add_argument("--pairs", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    data = mixture().sample(args.train_n, generator=torch.Generator().manual_seed(args.seed))
    x_vp = VPSDE().prior_sample((2000, 2), generator=torch.Generator().manual_seed(args.seed + 2))
    x_flow = FlowSDE().prior_sample((2000, 2), generator=torch.Generator().manual_seed(args.seed + 3))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread; "
          f"args {vars(args)}")
    distillation_table(args, data, x_vp)
    reflow_table(args, data, x_flow)
    print(f"\nwall {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
