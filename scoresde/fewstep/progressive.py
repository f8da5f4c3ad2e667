"""Progressive distillation (Salimans & Ho 2022, arXiv:2202.00512, Algorithm 2).

A student learns to do in one deterministic DDIM step what its teacher does in two; the trained
student becomes the next round's teacher, so each round halves the number of sampling steps
(2N -> N -> N/2 -> ...). Works on every affine process of the toolkit (VP, sub-VP, VE, the discrete
DDPM schedules, flow), wherever DDIM does: only alpha, sigma and lambda enter.

Notation (the paper's): the student steps from t to t''; the teacher steps t -> t' -> t'' on the
twice finer grid; z_t = alpha_t x + sigma_t eps. The teacher's grid `ts` has 2N + 1 times and the
student's is ts[::2], so the student's N-step grid is exactly every other time of the teacher's.

Target. The student's DDIM step from z_t with data prediction x~ lands at
alpha'' x~ + (sigma''/sigma)(z_t - alpha x~); asking that it land on the teacher's two-step result
z_t'' and solving for x~ gives (Algorithm 2)

    x~ = (z_t'' - (sigma''/sigma_t) z_t) / (alpha'' - (sigma''/sigma_t) alpha_t).

Loss: w(t) mean_D (x_hat_student(z_t) - x~)^2 with the paper's weightings (Sec. 4):
"snr_plus_one" w = 1 + alpha^2/sigma^2 (the default; for VP it equals the v-prediction MSE), or
"truncated_snr" w = max(alpha^2/sigma^2, 1). The student may predict any kind; the paper (and the
docs) use v-prediction, ScoreModel(net, sde, prediction="v"), because eps-prediction makes x_hat
blow up at low signal-to-noise ratio, where one-step students start.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from solvers import grids
from solvers.ddim import DDIM, ddim_step_per_sample
from solvers.protocol import Model, bcast
from solvers.validate import check_int, check_name, check_number

from ..losses import rand
from ..param import ScoreModel
from .fit import fit

__all__ = [
    "WEIGHTINGS", "DistillRound", "distill_round", "distillation_loss", "distillation_target", "endpoint_gap",
    "progressive_distillation",
]

WEIGHTINGS = ("snr_plus_one", "truncated_snr")


def distillation_target(z_t: Tensor, z_t2: Tensor, alpha_t: Tensor, sigma_t: Tensor, alpha_t2: Tensor,
                        sigma_t2: Tensor) -> Tensor:
    """The data prediction x~ (B, *D) whose one DDIM step from z_t (at t) lands on z_t2 (at t'').

    z_t, z_t2: (B, *D); alpha_*, sigma_*: (B,) in z's dtype.
    """
    ratio = bcast(sigma_t2 / sigma_t, z_t)
    # Salimans & Ho 2022, Algorithm 2: x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)
    return (z_t2 - ratio * z_t) / (bcast(alpha_t2, z_t) - ratio * bcast(alpha_t, z_t))


def _weight(weighting: str, alpha: Tensor, sigma: Tensor) -> Tensor:
    snr = (alpha / sigma) ** 2
    # Salimans & Ho 2022, Sec. 4: "SNR+1" weighting, or truncated SNR max(SNR, 1)
    return 1.0 + snr if weighting == "snr_plus_one" else snr.clamp_min(1.0)


def distillation_loss(teacher: Model, student: ScoreModel, ts: Tensor, x0: Tensor, *,
                      weighting: str = "snr_plus_one", generator: torch.Generator | None = None) -> Tensor:
    """Per-sample distillation loss (B,): w(t) mean_D (student.x0(z_t, t) - x~)^2 (module docstring).

    ts: the teacher's (2N + 1,) decreasing float64 grid; the student's step index i ~ U{0..N-1} per
    sample, t = ts[2i], t' = ts[2i + 1], t'' = ts[2i + 2]. x0: (B, *D) data. Draws i, then eps, from
    `generator`. The teacher runs without gradients.
    """
    check_name("weighting", weighting, WEIGHTINGS)
    sde, N = teacher.sde, (len(ts) - 1) // 2
    u = rand(x0.shape[0], generator=generator, device=x0.device)
    i = torch.clamp(torch.floor(u * N).long(), max=N - 1)
    ts = ts.to(device=x0.device, dtype=torch.float64)
    t, t1, t2 = ts[2 * i], ts[2 * i + 1], ts[2 * i + 2]
    z_t, _ = sde.perturb(x0, t.to(x0.dtype), generator=generator)
    with torch.no_grad():
        z_t2 = ddim_step_per_sample(teacher, ddim_step_per_sample(teacher, z_t, t, t1), t1, t2)  # two teacher DDIM steps
    alpha_t, sigma_t, alpha_t2, sigma_t2 = (c.to(x0.dtype) for c in (sde.alpha(t), sde.sigma(t), sde.alpha(t2), sde.sigma(t2)))
    x_tilde = distillation_target(z_t, z_t2, alpha_t, sigma_t, alpha_t2, sigma_t2)
    x_hat = student.x0(z_t, t.to(x0.dtype))
    return _weight(weighting, alpha_t, sigma_t) * (x_hat - x_tilde).square().flatten(1).mean(1)


@dataclass(frozen=True)
class DistillRound:
    """One round's result: the trained `student` (a ScoreModel), its grid `ts` (N + 1,) (the teacher
    used `teacher_ts`, 2N + 1 times), the mean loss over the first and the last tenth of the
    iterations, the held-out endpoint gap between the student's N-step and the teacher's 2N-step DDIM
    (root mean square over all coordinates, and max), or NaN when no held-out states were given, and
    the CPU seconds of training (time.process_time)."""

    student: ScoreModel
    steps: int
    ts: Tensor
    teacher_ts: Tensor
    loss_first: float
    loss_last: float
    endpoint_rms: float
    endpoint_max: float
    cpu_seconds: float


def endpoint_gap(teacher: Model, student: Model, teacher_ts: Tensor, x_T: Tensor) -> tuple[float, float]:
    """(rms, max) of |student N-step DDIM - teacher 2N-step DDIM| from the start states x_T (B, *D);
    the student walks teacher_ts[::2]."""
    ddim = DDIM()
    with torch.no_grad():
        x_teacher = ddim(teacher, x_T, teacher_ts).x
        x_student = ddim(student, x_T, teacher_ts[::2]).x
    diff = (x_student - x_teacher).double()
    return float(diff.square().mean().sqrt()), float(diff.abs().max())


def _check_student(teacher: Model, student, ts: Tensor) -> None:
    if not isinstance(student, ScoreModel) or not isinstance(student.net, nn.Module):
        raise ValueError(f"student must be a ScoreModel around a torch.nn.Module, got {type(student).__name__}")
    sde_t, sde_s = teacher.sde, student.sde
    same = sde_t is sde_s or (
        torch.allclose(sde_t.alpha(ts), sde_s.alpha(ts)) and torch.allclose(sde_t.sigma(ts), sde_s.sigma(ts)))
    if not same:
        raise ValueError(f"student and teacher must share one process, got {type(sde_s).__name__} and "
                         f"{type(sde_t).__name__} with different alpha/sigma on the grid")


def _check_data(data: Tensor) -> None:
    if not isinstance(data, Tensor) or data.ndim < 2 or not data.is_floating_point():
        raise ValueError(f"data must be a float tensor of shape (M, *D), got "
                         f"{tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__}")


def distill_round(teacher: Model, student: ScoreModel, teacher_ts: Tensor, data: Tensor, *,
                  iterations: int = 1000, batch_size: int = 128, lr: float = 1e-3,
                  weighting: str = "snr_plus_one", seed: int = 0, eval_x_T: Tensor | None = None) -> DistillRound:
    """Train `student` (in place) to match two DDIM steps of `teacher` with one; Algorithm 2.

    teacher_ts: the teacher's (2N + 1,) decreasing float64 grid (from `solvers.grids`); the student
    learns teacher_ts[::2]. data: (M, *D) training data, batches of `batch_size` drawn with
    replacement. Adam with learning rate `lr` decayed linearly to 0 over `iterations` (as the paper
    does each round). seed: the one generator for batches, step indices and noise. eval_x_T: optional
    held-out start states (B, *D) for `endpoint_gap`.
    """
    check_int("iterations", iterations, 1)
    check_int("batch_size", batch_size, 1)
    check_number("lr", lr, 0, low_open=True)
    check_name("weighting", weighting, WEIGHTINGS)
    if not isinstance(teacher_ts, Tensor) or teacher_ts.ndim != 1 or len(teacher_ts) < 3 or len(teacher_ts) % 2 == 0:
        raise ValueError(f"teacher_ts must be a (2N + 1,) grid with N >= 1, got shape {tuple(getattr(teacher_ts, 'shape', ()))}")
    _check_student(teacher, student, teacher_ts)
    _check_data(data)
    gen = torch.Generator(device=data.device).manual_seed(seed)

    def batch_loss() -> Tensor:
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen, device=data.device)
        return distillation_loss(teacher, student, teacher_ts, data[idx], weighting=weighting, generator=gen).mean()

    stats = fit(student.net.parameters(), batch_loss, iterations=iterations, lr=lr)
    rms, mx = endpoint_gap(teacher, student, teacher_ts, eval_x_T) if eval_x_T is not None else (math.nan, math.nan)
    return DistillRound(student, (len(teacher_ts) - 1) // 2, teacher_ts[::2], teacher_ts, stats.loss_first,
                        stats.loss_last, rms, mx, stats.cpu_seconds)


def copy_model(model: ScoreModel) -> ScoreModel:
    """A ScoreModel around a deep copy of model's network (same process, prediction and c_noise)."""
    return ScoreModel(copy.deepcopy(model.net), model.sde, model.prediction, c_noise=model.c_noise)


