"""Time grids fitted to one model and one law of start states, by gradient descent through a sampler.

A fixed step budget spends its steps best where the trajectories of *this* model bend. Instead of a
hand-made spacing (uniform in t, in log-SNR, EDM's rho), `fit_grid` learns the interior times of a
grid of N steps by differentiating a deterministic sampler's endpoint error with respect to them:

    lambda_i = lambda_start + (lambda_end - lambda_start) sum_{j < i} softmax(w)_j,   t_i = t(lambda_i)

so every grid the optimizer can reach is strictly decreasing in t with its ends fixed, and Adam
minimizes the error between the sampler's endpoints and reference endpoints (`endpoint_loss`) for
a set of calibration start states. This is a data-fitted schedule in the spirit of learned and
optimized step schedules ("Align Your Steps", Sabour et al. 2024; "Learning Fast Samplers for
Diffusion Models by Differentiating Through Sample Quality", Watson et al. 2022), and like them
distillation-free: it optimizes the grid only, never the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import grids
from .base import Solver
from .protocol import SDE, Model
from .validate import check_int, check_name, check_number


@dataclass(frozen=True)
class FitStep:
    """What `fit_grid` hands its callback after iteration i.

    loss: the objective (see `endpoint_loss`; in units of x) on the batch used, for the grid ts
    (N + 1,) that iteration evaluated, before its update.
    """

    i: int
    loss: float
    ts: Tensor


def lambda_grid(sde: SDE, t_start: Tensor, t_end: Tensor, w: Tensor) -> Tensor:
    """Grid (N + 1,) from logits w (N,): log-SNR increments softmax(w) of [lambda(t_start), lambda(t_end)].

    t_start, t_end: float64 tensors of shape (1,); the ends of the result are exactly these.
    Differentiable in w; strictly decreasing in t whenever the increments are resolvable in float64.
    """
    lam = sde.lambda_(torch.cat([t_start, t_end]))
    frac = torch.cumsum(torch.softmax(w, 0), 0)[:-1]  # (N - 1,) in (0, 1), increasing
    inner = sde.t_of_lambda(lam[0] + frac * (lam[1] - lam[0]))
    return torch.cat([t_start, inner, t_end])


def logits_of_grid(sde: SDE, ts: Tensor) -> Tensor:
    """Inverse of `lambda_grid`: logits w (N,) with lambda_grid(sde, ts[:1], ts[-1:], w) == ts."""
    lam = sde.lambda_(ts)
    return torch.log(torch.diff(lam) / (lam[-1] - lam[0]))


LOSSES = ("rms", "mean_rms")


def endpoint_loss(x: Tensor, ref: Tensor, kind: str) -> Tensor:
    """Endpoint error of x against ref (both (B, *D)) as a 0-d tensor.

    "rms": sqrt(mean over every coordinate of (x - ref)^2), the RMS over states of e_b, the
    per-state RMS error; "mean_rms": the mean over states of e_b, an L1-type objective across
    states, less dominated by the few start states that a coarse grid sends towards the wrong mode.
    """
    e2 = (x - ref).pow(2).flatten(1).mean(1)  # (B,) squared per-state RMS errors
    if kind == "rms":
        return e2.mean().sqrt()
    return e2.sqrt().mean()


def _initial_grid(sde: SDE, steps: int, init: str | Tensor, t_start, t_end) -> Tensor:
    """The starting grid (steps + 1,) float64: a named builder of solvers.grids, or a given tensor."""
    if isinstance(init, str):
        _check_finite_lambda(sde, torch.tensor(grids._ends(sde, steps, t_start, t_end), dtype=torch.float64))
        return grids.make(init, sde, steps, t_start=t_start, t_end=t_end).to(torch.float64)
    if not isinstance(init, Tensor):
        raise ValueError(f"init must be a name in {sorted(grids.GRIDS)} or a grid tensor, got {type(init).__name__}")
    if t_start is not None or t_end is not None:
        raise ValueError("t_start and t_end go with a named init; a grid tensor brings its own ends")
    if init.ndim != 1 or init.numel() != steps + 1 or not init.is_floating_point():
        raise ValueError(
            f"init must be a 1-D float grid of steps + 1 = {steps + 1} times, got {tuple(init.shape)} {init.dtype}"
        )
    ts = init.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.all(ts[1:] < ts[:-1])):
        raise ValueError("init must be strictly decreasing (from t_start towards t_end)")
    if not (float(ts[-1]) >= 0.0 and float(ts[0]) <= sde.T):
        raise ValueError(f"init must lie in [0, T={sde.T}], got [{float(ts[-1])}, {float(ts[0])}]")
    _check_finite_lambda(sde, ts[[0, -1]])
    return ts


def _check_finite_lambda(sde: SDE, ends: Tensor) -> None:
    if not bool(torch.isfinite(sde.lambda_(ends)).all()):
        raise ValueError(f"log-SNR is not finite at the grid ends t = {ends.tolist()}; move them inside (0, T)")


def _check_solver(solver: Solver, sde: SDE) -> None:
    if not isinstance(solver, Solver):
        raise ValueError(
            f"solver must be a solvers.Solver (build one with solvers.get(name, ...)), got {type(solver).__name__}"
        )
    if solver.stochastic:
        raise ValueError(
            f"solver {solver.name!r} is stochastic; fit_grid needs a deterministic solver, whose "
            "endpoints are a function of the grid (e.g. 'unipc', 'dpm_solver++', 'ddim', 'heun')"
        )
    if solver.nfe_per_step == 0:
        raise ValueError(f"solver {solver.name!r} chooses its own steps (adaptive); fit_grid needs a fixed-grid solver")
    solver.check_supported(sde)


def _check_batch(x_T: Tensor, batch_size: int | None, generator) -> None:
    if not isinstance(x_T, Tensor) or x_T.ndim < 2 or not x_T.is_floating_point():
        got = tuple(x_T.shape) if isinstance(x_T, Tensor) else type(x_T).__name__
        raise ValueError(f"x_T must be a float tensor (B, *D) of calibration start states, got {got}")
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
        if batch_size > x_T.shape[0]:
            raise ValueError(f"batch_size {batch_size} exceeds the {x_T.shape[0]} calibration states")
    elif generator is not None:
        raise ValueError("generator draws minibatches: it needs batch_size")


def _reference(target: Tensor | Callable[[Tensor], Tensor], x_T: Tensor) -> Tensor:
    """The reference endpoints: `target` itself, or target(x_T) computed once without grad."""
    if callable(target) and not isinstance(target, Tensor):
        with torch.no_grad():
            target = target(x_T)
    if not isinstance(target, Tensor) or target.shape != x_T.shape:
        got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(
            f"target must be a tensor of the shape of x_T {tuple(x_T.shape)} (or a callable returning one), got {got}"
        )
    return target.detach()


def fit_grid(
    solver: Solver,
    model: Model,
    x_T: Tensor,
    target: Tensor | Callable[[Tensor], Tensor],
    steps: int,
    *,
    init: str | Tensor = "uniform_lambda",
    t_start: float | None = None,
    t_end: float | None = None,
    iters: int = 100,
    lr: float = 0.05,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    loss: str = "rms",
    callback: Callable[[FitStep], None] | None = None,
) -> Tensor:
    """A grid of `steps` steps for `solver` fitted to `model` on calibration start states.

    solver: a deterministic fixed-grid solver (e.g. ``solvers.get("unipc", order=3)``); its
    NFE on the result is the same as on any grid of `steps` steps. x_T: (B, *D) calibration start
    states at t_start (draws of the prior). target: their reference endpoints (B, *D) at t_end, or
    a callable x_T -> endpoints (called once, under no_grad; e.g. the same solver on 500 steps,
    or an adaptive ODE solve at a tight tolerance). init: the starting grid, a name in
    solvers.grids.GRIDS built from t_start (default T) to t_end (default t_eps), or a (steps + 1,)
    grid tensor, which fixes the ends itself. iters Adam steps of learning rate lr (cosine-decayed
    to 0) on the logits of the log-SNR increments (see the module docstring); each iteration
    runs the solver forward and backward on the whole batch, or on batch_size states drawn
    without replacement from `generator`. loss: "rms" (default; the RMS endpoint error over every
    coordinate, what the benchmarks report) or "mean_rms" (the mean of the states' RMS errors;
    see `endpoint_loss`). callback receives a `FitStep` after every iteration.

    Returns the fitted grid (steps + 1,), float64 on the CPU, strictly decreasing, with the ends of
    init: the iterate with the lowest calibration loss when fitting on the whole batch, the last
    iterate when batch_size is given (minibatch losses are not comparable). Pass it wherever a grid
    is taken: ``solver(model, x, ts)``, or ``scoresde.sample(model, solver=..., grid=ts)``.

    Cost: iters x (one forward and one backward pass of the solver on the batch), i.e. about
    3 x iters x steps model evaluations' worth of compute, plus the reference. The gradient flows
    only into the grid (torch.autograd.grad; model parameters' .grad are left untouched), but the
    backward pass keeps every step's activations: for large networks use batch_size.

    The grid is fitted to one model and one data law: reuse it for that model (and solver, step
    count and ends), not for another. Check it on start states other than the calibration ones.
    """
    _check_solver(solver, model.sde)
    check_int("steps", steps, 2)  # one step has no interior time to fit
    check_int("iters", iters, 1)
    check_name("loss", loss, LOSSES)
    check_number("lr", lr, 0, low_open=True)
    _check_batch(x_T, batch_size, generator)
    target = _reference(target, x_T)
    sde = model.sde

    ts0 = _initial_grid(sde, steps, init, t_start, t_end)
    ends = (ts0[:1], ts0[-1:])
    w = logits_of_grid(sde, ts0).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    full = batch_size is None
    best = (math.inf, ts0)
    for i in range(iters):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * i / iters))  # cosine decay to 0
        if full:
            x, ref = x_T, target
        else:
            idx = torch.randperm(x_T.shape[0], generator=generator)[:batch_size].to(x_T.device)
            x, ref = x_T[idx], target[idx]
        ts = lambda_grid(sde, *ends, w)
        value = endpoint_loss(solver(model, x, ts.to(x.device)).x, ref, loss)
        (w.grad,) = torch.autograd.grad(value, [w])
        value = float(value.detach())  # one host sync per iteration, not per solver step
        if not math.isfinite(value):
            raise ValueError(f"the endpoint error became {value} at iteration {i}; lower lr (now {lr})")
        if full and value < best[0]:
            best = (value, ts.detach())
        if callback is not None:
            callback(FitStep(i=i, loss=value, ts=ts.detach()))
        opt.step()
    with torch.no_grad():
        fitted = best[1] if full else lambda_grid(sde, *ends, w)
    if not bool(torch.all(fitted[1:] < fitted[:-1])):
        raise ValueError("the fitted grid collapsed two times onto one float64 value; lower lr or iters")
    return fitted.clone()
