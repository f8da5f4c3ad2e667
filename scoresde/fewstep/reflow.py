"""Rectified-flow reflow (Liu et al. 2022, arXiv:2209.03003) on `FlowSDE`, and a straightness measure.

Reflow: draw noise z (the prior at t = T), run a flow model's deterministic ODE solver from z to a
sample x at t_eps, and train a new flow model on the straight path between the pair,
x_t = (1 - t) x + t z, with the flow-matching target u = z - x (FlowSDE's u = eps - x0 with eps := z,
x0 := x). The new model's flow (the "2-rectified flow") is straighter: where the pairs' straight
paths do not cross it is exactly straight, so one Euler step follows it.

Time direction: the toolkit's flow runs from data at t = 0 to noise at t = 1 (T = 0.999), Liu et al.'s
from noise Z_0 to data Z_1. Straightness (Liu et al., Sec. 2.2) is measured in Liu's direction on
the grid's own interval: with tau = (T - t)/(T - t_eps) in [0, 1] and Z the ODE trajectory,

    S = int_0^1 E || (Z_1 - Z_0) - dZ/dtau ||^2 dtau,   dZ/dtau = -(T - t_eps) u(Z, t),

the squared norm summed over the data dimensions. Estimator (`straightness`): integrate the ODE with
a deterministic solver on a grid from T to t_eps, evaluate the model's velocity at every grid state
(one extra evaluation each), and integrate over tau with the trapezoid rule; the mean over the batch
estimates E. S = 0 exactly when every trajectory moves at constant velocity.

One step: on FlowSDE one DDIM step from s to t is exactly one Euler step of the flow ODE:
alpha_t x0_hat + sigma_t eps_hat = (1 - t) x0_hat + t eps_hat = x_s + (t - s)(eps_hat - x0_hat).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

import solvers
from solvers import grids
from solvers.conversions import flow_from, x0_from_eps
from solvers.ddim import DDIM
from solvers.protocol import Model, bcast
from solvers.validate import check_int

from ..losses import sample_t
from ..param import ScoreModel
from .fit import fit
from .progressive import copy_model

__all__ = [
    "ReflowRound", "Straightness", "one_step", "rectify", "reflow_loss", "reflow_pairs", "reflow_round", "straightness",
]


def _check_flow(model, role: str) -> None:
    kind = getattr(getattr(model, "sde", None), "kind", None)
    if kind != "flow":
        raise ValueError(f"reflow needs a {role} on FlowSDE (sde.kind 'flow'), got sde.kind {kind!r}")


def _solver(solver) -> solvers.Solver:
    built = solvers.get(solver) if isinstance(solver, str) else solver
    if not isinstance(built, solvers.Solver) or built.stochastic:
        raise ValueError(f"reflow needs a deterministic solver (e.g. 'heun', 'ddim', 'dpm_solver++'), got {solver!r}")
    return built


def reflow_pairs(model: Model, x_T: Tensor, *, solver: str | solvers.Solver = "heun", steps: int = 50,
                 grid: str = "uniform_t") -> tuple[Tensor, Tensor]:
    """(noise, samples), both (B, *D): noise is x_T itself, samples the deterministic solver's result
    from x_T at T to t_eps on `grids.make(grid, sde, steps)`. `solver` is a name or a built solver."""
    _check_flow(model, "teacher")
    ts = grids.make(grid, model.sde, steps)
    with torch.no_grad():
        x = _solver(solver)(model, x_T, ts).x
    return x_T, x


def reflow_loss(model: ScoreModel, x0: Tensor, noise: Tensor, *, t_eps: float = 1e-5,
                generator: torch.Generator | None = None) -> Tensor:
    """Per-sample flow matching on the coupling (x0, noise), (B,): mean_D (u_theta(x_t, t) - u)^2 with
    x_t = alpha x0 + sigma noise, u = alpha' x0 + sigma' noise (= noise - x0 on FlowSDE), t ~ U(t_eps, T).

    The same objective as `scoresde.losses.flow_matching_loss`, whose noise is drawn independently of
    x0 (that trains the 1-rectified flow); here the noise is the pair's. Draws t from `generator`
    with `losses.sample_t`. x0, noise: (B, *D) of one shape.
    """
    if x0.shape != noise.shape or x0.ndim < 2:
        raise ValueError(f"x0 and noise must share a shape (B, *D), got {tuple(x0.shape)} and {tuple(noise.shape)}")
    sde = model.sde
    t, _ = sample_t(sde, x0.shape[0], t_eps=t_eps, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = bcast(sde.alpha(t), x0) * x0 + bcast(sde.sigma(t), x0) * noise
    # Liu et al. 2022, Eq. (1) in the toolkit's direction: the target velocity of the straight path
    u = bcast(sde.dalpha_dt(t), x0) * x0 + bcast(sde.dsigma_dt(t), x0) * noise
    return (model.flow(x_t, t) - u).square().flatten(1).mean(1)


def _velocity(model: Model, x: Tensor, t: Tensor) -> Tensor:
    """The flow velocity at x (B, *D), t 0-d float64; one evaluation: the model's own `flow` where it has
    one (a ScoreModel), else u = alpha' x0_hat + sigma' eps_hat from eps (x0_hat = (x - sigma eps)/alpha
    magnifies round-off by 1/alpha = 1000 at T, so the native form is preferred)."""
    tt = t.reshape(1).expand(x.shape[0]).to(x.dtype)
    if callable(getattr(model, "flow", None)):
        return model.flow(x, tt)
    sde, eps = model.sde, model.eps(x, tt)
    x0 = x0_from_eps(x, eps, sde.alpha(tt), sde.sigma(tt))
    return flow_from(x0, eps, sde.dalpha_dt(tt), sde.dsigma_dt(tt))


@dataclass(frozen=True)
class Straightness:
    """value: the estimate of S (float, nats-free: squared data units summed over D); per_sample (B,):
    each trajectory's integral; x (B, *D): the trajectories' ends at t_eps; nfe: evaluations used."""

    value: float
    per_sample: Tensor
    x: Tensor
    nfe: int


def straightness(model: Model, x_T: Tensor, *, steps: int = 100, solver: str | solvers.Solver = "heun",
                 grid: str = "uniform_t") -> Straightness:
    """Liu et al.'s straightness S of `model`'s ODE trajectories from x_T (B, *D) (module docstring).

    The trajectory is integrated by `solver` on `grids.make(grid, sde, steps)`; the velocity is
    evaluated at each of the steps + 1 grid states and integrated over tau by the trapezoid rule.
    """
    _check_flow(model, "model")
    ts = grids.make(grid, model.sde, steps)
    states = [x_T]
    with torch.no_grad():
        sol = _solver(solver)(model, x_T, ts, callback=lambda step: states.append(step.x))
        if len(states) != len(ts):
            raise ValueError(f"straightness needs the state at every grid time; solver {solver!r} reported "
                             f"{len(states) - 1} of {len(ts) - 1} steps")
        span = float(ts[0] - ts[-1])
        delta = sol.x - x_T  # Z_1 - Z_0
        # (Z_1 - Z_0) - dZ/dtau with dZ/dtau = -(T - t_eps) u, at each grid time
        gaps = torch.stack([(delta + span * _velocity(model, x, t)).square().flatten(1).sum(1)
                            for x, t in zip(states, ts)])  # (N + 1, B)
    tau = ((ts[0] - ts) / span).to(gaps)
    per_sample = torch.trapezoid(gaps, tau, dim=0)
    return Straightness(float(per_sample.mean()), per_sample, sol.x, sol.nfe + len(ts))


def one_step(model: Model, x_T: Tensor) -> Tensor:
    """One Euler step (one DDIM step, NFE 1) from T to t_eps: the rectified flow's one-step sample, (B, *D)."""
    with torch.no_grad():
        return DDIM()(model, x_T, grids.uniform_t(model.sde, 1)).x