def progressive_distillation(teacher: Model, student: ScoreModel, data: Tensor, *, steps: int, rounds: int,
                             grid: str = "uniform_t", iterations: int = 1000, batch_size: int = 128,
                             lr: float = 1e-3, weighting: str = "snr_plus_one", seed: int = 0,
                             eval_x_T: Tensor | None = None) -> list[DistillRound]:
    """Halve the DDIM steps of `teacher` `rounds` times: steps -> steps/2 -> ... -> steps/2^rounds.

    The grid is `grids.make(grid, sde, steps)`, and round r's student walks every other time of round
    r's teacher, so all grids nest. `student` is round 0's student (train it from a copy of the
    teacher's network, as the paper does, or from anything else when the teacher has no network, e.g.
    an analytic model); round r + 1 starts from a copy of round r's student, and round r's student is
    round r + 1's teacher. Round r trains with seed + r. Returns one `DistillRound` per round.
    """
    check_int("rounds", rounds, 1)
    check_int("steps", steps, 2)
    if steps % 2**rounds:
        raise ValueError(f"steps={steps} must be divisible by 2**rounds={2**rounds} to halve {rounds} times")
    ts = grids.make(grid, teacher.sde, steps)
    results: list[DistillRound] = []
    for r in range(rounds):
        result = distill_round(teacher, student, ts, data, iterations=iterations, batch_size=batch_size, lr=lr,
                               weighting=weighting, seed=seed + r, eval_x_T=eval_x_T)
        results.append(result)
        teacher, student, ts = result.student, copy_model(result.student), result.ts
    return results
