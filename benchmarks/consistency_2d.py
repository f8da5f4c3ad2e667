"""Consistency distillation / training / tuning of a small MLP on a 2-D Gaussian mixture (docs/few_step.md).

    python benchmarks/consistency_2d.py                       # CD, CT and ECT, 3,000 Adam steps each
    python benchmarks/consistency_2d.py --objectives cd --steps 500     # a smoke run
    python benchmarks/consistency_2d.py --slopes       # the exact checks' convergence slopes (seconds)

Data: an equal mixture of two Gaussians in 2-D (means (-1, 0.5), (1, -0.5), std 0.2) under VESDE(0.002, 80).
The student is a ConsistencyModel (sigma_data 1, c_in scaling, log-noise input) over an MLP (2 hidden layers
of 128, SiLU, 8 random Fourier features of the noise input); Adam, lr 1e-3, batch 256. CD: the exact mixture
score as teacher (Heun steps, N = 18), target the EMA student (decay 0.99). CT: the iCT curriculum N(k) over
the run, target the student (stop-gradient). ECT: 8 stages over the run, target the student, from scratch
(the paper starts from a pretrained diffusion model). Per objective: the mean loss of the last 50 steps, CPU
seconds, and for 1, 2 and 4 consistency steps (20,000 samples): the per-coordinate std (data: 1.02, 0.54),
the fraction in the right mode and the mean distance to the nearest mode centre (data: 0.25).

--slopes: on a diagonal Gaussian (means 1, -0.5; stds 0.3, 1.4; float64) under VP, VE and flow, the log-log
slope of the CD fixed point's max error against the exact flow map in 1/N (N = 8..64 Karras intervals, 200
exact draws of p_T), and of the CD loss of the exact consistency function in h (one interval [0.5 - h, 0.5] T,
h = 0.08..0.01, 500 data points), per teacher step.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

# run as a script, this folder is on sys.path and its solvers.py would hide the solvers package
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import torch  # noqa: E402

import scoresde  # noqa: E402
from scoresde import AnalyticModel, FlowSDE, Gaussian, GaussianMixture, VESDE, VPSDE  # noqa: E402
from scoresde.fewstep.consistency import ConsistencyModel, FlowMapConsistency  # noqa: E402
from scoresde.fewstep.consistency_losses import (  # noqa: E402
    TEACHER_STEPS, cd_fixed_point, cd_loss, cd_pair_loss, ct_loss, ect_loss, ect_stage, ict_discretization,
    karras_times,
)

DATA = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), torch.tensor([0.2, 0.2]))


class MLP(torch.nn.Module):
    """F(x, c_noise) for (B, 2) data: 8 random Fourier features of the noise input, two hidden layers."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(18, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128),
                                       torch.nn.SiLU(), torch.nn.Linear(128, 2))
        self.register_buffer("freq", torch.randn(8) * 2)

    def forward(self, x, c):
        e = c[:, None] * self.freq
        return self.net(torch.cat([x, e.sin(), e.cos()], 1))


def _student(net, sde):
    return ConsistencyModel(net, sde, sigma_data=1.0, c_noise="log_noise", scale_input=True)


def sample_stats(model, steps: int, n: int = 20_000, seed: int = 3) -> dict:
    """std per coordinate, right-mode fraction, mean distance to the nearest mode of `steps`-step samples."""
    with torch.no_grad():
        x = scoresde.sample(model, solver="consistency", steps=steps, n=n, shape=(2,), seed=seed).x
    return {"std": [round(v, 3) for v in x.std(0).tolist()], "right": round((x[:, 0] > 0).float().mean().item(), 3),
            "dist": round(torch.cdist(x, DATA.means).min(1).values.mean().item(), 3)}


def run(objective: str, steps: int, seed: int = 0) -> dict:
    """Train with `objective` ("cd", "ct", "ect") for `steps` Adam steps; the losses, CPU seconds, sample stats."""
    torch.manual_seed(seed)
    sde = VESDE(sigma_min=0.002, sigma_max=80.0)
    teacher = AnalyticModel(DATA, sde)
    net = MLP()
    ema_net = copy.deepcopy(net).requires_grad_(False)
    student, ema = _student(net, sde), _student(ema_net, sde)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed + 1)
    losses, start = [], time.process_time()
    for k in range(steps):
        x0 = DATA.sample(256, generator=gen)
        if objective == "cd":
            loss = cd_loss(student, ema, teacher, x0, generator=gen, N=18, method="heun")
        elif objective == "ct":
            loss = ct_loss(student, student, x0, generator=gen, N=ict_discretization(k, steps))
        else:
            loss = ect_loss(student, student, x0, generator=gen, stage=ect_stage(k, steps))
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, pn in zip(ema_net.parameters(), net.parameters()):
                pe.lerp_(pn, 1 - 0.99)
        losses.append(loss.item())
    model = ema if objective == "cd" else student
    return {"objective": objective, "steps": steps, "first_loss": sum(losses[:50]) / min(50, steps),
            "last_loss": sum(losses[-50:]) / min(50, steps), "cpu_s": round(time.process_time() - start, 1),
            **{f"nfe{n}": sample_stats(model, n) for n in (1, 2, 4)}}


def _slope(hs, errors) -> float:
    return math.log(errors[-1] / errors[0]) / math.log(hs[-1] / hs[0])


def slopes() -> None:
    """Print the fixed-point and CD-loss slopes per process and teacher step (see the module docstring)."""
    F64 = torch.float64
    for name, sde in (("vp", VPSDE()), ("ve", VESDE()), ("flow", FlowSDE())):
        model = AnalyticModel(Gaussian(torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([0.3, 1.4], dtype=F64)), sde)
        x = model.sample(200, sde.T, generator=torch.Generator().manual_seed(0))
        exact = model.flow_map(x, sde.T, sde.t_eps)
        x0 = model.data.sample(500, generator=torch.Generator().manual_seed(1))
        z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
        f = FlowMapConsistency(model)
        for method in TEACHER_STEPS:
            Ns, hs = [8, 16, 32, 64], [0.08, 0.04, 0.02, 0.01]
            fixed = [float((cd_fixed_point(model, x, karras_times(sde, N + 1).flip(0), method) - exact).abs().max())
                     for N in Ns]
            t_next = torch.full((500,), 0.5 * sde.T, dtype=F64)
            loss = [float(cd_pair_loss(f, f, model, x0, t_next, t_next - h * sde.T, z, method).mean()) for h in hs]
            print(f"{name} {method}: fixed-point slope {_slope([1 / N for N in Ns], fixed):.2f}, "
                  f"CD-loss slope {_slope(hs, loss):.2f} (last halving {_slope(hs[-2:], loss[-2:]):.2f})", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objectives", nargs="+", default=["cd", "ct", "ect"], choices=["cd", "ct", "ect"])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--slopes", action="store_true", help="print the exact checks' slopes instead of training")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.slopes:
        slopes()
        return
    for objective in args.objectives:
        print(json.dumps(run(objective, args.steps)), flush=True)


if __name__ == "__main__":
    main()