@dataclass(frozen=True)
class ReflowRound:
    """One reflow round: the trained `student`; the mean loss over the first and the last tenth of the
    iterations; CPU seconds of pair generation and of training; and, when held-out noise was given
    (NaN otherwise), the student's straightness S and its one-step error: the root mean square over
    coordinates of one_step(student) minus `reference` (the first teacher's accurate ODE endpoint)."""

    student: ScoreModel
    loss_first: float
    loss_last: float
    pair_seconds: float
    train_seconds: float
    straightness: float
    one_step_rms: float


def _rms(a: Tensor, b: Tensor) -> float:
    return float((a - b).double().square().mean().sqrt())


def reflow_round(teacher: Model, student: ScoreModel, x_T: Tensor, *, pair_solver: str | solvers.Solver = "heun",
                 pair_steps: int = 50, iterations: int = 1000, batch_size: int = 128, lr: float = 1e-3,
                 seed: int = 0, eval_x_T: Tensor | None = None, reference: Tensor | None = None,
                 eval_steps: int = 100) -> ReflowRound:
    """Generate (noise, sample) pairs from x_T (M, *D) with `teacher`, then train `student` (in place)
    with `reflow_loss` on batches of `batch_size` pairs drawn with replacement (Adam, lr decayed
    linearly to 0; one generator seeded `seed`). eval_x_T: held-out noise (B, *D) for the straightness
    (`eval_steps` Heun steps) and, with `reference` (B, *D), the one-step error."""
    _check_flow(teacher, "teacher")
    _check_flow(student, "student")
    if not isinstance(student, ScoreModel):
        raise ValueError(f"student must be a ScoreModel, got {type(student).__name__}")
    check_int("batch_size", batch_size, 1)
    start = time.process_time()
    noise, x = reflow_pairs(teacher, x_T, solver=pair_solver, steps=pair_steps)
    pair_seconds = time.process_time() - start
    gen = torch.Generator(device=x.device).manual_seed(seed)

    def batch_loss() -> Tensor:
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen, device=x.device)
        return reflow_loss(student, x[idx], noise[idx], generator=gen).mean()

    stats = fit(student.net.parameters(), batch_loss, iterations=iterations, lr=lr)
    s_value = err = math.nan
    if eval_x_T is not None:
        s_value = straightness(student, eval_x_T, steps=eval_steps).value
        if reference is not None:
            err = _rms(one_step(student, eval_x_T), reference)
    return ReflowRound(student, stats.loss_first, stats.loss_last, pair_seconds, stats.cpu_seconds, s_value, err)


def rectify(teacher: Model, student: ScoreModel, x_T: Tensor, *, rounds: int = 1, eval_x_T: Tensor | None = None,
            eval_steps: int = 100, seed: int = 0, **options) -> list[ReflowRound]:
    """`rounds` reflow rounds: round 1 trains `student` on pairs from `teacher` (the 2-rectified flow);
    round r + 1 trains a copy of round r's student on pairs from round r's student. Round r uses seed
    + r; `options` go to `reflow_round`. With eval_x_T, the one-step errors are against the first
    teacher's `eval_steps`-step Heun endpoint from eval_x_T."""
    check_int("rounds", rounds, 1)
    reference = None
    if eval_x_T is not None:
        with torch.no_grad():
            reference = _solver("heun")(teacher, eval_x_T, grids.uniform_t(teacher.sde, eval_steps)).x
    results: list[ReflowRound] = []
    for r in range(rounds):
        result = reflow_round(teacher, student, x_T, seed=seed + r, eval_x_T=eval_x_T, reference=reference,
                              eval_steps=eval_steps, **options)
        results.append(result)
        teacher, student = result.student, copy_model(result.student)
    return results
